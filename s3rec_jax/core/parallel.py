"""Data parallelism over a 1-D device mesh: batch sharded on 'data', state replicated.

This is JAX's recommended replacement for `pmap`: `jax.jit` with
`NamedSharding`s lets XLA insert the collectives, so a sum in a loss is a sum
over the GLOBAL batch and 1, 2 or N devices compute the same function.
"""

from __future__ import annotations

import importlib.util
import math
import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from s3rec_jax.core import errors

DATA_AXIS = "data"


def initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                           process_id: int | None, *, auto: bool = False,
                           timeout_seconds: int = 300) -> None:
  """Starts JAX's multi-process runtime, before any other JAX call.

  With a coordinator address, every process passes the same address and
  process count and its own id. With `auto`, JAX detects the cluster itself
  (Cloud TPU pod slices, SLURM, Open MPI). Otherwise this is one process.
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise errors.UserError("--coordinator_address needs --num_processes and --process_id")
    if not 0 <= process_id < num_processes:
      raise errors.UserError(f"--process_id={process_id} must be in [0, {num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=timeout_seconds)
  elif auto:
    jax.distributed.initialize(initialization_timeout=timeout_seconds)


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over all devices of all processes (Auto axes)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_shards(mesh: Mesh) -> tuple[int, int, int]:
  """(number of data shards, first shard of this process, number of its shards).

  Shard i of a batch lives on the mesh's i-th device; a process owns the
  consecutive shards of its own devices.
  """
  devices = list(mesh.devices.flat)
  mine = [i for i, d in enumerate(devices) if d.process_index == jax.process_index()]
  if mine != list(range(mine[0], mine[0] + len(mine))):
    raise ValueError("this process's devices are not consecutive in the mesh")
  return len(devices), mine[0], len(mine)


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places a host batch on the mesh, split along its leading axis.

  Each process passes its own rows; on one process those are the global batch.
  """
  sharding = data_sharded(mesh)
  if jax.process_count() == 1:
    # The same placement; one call for the whole batch costs the host less.
    return jax.device_put(batch, sharding)
  # A batch may be a tuple of groups (finetune.trim_padding): every leaf alike.
  return jax.tree_util.tree_map(
      lambda v: jax.make_array_from_process_local_data(sharding, v), batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Copies a host (or single-device) pytree onto every device of the mesh, in any process."""
  return jax.device_put(jax.tree_util.tree_map(np.asarray, tree), replicated(mesh))


_HOST_DEVICE_FLAG = "--xla_force_host_platform_device_count="
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def cpu_device_count_flag() -> int | None:
  """The forced host device count from XLA_FLAGS, if any."""
  for part in os.environ.get("XLA_FLAGS", "").split():
    if part.startswith(_HOST_DEVICE_FLAG):
      return int(part.split("=", 1)[1])
  return None


def force_host_devices(count: int) -> None:
  """Splits the CPU into `count` XLA devices; only effective before JAX's backend starts."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(_HOST_DEVICE_FLAG)]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"{_HOST_DEVICE_FLAG}{count}"])


def force_host_devices_from_argv(argv, flag: str = "--devices") -> None:
  """For scripts: `flag N` (N > 0) splits the CPU into N devices; call before any JAX op."""
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(add_help=False)
  parser.add_argument(flag, type=int, default=0)
  count = getattr(parser.parse_known_args(argv)[0], flag.lstrip("-"))
  if count > 0:
    force_host_devices(count)


def has_accelerator_plugin() -> bool:
  return any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def auto_host_devices(batch_sizes, cores: int | None = None) -> int:
  """How many XLA devices to split a CPU-only host into: one per core.

  One device per core keeps every core busy on its own shard. More devices
  than cores (tried: 4 on 2 cores) add per-device fixed work and thread
  contention: on the 2-core development machine, three interleaved pairs of
  Beauty pre-training runs gave 2 devices 8-18% more sequences/s than 4 (see
  README). The choice is the largest count up to the number of cores that
  divides every global batch size.
  """
  cores = cores or os.cpu_count() or 1
  common = math.gcd(*[int(b) for b in batch_sizes])
  return max(d for d in range(1, cores + 1) if common % d == 0)


# Packed rows (of max_len tokens, per view) that one micro-batch of a CPU
# device step holds at most on average; see auto_micro_batches.
CPU_MICRO_BATCH_ROWS = 9


def auto_micro_batches(platform: str, rows_per_device: float) -> int:
  """Micro-batches per device step: at most ~CPU_MICRO_BATCH_ROWS rows each on a CPU host, else 1.

  On the 2-core development machine the time of a pre-training step grows
  far faster than its row count once a device holds more than about 10 rows
  per view (Beauty, 2 host devices: 8 rows 29 ms, 10 rows 35 ms, 12 rows
  68 ms, 16 rows 100 ms; `benchmarks/micro_batches.py --row_counts`), while
  one device alone grows about linearly: large working sets stop the two host
  devices from running in parallel. Where the jump sits moves with the load
  of the machine: before the step's GELU and optimiser update shrank, it was
  between 9 and 10 rows, and pieces of about 6 rows were fastest. Now Beauty
  (about 8 rows per device) runs fastest in one pass in most interleaved
  comparisons, and LastFM (about 22) runs as fast in 3 pieces as in 4.
  Accelerators want the largest pieces, so they get 1.
  """
  if platform != "cpu":
    return 1
  return max(1, math.ceil(rows_per_device / CPU_MICRO_BATCH_ROWS))


def bound_in_flight(dispatched: list) -> None:
  """Waits for the step before the newest one: at most two steps in flight.

  One queued step is enough to keep the devices busy while the host builds
  the next batch; a long queue of programs with collectives can stall
  XLA:CPU's host devices (seen as a rendezvous timeout that aborts the
  process).
  """
  if len(dispatched) >= 2:
    jax.block_until_ready(dispatched[-2])
