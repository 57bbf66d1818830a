"""Command-line plumbing shared by train.py and evaluate.py: flags and process start-up."""

import os

from absl import flags
from absl import logging
from ml_collections import config_flags

CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                         lock_config=True)
WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.json.")
flags.mark_flags_as_required(["config", "workdir"])

# Multi-process runs (one process per host) use JAX's own distributed runtime. Each
# setting can also come from the environment: S3REC_COORDINATOR_ADDRESS,
# S3REC_NUM_PROCESSES, S3REC_PROCESS_ID.
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "host:port of process 0, the same for every process.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")
_AUTO = flags.DEFINE_bool("distributed", False,
                          "Let JAX detect the cluster (Cloud TPU pod slices, SLURM, Open MPI).")
_TIMEOUT = flags.DEFINE_integer("distributed_timeout", 300,
                                "Seconds to wait for every process to join.")
_HOST_DEVICES = flags.DEFINE_integer(
    "host_devices", -1, "On a CPU-only host: split the CPU into this many XLA devices. "
    "-1 = choose (one per core: the largest count up to the cores dividing every batch size); 0 = leave "
    "XLA_FLAGS alone.")


def start() -> None:
  """Before any JAX op: quiet library logging, pick CPU host devices, join the distributed runtime."""
  # Orbax logs every file operation at INFO; keep the console to our own lines.
  logging.set_verbosity(logging.WARNING)
  from s3rec_jax import parallel  # pylint: disable=g-import-not-at-top
  config = CONFIG.value
  if parallel.cpu_device_count_flag() is None and not parallel.has_accelerator_plugin():
    count = _HOST_DEVICES.value
    if count < 0:
      count = parallel.auto_host_devices(
          (config.pretrain.batch_size, config.finetune.batch_size, config.eval.batch_size))
      print(f"CPU host: using {count} XLA host devices (--host_devices to change)", flush=True)
    if count > 0:
      parallel.force_host_devices(count)
  env = os.environ.get
  as_int = lambda v: None if v is None else int(v)
  parallel.initialize_distributed(
      _COORDINATOR.value or env("S3REC_COORDINATOR_ADDRESS"),
      _NUM_PROCESSES.value if _NUM_PROCESSES.value is not None else as_int(env("S3REC_NUM_PROCESSES")),
      _PROCESS_ID.value if _PROCESS_ID.value is not None else as_int(env("S3REC_PROCESS_ID")),
      auto=_AUTO.value, timeout_seconds=_TIMEOUT.value)
