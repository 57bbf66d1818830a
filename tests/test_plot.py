"""python -m s3rec_jax.tools.plot: panels and legend of overlaid runs, the PNG, and bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import cli_runs
from s3rec_jax.tools import plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SAMPLED_METRICS = ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10", "MRR")


def _write_log(workdir, lines: list[dict], tail: str = "") -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "log.jsonl"), "w") as f:
    f.write("".join(json.dumps(line) + "\n" for line in lines) + tail)


@pytest.fixture
def sasrec_workdir(tmp_path):
  """A hand-written log.jsonl as train.py writes it for a run without pre-training (5 epochs)."""
  workdir = str(tmp_path / "sasrec")
  lines = []
  for epoch in range(1, 6):
    valid = {name: 0.1 * epoch + 0.01 * i for i, name in enumerate(SAMPLED_METRICS)}
    loss = 1.4 - 0.05 * epoch
    lines.append({"phase": "finetune", "epoch": epoch, "loss": loss, "seconds": 0.5,
                  "valid": valid})
    lines.append({"phase": "scalars", "step": epoch, "scalars": {
        "finetune/loss": loss, "finetune/epoch_seconds": 0.5,
        "finetune/sequences_per_second": 240.0, **{f"valid/{k}": v for k, v in valid.items()}}})
  lines.append({"phase": "scalars", "step": 5,
                "scalars": {f"test/{name}": 0.4 for name in SAMPLED_METRICS}})
  lines.append({"phase": "done", "wall_seconds": 4.0})
  _write_log(workdir, lines)
  return workdir


def _titles(fig) -> list[str]:
  return [ax.get_title() for ax in fig.axes]


def _line_labels(ax) -> set[str]:
  return {line.get_label() for line in ax.get_lines()}


def test_figure_overlays_a_pretrained_and_a_sasrec_run(tiny_reference_run, sasrec_workdir):
  runs = [plot.read_run(tiny_reference_run, "S3-Rec"), plot.read_run(sasrec_workdir)]
  fig = plot.make_figure(runs)
  titles = _titles(fig)
  pretrain = titles[:5]
  assert set(pretrain) == {f"pretrain/{n}" for n in ("aap", "mip", "map", "sp", "loss")}
  assert pretrain[-1] == "pretrain/loss"  # the weighted total after the objectives
  assert titles[5:] == ["finetune/loss", *(f"valid/{m}" for m in SAMPLED_METRICS)]
  # The SASRec run has no line in the pre-training panels, and one in every other.
  for ax in fig.axes:
    want = {"S3-Rec"} if ax.get_title().startswith("pretrain/") else {"S3-Rec", "sasrec"}
    assert _line_labels(ax) == want, ax.get_title()
    assert ax.get_lines(), ax.get_title()
  legend = [text.get_text() for text in fig.legends[0].get_texts()]
  assert legend == ["S3-Rec", "sasrec", "epoch mean (pre-training)", "test (best epoch)"]


def test_cli_writes_a_png_with_chosen_metrics_and_labels(tiny_reference_run, sasrec_workdir,
                                                         tmp_path, capsys):
  out = tmp_path / "figures"
  out.mkdir()
  png = out / "curves.png"
  assert plot.main([tiny_reference_run, sasrec_workdir, "--output", str(png),
                    "--labels", "pre,plain", "--metrics", "NDCG@10,HR@10"]) == 0
  assert capsys.readouterr().out.strip() == f"wrote {png}"
  data = png.read_bytes()
  assert data.startswith(PNG_MAGIC) and len(data) > 20_000
  assert os.listdir(out) == ["curves.png"]  # no temp file left behind
  fig = plot.make_figure([plot.read_run(tiny_reference_run, "pre"),
                          plot.read_run(sasrec_workdir, "plain")], ["NDCG@10", "HR@10"])
  assert _titles(fig)[-3:] == ["finetune/loss", "valid/NDCG@10", "valid/HR@10"]


def test_a_redone_step_keeps_its_last_value_and_a_cut_off_last_line_is_skipped(tmp_path):
  workdir = str(tmp_path / "killed")
  _write_log(workdir, [
      {"phase": "scalars", "step": 5, "scalars": {"pretrain/aap": 3.0}},
      {"phase": "scalars", "step": 10, "scalars": {"pretrain/aap": 2.0}},
      {"phase": "scalars", "step": 5, "scalars": {"pretrain/aap": 3.5}},   # after a resume
  ], tail='{"phase": "scalars", "st')
  run = plot.read_run(workdir)
  assert run.label == "killed"
  assert run.scalars == {"pretrain/aap": ([5, 10], [3.5, 2.0])}
  assert _titles(plot.make_figure([run])) == ["pretrain/aap"]


def _bad_cases(tmp_path, good):
  """(argv, text the message must hold) for each kind of bad input."""
  no_log = tmp_path / "no_log"
  no_log.mkdir()
  empty = tmp_path / "empty"
  _write_log(str(empty), [])
  corrupt = tmp_path / "corrupt"
  _write_log(str(corrupt), [{"phase": "done"}],
             tail="not json\n" + json.dumps({"phase": "x"}) + "\n")
  old = tmp_path / "old"
  _write_log(str(old),
             [{"phase": "finetune", "epoch": 1, "loss": 1.0, "seconds": 1.0, "valid": {}}])
  png = str(tmp_path / "out.png")
  return {
      "missing folder": ([str(tmp_path / "nowhere"), "--output", png], "nowhere: no such folder"),
      "no log.jsonl": ([str(no_log), "--output", png], f"{no_log}/log.jsonl: not found"),
      "empty log": ([str(empty), "--output", png], f"{empty}/log.jsonl: is empty"),
      "corrupt line": ([str(corrupt), "--output", png], f"{corrupt}/log.jsonl:2: not a JSON"),
      "no scalars": ([str(old), "--output", png], f"{old}/log.jsonl: holds no scalars"),
      "output folder missing": ([good, "--output", str(tmp_path / "no" / "out.png")],
                                f"folder {tmp_path / 'no'} does not exist"),
      "output not png": ([good, "--output", str(tmp_path / "out.pdf")], "out.pdf: the figure is"),
      "unknown metric": ([good, "--output", png, "--metrics", "NDCG@20"], "no run logged NDCG@20"),
      "labels count": ([good, "--output", png, "--labels", "a,b"], "2 label(s) for 1 WORKDIR"),
  }


@pytest.mark.parametrize("case", ["missing folder", "no log.jsonl", "empty log", "corrupt line",
                                  "no scalars", "output folder missing", "output not png",
                                  "unknown metric", "labels count"])
def test_bad_input_is_one_line_and_exit_2_with_no_png(case, tmp_path, sasrec_workdir, capsys):
  argv, expected = _bad_cases(tmp_path, sasrec_workdir)[case]
  assert plot.main(argv) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("s3rec-plot: error: "), err
  assert expected in err, err
  assert not [f for f in os.listdir(tmp_path) if f.endswith(".png") or f.startswith(".tmp")]


@pytest.mark.parametrize("argv, expected", [
    (["--output", "OUT"], "name the train.py WORKDIR(s) to plot"),
    (["WORKDIR"], "--output is required"),
    (["WORKDIR", "--output", "OUT", "--metric", "HR@10"],
     "unknown flag --metric; did you mean --metrics?"),
])
def test_bad_usage_is_one_line_and_returns_2(argv, expected, tmp_path, capsys):
  argv = [str(tmp_path / "out.png") if a == "OUT" else str(tmp_path) if a == "WORKDIR" else a
          for a in argv]
  assert plot.main(argv) == 2
  err = capsys.readouterr().err
  assert err == f"s3rec-plot: error: {expected} (see s3rec-plot --help)\n", err
  assert not os.listdir(tmp_path)


def test_help_returns_0_and_lists_the_flags(capsys):
  assert plot.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert out.startswith("s3rec-plot WORKDIR [WORKDIR ...] --output FILE.png")
  assert all(f"\n  --{name}\n" in out for name in ("output", "labels", "metrics"))
  assert "\n  --[no]help, -h\n" in out


def test_module_entry_point_reports_bad_input_without_a_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "s3rec_jax.tools.plot", str(tmp_path), "--output", str(tmp_path / "a.png")],
      cwd=cli_runs.REPO, capture_output=True, text=True, timeout=60)
  assert result.returncode == 2
  assert result.stderr == (f"s3rec-plot: error: {tmp_path}/log.jsonl: not found "
                           f"(is {tmp_path} a train.py workdir?)\n")
  assert not os.path.exists(tmp_path / "a.png")
