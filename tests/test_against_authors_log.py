"""benchmarks/against_authors_log.py reads the authors' log format and our run's log."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import against_authors_log  # noqa: E402  pylint: disable=g-import-not-at-top,wrong-import-position

AUTHORS = """2023-08-17 19:45:31,269 - Namespace(data_name='LastFM', lr=0.001)
2023-08-17 19:45:40,103 - {'epoch': 0, 'rec_loss': '8.0000'}
2023-08-17 19:45:41,038 - {'Epoch': 0, 'HR@5': '0.0193', 'HR@20': '0.0596', 'NDCG@20': '0.0245'}
2023-08-17 19:45:41,039 - Validation score increased.  Saving model ...
2023-08-17 19:45:44,796 - {'epoch': 1, 'rec_loss': '7.0000'}
2023-08-17 19:45:45,481 - {'Epoch': 1, 'HR@5': '0.0220', 'HR@20': '0.0587', 'NDCG@20': '0.0229'}
2023-08-17 19:49:51,278 - ---------------Test Score---------------
2023-08-17 19:49:51,980 - {'Epoch': 0, 'HR@5': '0.0523', 'HR@20': '0.1174', 'NDCG@20': '0.0526'}
2023-08-17 19:49:51,981 - {'Epoch': 0, 'HR@5': '0.0523', 'HR@20': '0.1174', 'NDCG@20': '0.0526'}
"""


def test_both_logs_side_by_side(tmp_path, capsys):
  (tmp_path / "a.log").write_text(AUTHORS)
  run = tmp_path / "run"
  run.mkdir()
  records = [{"phase": "finetune", "epoch": e + 1, "loss": loss, "valid": {"NDCG@20": v}}
             for e, (loss, v) in enumerate([(8.08, 0.02), (6.93, 0.03), (6.5, 0.025)])]
  (run / "log.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
  (run / "results.json").write_text(json.dumps({"test": {"HR@20": 0.1, "NDCG@20": 0.05}}))
  assert against_authors_log.main(["--authors", str(tmp_path / "a.log"), "--run", str(run)]) == 0
  out = capsys.readouterr().out
  assert "| 1 | 8.0000 | 8.0800 | 0.0245 | 0.0200 |" in out
  assert "| 3 |  | 6.5000 |  | 0.0250 |" in out
  assert "the 2 epochs both ran: mean relative gap 1.00%" in out
  assert "authors: best validation NDCG@20 0.0245 at epoch 1 of 2; test HR@20 0.1174" in out
  assert "ours: best validation NDCG@20 0.0300 at epoch 2 of 3; test HR@20 0.1000" in out


def test_a_log_without_epochs_is_one_line(tmp_path, capsys):
  (tmp_path / "a.log").write_text("nothing here\n")
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "log.jsonl").write_text("")
  assert against_authors_log.main(["--authors", str(tmp_path / "a.log"),
                                   "--run", str(tmp_path / "run")]) == 2
  assert "no epochs found in" in capsys.readouterr().err


def test_a_run_log_without_losses_names_the_file(tmp_path, capsys):
  (tmp_path / "a.log").write_text(AUTHORS)
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / "log.jsonl").write_text(
      json.dumps({"phase": "finetune", "epoch": 1, "valid": {"NDCG@20": 0.1}}) + "\n")
  assert against_authors_log.main(["--authors", str(tmp_path / "a.log"),
                                   "--run", str(tmp_path / "run")]) == 2
  err = capsys.readouterr().err
  assert "log.jsonl: a finetune record has no 'loss'" in err and "Traceback" not in err
