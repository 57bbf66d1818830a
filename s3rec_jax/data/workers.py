"""Batches built ahead by worker processes (grain), in step order, the same whatever their number.

A builder's `batch_at(epoch, step)` is a pure function of its arguments (every draw is keyed,
see keyed_random), so grain's index-to-element MapDataset over the steps of an epoch, prefetched
by N worker processes, yields exactly the batches one process would build. With 0 workers the
batches are built in this process (one step ahead on a thread, see input_pipeline.prefetch).
"""

from __future__ import annotations

import functools
import os
from typing import Iterator

import numpy as np


def auto_workers(platform: str, cpus: int | None = None) -> int:
  """The default count: the cores a process can spare. On CPU devices XLA uses every core
  for the steps, so 0; on accelerators the host's cores but one, at most 8."""
  cpus = os.cpu_count() or 1 if cpus is None else cpus
  return 0 if platform == "cpu" else max(0, min(8, cpus - 1))


def _build(builder, epoch: int, step: int) -> dict[str, np.ndarray]:
  return builder.batch_at(epoch, int(step))


def _parsed_flags() -> None:
  # grain reads its own absl flags; a library caller (tests, notebooks) may not have parsed any.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def epoch_batches(builder, epoch: int, first_step: int, workers: int,
                  buffer_per_worker: int = 2) -> Iterator[dict[str, np.ndarray]]:
  """The epoch's batches from `first_step` on, in order, built by `workers` processes."""
  steps = builder.steps_per_epoch
  if workers <= 0:
    yield from (builder.batch_at(epoch, step) for step in range(first_step, steps))
    return
  import grain  # pylint: disable=g-import-not-at-top
  _parsed_flags()
  dataset = grain.MapDataset.range(first_step, steps).map(
      functools.partial(_build, builder, epoch))
  iterator = dataset.to_iter_dataset(
      grain.ReadOptions(num_threads=1, prefetch_buffer_size=buffer_per_worker)).mp_prefetch(
          grain.MultiprocessingOptions(num_workers=workers,
                                       per_worker_buffer_size=buffer_per_worker))
  yield from iterator
