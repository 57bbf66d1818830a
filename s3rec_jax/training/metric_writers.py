"""Where a run's metrics go: WORKDIR/log.jsonl and TensorBoard event files in WORKDIR/tensorboard.

A writer takes scalars (numbers by tag at a step, what TensorBoard draws) and
records (one structured JSON object of the run's log: phase, epoch, nested
metrics). Each writer keeps what its format can hold: `JsonlWriter` both (a
scalars call becomes a line with phase "scalars"), `TensorBoardWriter` the
scalars only. `MultiWriter` passes every call on to several writers, and
`create_default_writer` builds the pair train.py uses.

The tags train.py writes (TensorBoard and the "scalars" lines of log.jsonl):

  pretrain/<objective>, pretrain/loss   mean loss per sequence over the steps since the
                                        previous host sync (every log_every_steps steps);
                                        step = global pre-training step
  pretrain_epoch/<objective>, .../loss  the epoch's mean; step = global step at the epoch end
  pretrain/sequences_per_second         the epoch's throughput (same step)
  pretrain/epoch_seconds                the epoch's wall time (same step)
  finetune/loss                         mean training loss of the epoch; step = epoch (1, 2, ...)
  finetune/sequences_per_second         training throughput of the epoch (validation excluded)
  finetune/epoch_seconds                training wall time of the epoch
  valid/<metric>                        validation metrics after the epoch (HR@10, NDCG@20, ...)
  test/<metric>                         test metrics of the best state; step = its epoch

A resumed run appends to the same files: the steps it redoes (those after its
last checkpoint) appear twice, with the same values, since resuming is exact.
"""

from __future__ import annotations

import abc
import json
import os
import uuid
from typing import Any, Iterable, Mapping

from etils import epath

from s3rec_jax.core import paths

LOG_FILE = "log.jsonl"
TENSORBOARD_DIR = "tensorboard"
SCALARS_PHASE = "scalars"   # the `phase` of log.jsonl lines that hold write_scalars calls
# TensorBoard events reach the file at most this many seconds after they are
# written, so a killed run loses only its last few points.
TENSORBOARD_FLUSH_SECONDS = 2


class MetricWriter(abc.ABC):
  """Writes scalars and records somewhere; usable as a context manager that closes it."""

  @abc.abstractmethod
  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Writes numbers by tag at one step.

    Args:
      step: The x-axis value (a global step or an epoch number).
      scalars: Tag -> value; anything `float()` accepts (Python, numpy or JAX scalars).
    """

  def write_record(self, record: Mapping[str, Any]) -> None:
    """Writes one structured record of the run's log; formats without a place for one ignore it.

    Args:
      record: A JSON-serialisable mapping (numpy float64 values are fine).
    """
    del record

  def flush(self) -> None:
    """Pushes what was written so far towards the disk."""

  def close(self) -> None:
    """Flushes and releases the writer's files; it takes no writes afterwards."""
    self.flush()

  def __enter__(self) -> MetricWriter:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


class JsonlWriter(MetricWriter):
  """Appends one JSON object per line to a file.

  The file is opened for each line (writes are rare: one per host sync or
  epoch), so every complete line survives a killed process and other writers
  may append to the same file in between.
  """

  def __init__(self, path: str):
    self.path = path

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    self.write_record({"phase": SCALARS_PHASE, "step": int(step),
                       "scalars": {tag: float(value) for tag, value in scalars.items()}})

  def write_record(self, record: Mapping[str, Any]) -> None:
    line = json.dumps(dict(record)) + "\n"
    if paths.is_url(self.path):   # object stores do not append: the object is written anew
      target = epath.Path(self.path)
      target.write_text((target.read_text() if target.exists() else "") + line)
      return
    with open(self.path, "a") as f:
      f.write(line)


class TensorBoardWriter(MetricWriter):
  """Writes scalars to a TensorBoard event file in `logdir` (tensorboardX, no TensorFlow).

  Tags are kept as given: tensorboardX's SummaryWriter would turn
  "valid/HR@10" into "valid/HR_10", so the summaries are built here and
  handed to its FileWriter. The event file is created on the first write, so
  a phase that writes nothing (e.g. a resumed run whose pre-training had
  finished) leaves no empty file. Every writer gets a file of its own:
  tensorboardX names files by the second and opens them for writing, so two
  writers started within one second would otherwise overwrite each other.
  """

  def __init__(self, logdir: str):
    self.logdir = logdir
    self._file_writer = None
    self._closed = False

  def _writer(self):
    if self._closed:
      raise ValueError(f"TensorBoardWriter for {self.logdir} is closed")
    if self._file_writer is None:
      # Imported here: it takes a fifth of a second, and most users of this module never need it.
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._file_writer = tensorboardX.FileWriter(
          self.logdir, flush_secs=TENSORBOARD_FLUSH_SECONDS,
          filename_suffix=f".{os.getpid()}.{uuid.uuid4().hex[:8]}")
    return self._file_writer

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    writer = self._writer()
    from tensorboardX.proto import summary_pb2  # pylint: disable=g-import-not-at-top
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, simple_value=float(value))
        for tag, value in scalars.items()])
    writer.add_summary(summary, global_step=int(step))

  def flush(self) -> None:
    if self._file_writer is not None:
      self._file_writer.flush()

  def close(self) -> None:
    if self._file_writer is not None:
      self._file_writer.close()  # drains the queue of events, then closes the file
      self._file_writer = None
    self._closed = True


class MultiWriter(MetricWriter):
  """Passes every call on to each of `writers`, in order; with none, it is a no-op writer."""

  def __init__(self, writers: Iterable[MetricWriter]):
    self.writers = tuple(writers)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    for writer in self.writers:
      writer.write_scalars(step, scalars)

  def write_record(self, record: Mapping[str, Any]) -> None:
    for writer in self.writers:
      writer.write_record(record)

  def flush(self) -> None:
    for writer in self.writers:
      writer.flush()

  def close(self) -> None:
    # Every writer gets closed even when one fails (e.g. a full disk), so the
    # others still keep their last points; the first failure is raised.
    failure = None
    for writer in self.writers:
      try:
        writer.close()
      except Exception as e:  # pylint: disable=broad-except
        failure = failure or e
    if failure is not None:
      raise failure


def create_default_writer(workdir: str, *, enabled: bool) -> MetricWriter:
  """WORKDIR/log.jsonl and WORKDIR/tensorboard/ together; a no-op writer unless `enabled`.

  Args:
    workdir: The run's folder (must exist).
    enabled: Whether this process writes; train.py passes True on process 0 only.
  """
  if not enabled:
    return MultiWriter([])
  if paths.is_url(workdir):   # TensorBoard event files are written to local workdirs only
    return MultiWriter([JsonlWriter(paths.join(workdir, LOG_FILE))])
  return MultiWriter([JsonlWriter(os.path.join(workdir, LOG_FILE)),
                      TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR))])
