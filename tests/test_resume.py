"""kill -9 at random moments, rerun the same command: results.json equals an uninterrupted run's."""

import os
import random
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


def _kill_after(workdir: str, trigger: str, delay: float) -> str:
  """Starts a run, waits for `trigger` on its output plus `delay` seconds, kills it with SIGKILL."""
  proc = subprocess.Popen(cli_runs.command(workdir), env=cli_runs.env(4), cwd=cli_runs.REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  seen = []
  try:
    deadline = time.time() + 240
    for line in proc.stdout:
      seen.append(line)
      if trigger in line:
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
  # Kill points: inside pre-training epoch 1 (between mid-epoch checkpoints), inside epoch 2,
  # inside fine-tuning; each after a random extra delay.
  triggers = ["pre-training: 2 epochs", "pretrain epoch 1:", "finetune epoch 1:"]
  for i, trigger in enumerate(triggers):
    workdir = str(tmp_path / f"run{i}")
    delay = rng.uniform(0.0, 1.5)
    _kill_after(workdir, trigger, delay)
    assert not os.path.exists(os.path.join(workdir, "results.json"))
    resumed = cli_runs.run(workdir, devices=4)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resum" in resumed.stdout, resumed.stdout[-2000:]
    got = _comparable(cli_runs.read_results(workdir))
    assert got == want, f"kill after {trigger!r} + {delay:.2f}s"
    with capsys.disabled():
      print(f"\nkilled after {trigger!r} + {delay:.2f}s: resumed to identical results")
