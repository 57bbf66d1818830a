"""Metric writers: log.jsonl lines, TensorBoard event files, fan-out; and what a real run writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

import cli_runs
from s3rec_jax.training import metric_writers


def _read_lines(path) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f]


def _events(logdir) -> dict[str, list[tuple[int, float]]]:
  """Tag -> [(step, value)] of every event file in logdir, read the way TensorBoard reads them."""
  acc = event_accumulator.EventAccumulator(str(logdir),
                                           size_guidance={event_accumulator.SCALARS: 0})
  acc.Reload()
  return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


class _Recorder(metric_writers.MetricWriter):
  """Remembers every call, in order."""

  def __init__(self, fail_on_close: bool = False):
    self.calls, self.fail_on_close = [], fail_on_close

  def write_scalars(self, step, scalars):
    self.calls.append(("scalars", step, dict(scalars)))

  def write_record(self, record):
    self.calls.append(("record", dict(record)))

  def flush(self):
    self.calls.append(("flush",))

  def close(self):
    self.calls.append(("close",))
    if self.fail_on_close:
      raise OSError("disk full")


def test_jsonl_writer_appends_records_and_scalar_lines(tmp_path):
  path = tmp_path / "log.jsonl"
  path.write_text(json.dumps({"phase": "earlier"}) + "\n")
  with metric_writers.JsonlWriter(str(path)) as writer:
    writer.write_record({"phase": "finetune", "epoch": 1, "valid": {"HR@10": np.float64(0.5)}})
    writer.write_scalars(np.int64(7), {"finetune/loss": np.float32(1.25), "valid/HR@10": 0.5})
  metric_writers.JsonlWriter(str(path)).write_record({"phase": "done", "wall_seconds": 3.0})
  assert _read_lines(path) == [
      {"phase": "earlier"},
      {"phase": "finetune", "epoch": 1, "valid": {"HR@10": 0.5}},
      {"phase": "scalars", "step": 7, "scalars": {"finetune/loss": 1.25, "valid/HR@10": 0.5}},
      {"phase": "done", "wall_seconds": 3.0}]


def test_multi_writer_fans_out_every_call_in_order():
  first, second = _Recorder(), _Recorder()
  with metric_writers.MultiWriter([first, second]) as writer:
    writer.write_scalars(3, {"a": 1.0})
    writer.write_record({"phase": "x"})
    writer.flush()
  want = [("scalars", 3, {"a": 1.0}), ("record", {"phase": "x"}), ("flush",), ("close",)]
  assert first.calls == want and second.calls == want


def test_multi_writer_closes_every_writer_when_one_fails():
  broken, fine = _Recorder(fail_on_close=True), _Recorder()
  with pytest.raises(OSError, match="disk full"):
    metric_writers.MultiWriter([broken, fine]).close()
  assert fine.calls == [("close",)]


def test_tensorboard_writer_event_file_has_the_tags_steps_and_values(tmp_path):
  logdir = tmp_path / "tb"
  writer = metric_writers.TensorBoardWriter(str(logdir))
  writer.write_record({"phase": "ignored"})
  assert not logdir.exists()  # nothing written yet: no file
  writer.write_scalars(5, {"pretrain/aap": 2.5, "pretrain/loss": np.float32(3.0)})
  writer.write_scalars(10, {"pretrain/aap": 1.5, "pretrain/loss": 2.0})
  writer.write_scalars(1, {"valid/HR@10": 0.25, "valid/NDCG@20": 0.125})
  writer.close()
  assert _events(logdir) == {
      "pretrain/aap": [(5, 2.5), (10, 1.5)], "pretrain/loss": [(5, 3.0), (10, 2.0)],
      "valid/HR@10": [(1, 0.25)], "valid/NDCG@20": [(1, 0.125)]}  # '@' kept
  with pytest.raises(ValueError, match="closed"):
    writer.write_scalars(11, {"pretrain/aap": 1.0})


def test_writers_started_in_the_same_second_keep_their_own_files(tmp_path):
  # As a resumed run does: one writer per phase, one right after the other.
  for tag in ("pretrain/loss", "finetune/loss"):
    with metric_writers.TensorBoardWriter(str(tmp_path)) as writer:
      writer.write_scalars(1, {tag: 1.0})
  assert len(os.listdir(tmp_path)) == 2
  assert _events(tmp_path) == {"pretrain/loss": [(1, 1.0)], "finetune/loss": [(1, 1.0)]}


def test_default_writer_writes_both_and_nothing_when_disabled(tmp_path):
  (tmp_path / "on").mkdir()
  (tmp_path / "off").mkdir()
  for name, enabled in (("on", True), ("off", False)):
    with metric_writers.create_default_writer(str(tmp_path / name), enabled=enabled) as writer:
      writer.write_scalars(2, {"finetune/loss": 0.5})
      writer.write_record({"phase": "done"})
  assert _read_lines(tmp_path / "on" / "log.jsonl") == [
      {"phase": "scalars", "step": 2, "scalars": {"finetune/loss": 0.5}}, {"phase": "done"}]
  assert _events(tmp_path / "on" / "tensorboard") == {"finetune/loss": [(2, 0.5)]}
  assert os.listdir(tmp_path / "off") == []


def test_importing_the_module_leaves_tensorboardx_unloaded():
  code = ("import sys, s3rec_jax.training.metric_writers; "
          "assert 'tensorboardX' not in sys.modules, 'tensorboardX imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=cli_runs.REPO)


def test_reference_run_event_files_match_its_log(tiny_reference_run):
  workdir = tiny_reference_run
  events = _events(os.path.join(workdir, metric_writers.TENSORBOARD_DIR))
  records = cli_runs.read_log(workdir)
  results = cli_runs.read_results(workdir)
  scalar_lines = [r for r in records if r["phase"] == "scalars"]
  by_phase = lambda phase: [r for r in records if r["phase"] == phase]
  approx = lambda values: pytest.approx(values, rel=1e-6)  # event files hold float32
  pretrain_epochs, finetune_epochs = by_phase("pretrain"), by_phase("finetune")
  assert len(pretrain_epochs) == cli_runs.TINY["pretrain.epochs"]
  objectives = ("aap", "mip", "map", "sp", "loss")

  # log.jsonl's own records keep exactly their keys.
  for r in pretrain_epochs:
    assert set(r) == {"phase", "epoch", "seconds", *objectives}
  for r in finetune_epochs:
    assert set(r) == {"phase", "epoch", "loss", "seconds", "valid", "objectives"}
    assert set(r["objectives"]) == {"next_item"}
  assert set(by_phase("done")[0]) == {"phase", "wall_seconds"}

  # Epoch means at the global step of each epoch end.
  epoch_steps = [step for step, _ in events["pretrain_epoch/loss"]]
  steps_per_epoch = epoch_steps[0]
  assert epoch_steps == [steps_per_epoch * (e + 1) for e in range(len(pretrain_epochs))]
  for name in objectives:
    assert [v for _, v in events[f"pretrain_epoch/{name}"]] == approx(
        [r[name] for r in pretrain_epochs])
    # One point per host sync: at most log_every_steps apart, one at every epoch end.
    points = events[f"pretrain/{name}"]
    steps = [step for step, _ in points]
    assert steps == sorted(set(steps)) and steps[-1] == epoch_steps[-1]
    assert set(epoch_steps) <= set(steps)
    assert max(np.diff([0, *steps])) <= cli_runs.TINY["pretrain.log_every_steps"]
    logged = [(r["step"], r["scalars"][f"pretrain/{name}"]) for r in scalar_lines
              if f"pretrain/{name}" in r["scalars"]]
    assert steps == [s for s, _ in logged]
    assert [v for _, v in points] == approx([v for _, v in logged])
  assert len(events["pretrain/loss"]) > len(pretrain_epochs)
  assert [s for s, _ in events["pretrain/sequences_per_second"]] == epoch_steps
  assert all(v > 0 for _, v in events["pretrain/sequences_per_second"])

  # Fine-tuning: one point per epoch, step = epoch.
  epochs = [r["epoch"] for r in finetune_epochs]
  assert epochs == list(range(1, len(epochs) + 1))
  assert events["finetune/loss"] == [
      (e, approx(r["loss"])) for e, r in zip(epochs, finetune_epochs)]
  assert [s for s, _ in events["finetune/sequences_per_second"]] == epochs
  for metric in results["valid"]:
    assert events[f"valid/{metric}"] == [
        (e, approx(r["valid"][metric])) for e, r in zip(epochs, finetune_epochs)]
    assert events[f"test/{metric}"] == [(results["best_epoch"], approx(results["test"][metric]))]
