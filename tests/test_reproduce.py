"""benchmarks/reproduce.py: the reference-log parser, the tables and a tiny end-to-end row."""

import importlib.util
import json
import os
import pathlib
import sys

import pytest

from s3rec_jax.configs import synthetic

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce.py"
_SPEC = importlib.util.spec_from_file_location("reproduce", _PATH)
reproduce = importlib.util.module_from_spec(_SPEC)
sys.modules["reproduce"] = reproduce  # dataclasses look their module up there.
_SPEC.loader.exec_module(reproduce)

_LOG = """\
Namespace(ckp=150, data_name='Tiny', epochs=200, seed=42)
{'epoch': 0, 'rec_avg_loss': '1.3', 'rec_cur_loss': '1.2'}
{'Epoch': 0, 'HIT@1': '0.10', 'NDCG@1': '0.10', 'HIT@5': '0.2', 'NDCG@5': '0.15', 'HIT@10': '0.3', 'NDCG@10': '0.18', 'MRR': '0.20'}
{'epoch': 1, 'rec_avg_loss': '1.1', 'rec_cur_loss': '1.0'}
{'Epoch': 1, 'HIT@1': '0.12', 'NDCG@1': '0.12', 'HIT@5': '0.3', 'NDCG@5': '0.2', 'HIT@10': '0.4', 'NDCG@10': '0.25', 'MRR': '0.25'}
{'epoch': 2, 'rec_avg_loss': '1.0', 'rec_cur_loss': '0.9'}
{'Epoch': 2, 'HIT@1': '0.11', 'NDCG@1': '0.11', 'HIT@5': '0.3', 'NDCG@5': '0.2', 'HIT@10': '0.4', 'NDCG@10': '0.25', 'MRR': '0.25'}
{'Epoch': 0, 'HIT@1': '0.1156', 'NDCG@1': '0.1156', 'HIT@5': '0.3092', 'NDCG@5': '0.2126', 'HIT@10': '0.4587', 'NDCG@10': '0.2605', 'MRR': '0.2209'}
Finetune_sample-Tiny-150
{'Epoch': 0, 'HIT@1': '0.1156', 'NDCG@1': '0.1156', 'HIT@5': '0.3092', 'NDCG@5': '0.2126', 'HIT@10': '0.4587', 'NDCG@10': '0.2605', 'MRR': '0.2209'}
"""


def test_parse_reference_log(tmp_path):
  path = tmp_path / "Finetune_sample-Tiny-150.txt"
  path.write_text(_LOG)
  parsed = reproduce.parse_reference_log(path)
  assert parsed["test"] == {"HR@1": 0.1156, "HR@5": 0.3092, "NDCG@5": 0.2126, "HR@10": 0.4587,
                            "NDCG@10": 0.2605, "MRR": 0.2209}
  assert parsed["finetune_epochs"] == 3
  assert parsed["best_epoch"] == 2  # The first of the tied best MRRs.
  assert parsed["pretrain_epochs"] == 150


def test_parse_reference_log_rejects_a_log_without_test_line(tmp_path):
  path = tmp_path / "Finetune_sample-Tiny-0.txt"
  path.write_text(_LOG.rsplit("\n", 2)[0] + "\n")  # Ends with the name line.
  with pytest.raises(ValueError, match="last line is not a metrics dict"):
    reproduce.parse_reference_log(path)


def test_reference_log_rows_pick_pretrained_and_sasrec_logs(tmp_path):
  logs = tmp_path / "reference_logs"
  logs.mkdir()
  (logs / "Finetune_sample-Tiny-150.txt").write_text(_LOG)
  (logs / "Finetune_sample-Tiny-0.txt").write_text(_LOG)
  (logs / "Finetune_sample-TinyOther-150.txt").write_text("garbage")
  rows = reproduce.reference_log_rows(str(tmp_path), "Tiny", "sampled")
  assert [r.label for r in rows] == ["S3-Rec (reference log)", "SASRec (reference log)"]
  assert rows[0].epochs == "pre 150 + ft 3 (best 2)"
  assert rows[1].epochs.startswith("pre 0 ")
  assert reproduce.reference_log_rows(str(tmp_path), "Tiny", "full") == []


def test_paper_rows_are_quoted_in_column_order():
  (s3rec, sasrec), = [reproduce.paper_rows("LastFM", "sampled")]
  assert s3rec.metrics["HR@10"] == 0.5835 and s3rec.metrics["MRR"] == 0.3072
  assert sasrec.metrics["HR@1"] == 0.1211
  assert "not measured" in s3rec.source
  full = reproduce.paper_rows("Toys_and_Games", "full")
  assert [r.label for r in full] == ["S3-Rec (published)"]
  assert full[0].metrics["NDCG@20"] == 0.0468


def test_render_markdown_with_fake_results():
  rows = [
      reproduce.Row("Beauty", "sampled", "sasrec", "SASRec (ours)", "`runs/x`",
                    {"HR@1": 0.1, "HR@5": 0.25, "NDCG@5": 0.123456, "HR@10": 0.4,
                     "NDCG@10": 0.3, "MRR": 0.2}, "pre 0 + ft 12 (best 2)", 125.0),
      reproduce.Row("Beauty", "sampled", "released", "released", "no released checkpoint"),
      reproduce.Row("Beauty", "full", "sasrec", "SASRec (ours)", "a|b", {"HR@20": 0.5}, wall_seconds=30),
  ]
  text = reproduce.render_markdown(rows, ["Beauty"], ["sampled", "full"], ["a note"],
                                   machine="cpu x2", command="python benchmarks/reproduce.py")
  lines = text.splitlines()
  assert "| row | source | HR@1 | HR@5 | NDCG@5 | HR@10 | NDCG@10 | MRR | epochs | wall time |" in lines
  assert "| row | source | HR@5 | NDCG@5 | HR@10 | NDCG@10 | HR@20 | NDCG@20 | epochs | wall time |" in lines
  assert ("| SASRec (ours) | `runs/x` | 0.1000 | 0.2500 | 0.1235 | 0.4000 | 0.3000 | 0.2000 "
          "| pre 0 + ft 12 (best 2) | 2.1 min |") in lines
  assert "| released | no released checkpoint | – | – | – | – | – | – | – | – |" in lines
  assert "| SASRec (ours) | a\\|b | – | – | – | – | 0.5000 | – | – | 30 s |" in lines
  assert "- a note" in lines and "Machine: cpu x2" in lines
  assert "python benchmarks/reproduce.py" in lines
  # Every table row has as many cells as its header.
  table_lines = [line for line in lines if line.startswith("|")]
  assert {line.replace("\\|", "").count("|") for line in table_lines} == {11}


def test_format_seconds():
  assert reproduce.format_seconds(None) == "–"
  assert reproduce.format_seconds(42.4) == "42 s"
  assert reproduce.format_seconds(600) == "10.0 min"
  assert reproduce.format_seconds(3 * 3600) == "3.00 h"


def test_run_log_readers(tmp_path):
  def write(*records):
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

  assert reproduce.finetune_epochs_run(str(tmp_path)) is None
  # A resumed run repeats an epoch and counts on; the last record is the total.
  write({"phase": "pretrain", "epoch": 1}, *({"phase": "finetune", "epoch": e} for e in (1, 2, 2, 3)),
        {"phase": "done", "wall_seconds": 5.0}, {"phase": "done", "wall_seconds": 7.5})
  assert reproduce.finetune_epochs_run(str(tmp_path)) == 3
  assert reproduce.logged_wall_seconds({}, str(tmp_path)) == 7.5
  assert reproduce.logged_wall_seconds({"wall_seconds": 2.0}, str(tmp_path)) == 2.0
  write({"phase": "finetune", "epoch": 1})
  assert reproduce.logged_wall_seconds({}, str(tmp_path)) is None


def test_write_atomic_leaves_no_temp_file(tmp_path):
  out = tmp_path / "sub" / "table.md"
  reproduce.write_atomic(str(out), "hello\n")
  reproduce.write_atomic(str(out), "again\n")
  assert out.read_text() == "again\n"
  assert os.listdir(out.parent) == ["table.md"]


def test_parse_args_rejects_unknown_rows():
  with pytest.raises(SystemExit):
    reproduce.parse_args(["--rows", "paper,bogus"])
  args = reproduce.parse_args(["--datasets", "LastFM", "--rows", "sasrec", "--devices", "2"])
  assert args.datasets == ["LastFM"] and args.rows == ["sasrec"] and args.devices == 2
  assert args.output == os.path.join("runs/reproduce", "table.md")
  assert reproduce.parse_args(["--workdir", "w"]).output == os.path.join("w", "table.md")


def _tiny_config(dataset):
  assert dataset == "synthetic"
  c = synthetic.get_config()
  c.synthetic.kind = "markov"
  c.compare_to_sasrec = False
  c.synthetic.num_users = 64
  c.synthetic.num_items = 40
  c.synthetic.num_attributes = 8
  c.sample.num_negatives = 20
  c.max_seq_length = 8
  c.model.hidden_size = 8
  c.model.num_layers = 1
  c.finetune.batch_size = 32
  c.eval.batch_size = 64
  c.eval.chunk_size = 32
  c.pack_sequences = False  # Compiles faster at this size.
  return c


def _fake_run(calls):
  """A stand-in for run_lib.run that writes what the real one writes, instantly."""

  def run(config, workdir):
    calls.append((os.path.basename(workdir), config.pretrain.epochs,
                  config.finetune.init_checkpoint, config.eval.protocol))
    os.makedirs(workdir, exist_ok=True)
    checkpoint = None
    if config.pretrain.epochs:
      step_dir = os.path.join(workdir, "pretrain", str(config.pretrain.epochs))
      os.makedirs(os.path.join(step_dir, "params"))
      checkpoint = {"path": step_dir, "step": config.pretrain.epochs}
    elif config.finetune.init_checkpoint:
      assert os.path.isdir(config.finetune.init_checkpoint)
      checkpoint = {"path": config.finetune.init_checkpoint, "step": 7}
    with open(os.path.join(workdir, "log.jsonl"), "w") as f:
      for epoch in range(1, config.finetune.epochs + 1):
        f.write(json.dumps({"phase": "finetune", "epoch": epoch}) + "\n")
      f.write(json.dumps({"phase": "done", "wall_seconds": 3.0}) + "\n")
    payload = {name: 0.5 for name in reproduce.COLUMNS[config.eval.protocol]}
    payload.update(best_epoch=1, pretrain_checkpoint=checkpoint, config=config.to_dict())
    with open(os.path.join(workdir, "results.json"), "w") as f:
      json.dump(payload, f)
    return payload

  return run


def test_reproduce_orchestrates_rows_workdirs_and_reuse(tmp_path, monkeypatch):
  from s3rec_jax.training import run as run_lib  # pylint: disable=import-outside-toplevel
  calls = []
  monkeypatch.setattr(run_lib, "run", _fake_run(calls))
  settings = reproduce.Settings(
      datasets=["synthetic"], protocols=["sampled", "full"],
      rows=["paper", "released", "scratch_reference", "sasrec"], data_dir=str(tmp_path / "data"),
      workdir=str(tmp_path / "runs"), pretrain_epochs=3, finetune_epochs=2)
  seen = []
  rows, notes = reproduce.reproduce(settings, config_factory=_tiny_config,
                                    on_row=lambda r, n: seen.append(len(r)))
  assert notes == [] and seen == [1, 2, 3, 4, 5, 6]
  first_pretrain = str(tmp_path / "runs" / "synthetic-scratch-reference-sampled" / "pretrain")
  # Pre-training happens once; the second protocol fine-tunes from it.
  assert calls == [("synthetic-scratch-reference-sampled", 3, "", "sampled"),
                   ("synthetic-scratch-reference-full", 0, first_pretrain, "full"),
                   ("synthetic-sasrec-sampled", 0, "", "sampled"),
                   ("synthetic-sasrec-full", 0, "", "full")]
  by_kind = {(r.kind, r.protocol): r for r in rows}
  assert by_kind[("released", "sampled")].source == "no released checkpoint for this dataset"
  assert by_kind[("scratch_reference", "sampled")].epochs == "pre 3 + ft 2 (best 1)"
  assert by_kind[("scratch_reference", "full")].epochs == "pre 7 reused + ft 2 (best 1)"
  assert by_kind[("sasrec", "full")].metrics == {c: 0.5 for c in reproduce.COLUMNS["full"]}
  assert all(r.wall_seconds is not None for r in rows if r.kind in ("scratch_reference", "sasrec"))

  # --skip_existing: nothing runs again; the figures and wall times come from results.json.
  calls.clear()
  settings.skip_existing = True
  again, _ = reproduce.reproduce(settings, config_factory=_tiny_config)
  assert calls == []
  measured = [r for r in again if r.kind in ("scratch_reference", "sasrec")]
  assert all("(reused)" in r.source and r.wall_seconds == 3.0 for r in measured)

  # A results.json made with other settings is not silently reused.
  settings.finetune_epochs = 5
  settings.rows = ["sasrec"]
  clash, _ = reproduce.reproduce(settings, config_factory=_tiny_config)
  assert calls == [] and all(r.failed and "finetune.epochs" in r.source for r in clash)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("REPRODUCE_E2E") != "1",
                    reason="about 10-30 s (XLA compilation) on 2 busy CPU cores, more than this "
                           "file's budget; run with REPRODUCE_E2E=1")
def test_reproduce_sasrec_row_end_to_end(tmp_path):
  settings = reproduce.Settings(datasets=["synthetic"], protocols=["sampled"], rows=["sasrec"],
                                workdir=str(tmp_path), finetune_epochs=1)
  (row,), notes = reproduce.reproduce(settings, config_factory=_tiny_config)
  assert notes == [] and not row.failed, row.source
  assert row.label == "SASRec (ours)" and row.epochs == "pre 0 + ft 1 (best 1)"
  assert set(row.metrics) == set(reproduce.COLUMNS["sampled"])
  assert row.wall_seconds > 0
  with open(tmp_path / "synthetic-sasrec-sampled" / "results.json") as f:
    assert json.load(f)["MRR"] == pytest.approx(row.metrics["MRR"])


@pytest.mark.realdata
def test_real_reference_logs_match_published_reruns(shared_data_dir):
  rows = reproduce.reference_log_rows(str(shared_data_dir), "LastFM", "sampled")
  s3rec = rows[0]
  assert s3rec.label == "S3-Rec (reference log)"
  assert s3rec.metrics["HR@10"] == 0.6083 and s3rec.metrics["MRR"] == 0.2981
  beauty = reproduce.reference_log_rows(str(shared_data_dir), "Beauty", "sampled")[0]
  assert beauty.metrics["HR@1"] == 0.2197 and beauty.metrics["NDCG@10"] == 0.3816
