"""Tests for s3rec_jax.serving.recommend on the tiny reference run: API, original ids and CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

import cli_runs
from s3rec_jax.data import dataset as data
from s3rec_jax.evaluation import metrics
from s3rec_jax.model import encoder as model_lib
from s3rec_jax.serving import recommend


def run_dataset(workdir: str) -> data.Dataset:
  """The run's synthetic dataset, rebuilt from the settings in its run.json."""
  with open(os.path.join(workdir, "run.json")) as f:
    record = json.load(f)
  s = record["config"]["synthetic"]
  ds = data.synthetic_dataset(num_users=s["num_users"], num_items=s["num_items"],
                              num_attributes=s["num_attributes"], seed=s["seed"],
                              num_negatives=None)
  assert ds.max_item == record["max_item"]
  return ds


@pytest.fixture(scope="module")
def tiny(tiny_reference_run):
  """(workdir, recommender, dataset, histories): each user's history s[:-1] (the test input)."""
  ds = run_dataset(tiny_reference_run)
  histories = [ds.sequence(u)[:-1] for u in range(ds.num_users)]
  rec = recommend.Recommender.from_workdir(tiny_reference_run, batch_size=64)
  return tiny_reference_run, rec, ds, histories


@pytest.fixture(scope="module")
def all_top10(tiny):
  """Dense top-10 of every user, one call."""
  _, rec, _, histories = tiny
  return rec.recommend_dense(histories, 10)


def numpy_top_k(user: np.ndarray, table: np.ndarray, history: np.ndarray, num_items: int,
                k: int) -> tuple[np.ndarray, np.ndarray]:
  """Reference: float64 scores of items 1..num_items minus the history; best, then lowest id."""
  scores = table[1:num_items + 1].astype(np.float64) @ user.astype(np.float64)
  ids = np.arange(1, num_items + 1)
  keep = ~np.isin(ids, history)
  order = np.lexsort((ids[keep], -scores[keep]))[:k]
  return ids[keep][order], scores[keep][order]


def test_matches_numpy_reference(tiny, all_top10):
  workdir, rec, ds, histories = tiny
  items, scores = all_top10
  assert items.shape == (ds.num_users, 10) and items.dtype == np.int32
  # Inputs built independently: the evaluation's own left-padded test inputs.
  inputs = data.finetune_splits(ds, rec.config.max_len)["test_inputs"]
  params = jax.device_get(rec.params)
  table = np.asarray(model_lib.item_table(params))
  users = [0, 1, 7, 42, ds.num_users - 1]
  reprs = np.asarray(model_lib.encode(rec.config, params, inputs[users], causal=True))[:, -1]
  for user, repr_ in zip(users, reprs):
    want_items, want_scores = numpy_top_k(repr_, table, histories[user], ds.max_item, 10)
    np.testing.assert_array_equal(items[user], want_items, err_msg=f"user {user}")
    np.testing.assert_allclose(scores[user], want_scores, rtol=1e-5, atol=1e-5)
  # Every user: ten distinct items, none of the history, scores best first.
  for user, history in enumerate(histories):
    assert len(set(items[user].tolist())) == 10 and np.all(items[user] > 0)
    assert not np.isin(items[user], history).any()
    assert np.all(np.diff(scores[user]) <= 0)
  assert any(len(h) > rec.config.max_len for h in histories)  # long histories are cut


def test_history_beyond_window_is_excluded_and_keep_history(tiny):
  _, rec, _, histories = tiny
  long_one = next(h for h in histories if len(h) > 2 * rec.config.max_len)
  [with_all] = rec.recommend([long_one], k=rec.num_items - len(set(long_one.tolist())))
  assert set(with_all.dense_items.tolist()) == set(range(1, rec.num_items + 1)) - set(
      long_one.tolist())
  # Asking for more than remain gives only those that remain.
  [short] = rec.recommend([long_one], k=rec.num_items)
  assert short.dense_items.tolist() == with_all.dense_items.tolist()
  # The window alone decides the user representation: the scores do not change.
  kept_items, kept_scores = rec.recommend_dense([long_one], rec.num_items, exclude_history=False)
  order = {item: score for item, score in zip(kept_items[0], kept_scores[0])}
  np.testing.assert_allclose([order[i] for i in with_all.dense_items], with_all.scores,
                             rtol=1e-6, atol=1e-6)
  assert sorted(kept_items[0].tolist()) == list(range(1, rec.num_items + 1))


def test_batch_size_does_not_change_results(tiny, all_top10):
  workdir, rec, _, histories = tiny
  items, scores = all_top10
  single = recommend.Recommender.from_workdir(workdir, batch_size=1)
  assert single.batch_size == len(jax.local_devices())
  for user in (0, 3, 50, 119):
    for r in (rec, single):
      got_items, got_scores = r.recommend_dense([histories[user]], 10)
      np.testing.assert_array_equal(got_items[0], items[user])
      np.testing.assert_allclose(got_scores[0], scores[user], rtol=1e-6, atol=1e-6)
  # Several batches, the last one partly padding.
  got_items, got_scores = single.recommend_dense(histories[:10], 10)
  np.testing.assert_array_equal(got_items, items[:10])
  np.testing.assert_allclose(got_scores, scores[:10], rtol=1e-6, atol=1e-6)


def test_identity_ids_accept_strings_and_ints(tiny, all_top10):
  _, rec, _, histories = tiny
  items, scores = all_top10
  as_strings = [[str(i) for i in histories[0]], [int(i) for i in histories[1]]]
  first, second = rec.recommend(as_strings, k=10)
  assert first.items == [str(i) for i in items[0]]
  assert second.items == [str(i) for i in items[1]]
  np.testing.assert_allclose(first.scores, scores[0], rtol=1e-6, atol=1e-6)
  assert first.pairs()[0] == (first.items[0], float(first.scores[0]))


def test_original_ids_from_ids_json(tiny, all_top10, tmp_path):
  workdir, _, ds, histories = tiny
  items, scores = all_top10
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  with open(os.path.join(copy, "ids.json"), "w") as f:
    json.dump({"format": "s3rec-jax ids v1",
               "users": [f"user-{u}" for u in range(1, ds.num_users + 1)],
               "items": [f"item-{i}" for i in range(1, ds.max_item + 1)],
               "attributes": [["kind", f"a{a}"] for a in range(1, ds.max_attr + 1)],
               "attribute_fields": {"kind": [1, ds.max_attr]}}, f)
  rec = recommend.Recommender.from_workdir(copy, batch_size=64)
  users = [2, 9, 33]
  results = rec.recommend([[f"item-{i}" for i in histories[u]] for u in users], k=10)
  for user, result in zip(users, results):
    assert result.items == [f"item-{i}" for i in items[user]]
    np.testing.assert_allclose(result.scores, scores[user], rtol=1e-6, atol=1e-6)
  with pytest.raises(recommend.RecommendError, match=r"histories\[1\]\[2\]: unknown item id '7'"):
    rec.recommend([["item-1"], ["item-1", "item-2", 7]])


def test_bad_requests(tiny):
  _, rec, _, _ = tiny
  with pytest.raises(recommend.RecommendError, match=r"histories\[1\]: the history is empty"):
    rec.recommend([["1"], []])
  with pytest.raises(recommend.RecommendError, match=r"histories\[0\]\[1\]: unknown item id '61'"):
    rec.recommend([["1", "61"]])  # the mask token is no item
  with pytest.raises(recommend.RecommendError, match="unknown item id '0'"):
    rec.recommend([[0]])
  with pytest.raises(recommend.RecommendError, match="larger than the catalogue"):
    rec.recommend([["1"]], k=61)
  with pytest.raises(recommend.RecommendError, match="positive integer"):
    rec.recommend([["1"]], k=0)
  with pytest.raises(recommend.RecommendError, match="must be a list"):
    rec.recommend(["1 2 3"])
  with pytest.raises(recommend.RecommendError, match="strings or integers"):
    rec.recommend([[1.5]])


def test_unfinished_or_missing_workdir(tiny, tmp_path):
  workdir = tiny[0]
  with pytest.raises(recommend.RecommendError, match="does not exist"):
    recommend.read_run(str(tmp_path / "nowhere"))
  with pytest.raises(recommend.RecommendError, match="not a train.py workdir"):
    recommend.read_run(str(tmp_path))
  copy = tmp_path / "unfinished"
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns("finetune_*", "results.json"))
  with pytest.raises(recommend.RecommendError, match="no finished fine-tuning"):
    recommend.read_run(str(copy))
  with pytest.raises(recommend.errors.UserError, match="does not exist"):
    recommend.read_run(str(copy), step=4)
  # An explicit step serves a run that has not finished.
  shutil.copytree(os.path.join(workdir, "finetune_best"), copy / "finetune_best")
  step = recommend.read_run(workdir).step
  assert recommend.read_run(str(copy), step=step).step == step


def _fused_cpu_or_skip():
  from s3rec_jax.ops import kernels  # pylint: disable=import-outside-toplevel
  if kernels.compiler() is None:
    pytest.skip("no C++ compiler here (set CXX or install g++): fused_cpu cannot be built")
  return "fused_cpu"


def test_fused_cpu_ranking_serves_the_same_recommendations(tiny, all_top10):
  method = _fused_cpu_or_skip()
  workdir, _, _, histories = tiny
  items, scores = all_top10
  fused = recommend.Recommender.from_workdir(workdir, batch_size=64, ranking=method)
  got_items, got_scores = fused.recommend_dense(histories, 10)
  np.testing.assert_array_equal(got_items, items)
  np.testing.assert_allclose(got_scores, scores, rtol=1e-5, atol=1e-6)
  with pytest.raises(recommend.RecommendError, match="--ranking='fast' is unknown"):
    recommend.Recommender.from_workdir(workdir, ranking="fast")


@pytest.mark.parametrize("method", ["scan", "fused_cpu"])
def test_top_k_items_ties_and_short_lists(method):
  if method == "fused_cpu":
    _fused_cpu_or_skip()
  # A collapsed table: every score ties, so the lowest remaining ids win, in any chunking.
  table = np.ones((12, 4), np.float32)
  user = np.ones((2, 4), np.float32)
  exclude = np.array([[1, 3, 3, 0], [2, 4, 6, 8]], np.int32)
  for chunk_size in (1, 3, 10):
    items, scores = metrics.top_k_items(user, table, exclude, num_items=10,
                                        chunk_size=chunk_size, top_k=4, method=method)
    np.testing.assert_array_equal(items, [[2, 4, 5, 6], [1, 3, 5, 7]])
    np.testing.assert_array_equal(scores, 4.0)
    # Fewer candidates than k: an id-0, -inf tail.
    items, scores = metrics.top_k_items(user, table, exclude, num_items=10,
                                        chunk_size=chunk_size, top_k=9, method=method)
    np.testing.assert_array_equal(items[1], [1, 3, 5, 7, 9, 10, 0, 0, 0])
    assert np.all(np.isneginf(scores[1, 6:]))


# --- command line --------------------------------------------------------------


def _cli(*args: str) -> subprocess.Popen:
  return subprocess.Popen([sys.executable, "-m", "s3rec_jax.serving.recommend", *args],
                          env=cli_runs.env(1), cwd=cli_runs.REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)


@pytest.fixture
def in_process_cli(monkeypatch, capsys):
  """Runs recommend.main(argv) here: (exit code, stdout, stderr)."""
  # The command's logging settings would outlive it in this process.
  monkeypatch.setattr(recommend, "quiet_libraries", lambda: None)

  def run(*argv: str) -> tuple[int, str, str]:
    code = recommend.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err
  return run


def test_cli_history_and_users_file(tiny, all_top10, tmp_path, in_process_cli):
  workdir, _, _, histories = tiny
  items, _ = all_top10
  # A real process: its stderr shows whether libraries print anything.
  proc = _cli("--workdir", workdir, "--history", " ".join(str(i) for i in histories[0]),
              "--k", "10")
  users_file = tmp_path / "users.txt"
  users_file.write_text(
      json.dumps({"user": "u1", "history": [str(i) for i in histories[1]]}) + "\n\n"
      + " ".join(str(i) for i in histories[2]) + "\n"
      + json.dumps({"user": 3, "history": [int(i) for i in histories[3]]}) + "\n")
  output = tmp_path / "out" / "recs.jsonl"
  code, stdout, stderr = in_process_cli("--workdir", workdir, "--users", str(users_file),
                                        "--k", "5", "--output", str(output))
  assert (code, stdout, stderr) == (0, "", "")
  lines = [json.loads(line) for line in output.read_text().splitlines()]
  assert [line["user"] for line in lines] == ["u1", None, 3]
  for user, line in zip((1, 2, 3), lines):
    assert line["items"] == [str(i) for i in items[user][:5]]
    assert len(line["scores"]) == 5
  assert not [f for f in os.listdir(output.parent) if f != output.name]  # no temp files left

  stdout, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr
  assert stderr == ""  # no library noise
  [line] = [json.loads(line) for line in stdout.splitlines()]
  assert line["user"] is None and line["items"] == [str(i) for i in items[0]]
  assert len(line["scores"]) == 10


def _assert_one_line_error(code: int, stdout: str, stderr: str, expected: str) -> None:
  assert code == 2, stderr
  assert stdout == ""
  assert "Traceback" not in stderr
  assert len(stderr.strip().splitlines()) == 1, stderr
  assert stderr.startswith("s3rec-recommend: error: ")
  assert expected in stderr, stderr


def test_cli_errors_are_one_line(tiny, tmp_path, in_process_cli):
  workdir = tiny[0]
  bad_json = tmp_path / "bad.jsonl"
  bad_json.write_text('{"user": "a", "history": ["1", "2"]}\n{"user": "b", "history": \n')
  no_history = tmp_path / "nohistory.jsonl"
  no_history.write_text('\n\n{"user": "a", "items": ["1"]}\n')
  unknown_in_file = tmp_path / "unknown.txt"
  unknown_in_file.write_text("1 2 3\n4 5 nope\n")
  unfinished = tmp_path / "unfinished"
  shutil.copytree(workdir, unfinished, ignore=shutil.ignore_patterns("finetune_*", "results.json"))
  # Real processes for two of them: exit status and stderr as a shell sees them.
  procs = {
      f"{unknown_in_file}:2, item 3: unknown item id 'nope'":
          _cli("--workdir", workdir, "--users", str(unknown_in_file)),
      "does not exist": _cli("--workdir", str(tmp_path / "missing"), "--history", "1"),
  }
  cases = {
      "--history 1, item 3: unknown item id 'x'": ("--workdir", workdir, "--history", "1 2 x"),
      "--history 2: the history is empty": ("--workdir", workdir, "--history", "1", "--history",
                                            " "),
      f"{bad_json}:2: not valid JSON": ("--workdir", workdir, "--users", str(bad_json)),
      f"{no_history}:3: a JSON line needs": ("--workdir", workdir, "--users", str(no_history)),
      f"{tmp_path / 'absent.txt'}": ("--workdir", workdir, "--users", str(tmp_path / "absent.txt")),
      "no finished fine-tuning": ("--workdir", str(unfinished), "--history", "1"),
      "larger than the catalogue": ("--workdir", workdir, "--history", "1", "--k", "1000"),
  }
  for expected, argv in cases.items():
    _assert_one_line_error(*in_process_cli(*argv), expected)
  for expected, proc in procs.items():
    stdout, stderr = proc.communicate(timeout=120)
    _assert_one_line_error(proc.returncode, stdout, stderr, expected)


def test_cli_help_lists_the_flags(in_process_cli):
  code, stdout, stderr = in_process_cli("--help")
  assert (code, stderr) == (0, "")
  assert stdout.startswith("s3rec-recommend --workdir DIR")
  for name in ("--workdir", "--history", "--users", "--k", "--output", "--step", "--batch_size",
               "--[no]keep_history", "--ranking", "fused_cpu"):
    assert name in stdout, name


@pytest.mark.parametrize("argv, expected", [
    (["--history", "1 2"], "--workdir is required"),
    (["--workdir", "w", "--histroy", "1 2"], "unknown flag --histroy; did you mean --history?"),
    (["--workdir", "w", "--history", "1", "--users", "u.txt"],
     "--history and --users do not go together"),
    (["--workdir", "w"], "give the histories: --history"),
    (["--workdir", "w", "--history", "1", "--ranking", "fast"], "flag --ranking=fast: value "
     "should be one of <scan|fused_cpu>"),
    (["--workdir", "w", "--history", "1", "--k", "ten"], "flag --k=ten"),
    (["--workdir", "w", "--history", "1", "extra"], "unexpected argument 'extra'"),
])
def test_cli_bad_usage_is_one_line(in_process_cli, argv, expected):
  code, stdout, stderr = in_process_cli(*argv)
  _assert_one_line_error(code, stdout, stderr, expected)
  assert stderr.endswith("(see s3rec-recommend --help)\n")
