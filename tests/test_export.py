"""Tests for s3rec_jax.serving.export: the exported scorer, run without this package, vs Recommender."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import cli_runs
from s3rec_jax.data import dataset as data
from s3rec_jax.serving import export
from s3rec_jax.serving import recommend

# Runs the folder's own loader in a process that cannot import this package or flax.
LOADER_SCRIPT = """\
import sys
sys.modules["s3rec_jax"] = None
sys.modules["flax"] = None
import json
import numpy as np
folder, histories_file, dense_file, out_json, out_npz = sys.argv[1:]
sys.path.insert(0, folder)
import load_scorer
recommend = load_scorer.load(folder)
with open(histories_file) as f:
  histories = json.load(f)
with open(out_json, "w") as f:
  json.dump(recommend(histories, 10), f)
with np.load(dense_file) as dense:
  outputs = {}
  for name in dense.files:
    items, scores = recommend.score(dense[name])
    outputs[name + "_items"], outputs[name + "_scores"] = np.asarray(items), np.asarray(scores)
np.savez(out_npz, **outputs)
"""


@pytest.fixture(scope="module")
def tiny(tiny_reference_run):
  """(workdir, recommender, histories s[:-1] of every user)."""
  with open(os.path.join(tiny_reference_run, "run.json")) as f:
    s = json.load(f)["config"]["synthetic"]
  ds = data.synthetic_dataset(num_users=s["num_users"], num_items=s["num_items"],
                              num_attributes=s["num_attributes"], seed=s["seed"],
                              num_negatives=None)
  histories = [ds.sequence(u)[:-1] for u in range(ds.num_users)]
  return tiny_reference_run, recommend.Recommender.from_workdir(tiny_reference_run), histories


@pytest.fixture(scope="module")
def exported(tiny, tmp_path_factory):
  """The tiny run exported by the command line, for CPU and CUDA, k=10."""
  folder = str(tmp_path_factory.mktemp("export") / "scorer")
  result = subprocess.run(
      [sys.executable, "-m", "s3rec_jax.serving.export", "--workdir", tiny[0], "--output", folder,
       "--k", "10", "--platforms", "cpu,cuda"],
      env=cli_runs.env(1), cwd=cli_runs.REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stderr == ""
  assert result.stdout.startswith(f"wrote {folder} (k=10")
  return folder


def test_files_and_manifest(exported, tiny):
  rec = tiny[1]
  assert sorted(os.listdir(exported)) == sorted([
      export.MANIFEST_FILE, export.FUNCTION_FILE, export.WEIGHTS_FILE, export.IDS_FILE,
      export.LOADER_FILE])
  with open(os.path.join(exported, export.MANIFEST_FILE)) as f:
    manifest = json.load(f)
  assert manifest["k"] == 10 and manifest["max_len"] == rec.config.max_len
  assert manifest["item_ids"] == {"padding": 0, "first": 1, "last": 60, "mask": 61}
  assert manifest["platforms"] == ["cpu", "cuda"]
  arguments = manifest["arguments"]
  assert arguments[0]["name"] == "item_embeddings/embedding"
  assert arguments[-1] == {"name": "histories", "shape": ["batch", "length"], "dtype": "int32",
                           "layout": "dense item ids, oldest first, left-padded with 0"}
  with np.load(os.path.join(exported, export.WEIGHTS_FILE)) as weights:
    assert sorted(weights.files) == sorted(a["name"] for a in arguments[:-1])
    for a in arguments[:-1]:
      assert list(weights[a["name"]].shape) == a["shape"] and a["dtype"] == "float32"
    np.testing.assert_array_equal(weights["item_embeddings/embedding"],
                                  np.asarray(rec.params["item_embeddings"]["embedding"]))
  assert not any(a["name"].startswith("attribute") for a in arguments)
  with open(os.path.join(exported, export.IDS_FILE)) as f:
    assert json.load(f)["items"] == [str(i) for i in range(1, 61)]
  with open(os.path.join(exported, export.LOADER_FILE)) as f:
    assert f.read() == export.LOADER_SOURCE


def test_docstring_shows_the_loader():
  assert textwrap.indent(export.LOADER_SOURCE, "  ") in export.__doc__


def test_loader_without_package_matches_recommender(exported, tiny, tmp_path):
  _, rec, histories = tiny
  script = tmp_path / "load.py"
  script.write_text(LOADER_SCRIPT)
  histories_file = tmp_path / "histories.json"
  histories_file.write_text(json.dumps([[str(i) for i in h] for h in histories]))
  # Another batch size and width: histories of at most max_len items, left-padded to
  # max_len (the recommend call above pads all histories to the longest one).
  max_len = rec.config.max_len
  assert max(len(h) for h in histories) > max_len
  short = [u for u, h in enumerate(histories) if len(h) <= max_len][:7]
  assert len(short) == 7
  np.savez(tmp_path / "dense.npz",
           short=recommend.left_pad_rows([histories[u] for u in short], 7, max_len))
  result = subprocess.run(
      [sys.executable, str(script), exported, str(histories_file), str(tmp_path / "dense.npz"),
       str(tmp_path / "out.json"), str(tmp_path / "out.npz")],
      env=cli_runs.env(1), cwd=str(tmp_path), capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr

  want = rec.recommend(histories, k=10)
  got = json.loads((tmp_path / "out.json").read_text())
  assert len(got) == len(want) == 120
  for user, (pairs, expected) in enumerate(zip(got, want)):
    assert [item for item, _ in pairs] == expected.items, f"user {user}"
    np.testing.assert_allclose([score for _, score in pairs], expected.scores,
                               rtol=1e-5, atol=1e-5)
    # The whole history is left out, also the part older than the window.
    assert not set(expected.items) & {str(i) for i in histories[user]}

  with np.load(tmp_path / "out.npz") as outputs:
    items, scores = outputs["short_items"], outputs["short_scores"]
  assert items.shape == (7, 10) and items.dtype == np.int32
  np.testing.assert_array_equal(items, [want[u].dense_items for u in short])
  np.testing.assert_allclose(scores, [want[u].scores for u in short], rtol=1e-5, atol=1e-5)


def test_failed_export_leaves_nothing(tiny, tmp_path, monkeypatch):
  workdir = tiny[0]
  output = tmp_path / "out" / "scorer"

  def fail(run):
    raise RuntimeError("disk full")
  monkeypatch.setattr(export, "_ids_payload", fail)
  with pytest.raises(RuntimeError, match="disk full"):
    export.export_scorer(workdir, str(output), k=5)
  assert os.listdir(output.parent) == []  # neither the folder nor its temporary one
  monkeypatch.undo()

  manifest = export.export_scorer(workdir, str(output), k=5)
  assert manifest["k"] == 5 and manifest["platforms"] == ["cpu"]
  with pytest.raises(export.ExportError, match="exists"):
    export.export_scorer(workdir, str(output), k=5)
  # Replacing: the new folder takes the old one's place only once complete.
  manifest = export.export_scorer(workdir, str(output), k=7, overwrite=True)
  with open(output / export.MANIFEST_FILE) as f:
    assert json.load(f)["k"] == 7
  assert os.listdir(output.parent) == ["scorer"]


def test_ids_map_is_shipped(tiny, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(tiny[0], copy, ignore=shutil.ignore_patterns("pretrain*", "finetune_resume"))
  ids = {"format": "s3rec-jax ids v1", "users": ["u1"],
         "items": [f"item-{i}" for i in range(1, 61)], "attributes": [], "attribute_fields": {}}
  (copy / "ids.json").write_text(json.dumps(ids))
  manifest = export.export_scorer(str(copy), str(tmp_path / "scorer"), k=3)
  assert manifest["ids_identity"] is False
  assert json.loads((tmp_path / "scorer" / export.IDS_FILE).read_text()) == ids


def test_export_errors(tiny, tmp_path, monkeypatch, capsys):
  workdir = tiny[0]
  monkeypatch.setattr(recommend, "quiet_libraries", lambda: None)
  for argv, expected in (
      (["--platforms", "cpu,gpu"], "--platforms must be"),
      (["--k", "61"], "larger than the catalogue"),
      (["--k", "0"], "positive integer"),
  ):
    assert export.main(["--workdir", workdir, "--output", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("s3rec-export: error: ") and expected in err, err
    assert len(err.strip().splitlines()) == 1
  assert not os.path.exists(tmp_path / "x")


def test_help_lists_the_flags(capsys):
  assert export.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("s3rec-export --workdir DIR --output DIR")
  for name in ("--workdir", "--output", "--k", "--platforms", "--step", "--[no]overwrite"):
    assert name in out, name


@pytest.mark.parametrize("argv, expected", [
    (["--output", "out"], "--workdir is required"),
    (["--workdir", "w"], "--output is required"),
    (["--workdir", "w", "--output", "out", "--platform", "cpu"],
     "unknown flag --platform; did you mean --platforms?"),
    (["--workdir", "w", "--output", "out", "--platforms", "cpu,cpu"], "--platforms must be"),
    (["--workdir", "w", "--output", "out", "--k", "many"], "flag --k=many"),
    (["--workdir", "w", "--output", "out", "extra"], "unexpected argument 'extra'"),
])
def test_bad_usage_is_one_line(tmp_path, monkeypatch, capsys, argv, expected):
  monkeypatch.setattr(recommend, "quiet_libraries", lambda: None)
  monkeypatch.chdir(tmp_path)
  assert export.main(argv) == 2
  captured = capsys.readouterr()
  assert captured.out == "" and captured.err.startswith("s3rec-export: error: ")
  assert expected in captured.err, captured.err
  assert captured.err.endswith("(see s3rec-export --help)\n")
  assert len(captured.err.splitlines()) == 1
  assert os.listdir(tmp_path) == []
