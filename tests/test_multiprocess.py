"""Two processes on 127.0.0.1 compute what one process does (JAX's distributed runtime, CPU)."""

import subprocess

import numpy as np
import pytest

import cli_runs


@pytest.mark.slow
def test_two_processes_match_one(tmp_path, capsys, tiny_reference_run):
  """Also with the item table split over the 4 devices of the 2 processes: the replicated
  single-process run's numbers (the layouts are tested equal on one process elsewhere)."""
  one = tiny_reference_run

  two = str(tmp_path / "two")
  port = cli_runs.free_port()
  # Process 0 is configured by flags, process 1 by the environment. No compilation cache:
  # two processes writing one folder at once could read each other's half-written entries.
  by_flags = (f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=0")
  by_env = dict(cli_runs.env(2, None), S3REC_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                S3REC_NUM_PROCESSES="2", S3REC_PROCESS_ID="1")
  procs = [subprocess.Popen(
      cli_runs.command(two, {"model.item_table": "sharded"},
                       extra=extra + ("--distributed_timeout=60",)), env=process_env,
      cwd=cli_runs.REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for extra, process_env in ((by_flags, cli_runs.env(2, None)), ((), by_env))]
  try:
    outputs = [p.communicate(timeout=300) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  assert "devices: 4 x cpu (2 process(es))" in outputs[0][0]
  assert "item table: sharded" in outputs[0][0]
  # Only process 0 logs (the collectives library may print its own lines).
  assert "finetune epoch" in outputs[0][0] and "finetune epoch" not in outputs[1][0]

  log_one, log_two = cli_runs.read_log(one), cli_runs.read_log(two)
  pre_one = [r for r in log_one if r["phase"] == "pretrain"]
  pre_two = [r for r in log_two if r["phase"] == "pretrain"]
  assert len(pre_one) == len(pre_two) == 2
  for a, b in zip(pre_one, pre_two):
    for name in ("loss", "aap", "mip", "map", "sp"):
      np.testing.assert_allclose(a[name], b[name], rtol=1e-5, err_msg=name)
  fine_one = [r for r in log_one if r["phase"] == "finetune"]
  fine_two = [r for r in log_two if r["phase"] == "finetune"]
  np.testing.assert_allclose([r["loss"] for r in fine_one], [r["loss"] for r in fine_two], rtol=1e-5)
  res_one, res_two = cli_runs.read_results(one), cli_runs.read_results(two)
  for name, value in res_one["test"].items():
    assert res_two["test"][name] == pytest.approx(value, abs=1e-6), name
  steps = {w: sum(r["seconds"] for r in log if r["phase"] == "pretrain")
           for w, log in (("1 process", pre_one), ("2 processes", pre_two))}
  with capsys.disabled():
    print(f"\npre-training seconds for 2 epochs: {steps}")
