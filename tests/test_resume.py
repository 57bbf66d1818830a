"""kill -9 at random moments, rerun the same command: results.json equals an uninterrupted run's."""

import os
import random
import shutil
import signal
import subprocess
import time

import pytest

import cli_runs


def _comparable(results: dict) -> dict:
  out = dict(results)
  checkpoint = out.pop("pretrain_checkpoint")
  out["pretrain_step"] = checkpoint and checkpoint["step"]   # its path names the workdir
  return out


def _kill_after(workdir: str, triggers, delay: float, cache: str) -> str:
  """Starts a run, waits for any of `triggers` on its output plus `delay` seconds, kills it
  with SIGKILL; returns what it printed."""
  proc = subprocess.Popen(cli_runs.command(workdir), env=cli_runs.env(4, cache), cwd=cli_runs.REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  seen = []
  try:
    deadline = time.time() + 240
    for line in proc.stdout:
      seen.append(line)
      if any(t in line for t in triggers):
        time.sleep(delay)
        break
      assert time.time() < deadline, "trigger never appeared"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
  finally:
    proc.kill()
  return "".join(seen)


@pytest.mark.slow
def test_kill_and_resume_gives_identical_results(tmp_path, tiny_reference_run, capsys):
  want = _comparable(cli_runs.read_results(tiny_reference_run))
  rng = random.Random(0)
  # Three kills in a row, each in the run that resumed from the one before, after a
  # random extra delay: inside pre-training epoch 1 (between mid-epoch checkpoints),
  # inside epoch 2 and inside fine-tuning. A run resumed past a kill point's line
  # is killed after its own resume line instead.
  triggers = [("pre-training: 2 epochs",),
              ("pretrain epoch 1:", "pre-training: resuming at epoch 2"),
              ("finetune epoch 1:", "fine-tuning: resuming")]
  workdir = str(tmp_path / "run")
  # A copy of the reference run's compiled steps (the same model): the runs load them
  # instead of compiling. A copy, since a kill may leave an entry half-written.
  cache = str(tmp_path / "jax_cache")
  shutil.copytree(cli_runs.compilation_cache_of(tiny_reference_run), cache)
  outputs = []
  for trigger in triggers:
    delay = rng.uniform(0.0, 1.5)
    outputs.append(_kill_after(workdir, trigger, delay, cache))
    assert not os.path.exists(os.path.join(workdir, "results.json")), (trigger, delay)
    with capsys.disabled():
      print(f"\nkilled after {trigger[0]!r} + {delay:.2f}s")
  resumed = cli_runs.run(workdir, devices=4, compilation_cache=cache)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert sum("resuming" in out for out in outputs[1:] + [resumed.stdout]) >= 2
  assert _comparable(cli_runs.read_results(workdir)) == want
