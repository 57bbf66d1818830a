"""Helpers for tests that run train.py in subprocesses (kill/resume, several processes)."""

import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A tiny synthetic run: every phase (pre-training with mid-epoch checkpoints,
# fine-tuning with early stopping, test) in well under a minute.
TINY = {
    "synthetic.kind": "markov", "compare_to_sasrec": False, "synthetic.num_users": 120,
    "synthetic.num_items": 60, "synthetic.num_attributes": 12,
    "sample.num_negatives": 20, "max_seq_length": 12, "model.hidden_size": 16,
    "model.num_layers": 1, "pretrain.epochs": 2, "pretrain.batch_size": 64,
    "pretrain.save_every_epochs": 1, "pretrain.checkpoint_every_steps": 5,
    "pretrain.log_every_steps": 5, "finetune.epochs": 4, "finetune.batch_size": 32,
    "finetune.patience": 2, "eval.batch_size": 64, "eval.chunk_size": 32,
}


def command(workdir: str, overrides: dict | None = None, extra: tuple = ()) -> list[str]:
  settings = dict(TINY, **(overrides or {}))
  return ([sys.executable, os.path.join(REPO, "train.py"), "--config=" +
           os.path.join(REPO, "configs", "synthetic.py"), f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in settings.items()] + list(extra))


INHERIT = "inherit"


def env(devices: int, compilation_cache: str | None = INHERIT) -> dict:
  """The environment of a train.py subprocess on `devices` CPU devices.

  compilation_cache: the folder of JAX's persistent compilation cache; INHERIT keeps the
  test process's (conftest.py's), None turns the cache off. Runs that write to one folder at
  the same time, or are killed while writing, need a folder of their own or none.
  """
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  if compilation_cache is None:
    e.pop("JAX_COMPILATION_CACHE_DIR", None)
  elif compilation_cache != INHERIT:
    e["JAX_COMPILATION_CACHE_DIR"] = compilation_cache
    e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  return e


def compilation_cache_of(reference_workdir: str) -> str:
  """The compilation cache kept beside conftest's tiny reference run."""
  return os.path.join(os.path.dirname(reference_workdir), "jax_cache")


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run(workdir: str, overrides: dict | None = None, devices: int = 4, timeout: int = 300,
        extra: tuple = (), compilation_cache: str | None = INHERIT
        ) -> subprocess.CompletedProcess:
  return subprocess.run(command(workdir, overrides, extra),
                        env=env(devices, compilation_cache), cwd=REPO,
                        capture_output=True, text=True, timeout=timeout)


def read_log(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "log.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]


def read_results(workdir: str) -> dict:
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)
