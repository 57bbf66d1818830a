"""Seeded, vectorised numpy batches for pre-training, fine-tuning and evaluation.

Every random draw comes from a numpy Generator derived from
(seed, stream, epoch[, step]), so a batch is a pure function of those numbers:
runs are reproducible and a resumed run sees exactly the batches it would have
seen. The last partial batch of an epoch is padded with all-zero rows whose
`weights` entry is 0, so every step has the same static shape.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Iterator

import numpy as np

from s3rec_jax import data as data_lib

# Distinct stream ids keep the draws of different consumers independent.
STREAM_PRETRAIN_ORDER = 1
STREAM_PRETRAIN_BATCH = 2
STREAM_FINETUNE_ORDER = 3
STREAM_FINETUNE_BATCH = 4

Batch = dict[str, np.ndarray]


def rng_for(seed: int, stream: int, *counters: int) -> np.random.Generator:
  return np.random.default_rng([seed, stream, *counters])


def num_batches(num_examples: int, batch_size: int) -> int:
  return -(-num_examples // batch_size)


def _pad_rows(indices: np.ndarray, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices padded to batch_size with -1, and 1/0 row weights."""
  weights = np.zeros(batch_size, np.float32)
  weights[:len(indices)] = 1.0
  padded = np.full(batch_size, -1, np.int64)
  padded[:len(indices)] = indices
  return padded, weights


def sample_excluding(rng: np.random.Generator, low: int, high: int, shape, need: np.ndarray,
                     is_excluded) -> np.ndarray:
  """Uniform ints in [low, high] where `need`, redrawn until `is_excluded(draws)` is False there.

  Rejection keeps the draw uniform over the allowed set; 0 where not needed.
  """
  draws = rng.integers(low, high + 1, size=shape)
  todo = need & is_excluded(draws)
  for _ in range(1000):
    if not todo.any():
      return np.where(need, draws, 0)
    draws[todo] = rng.integers(low, high + 1, size=int(todo.sum()))
    todo = need & is_excluded(draws)
  raise RuntimeError("negative sampling did not converge: is every item excluded for some row?")


# --- pre-training ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
  batch_size: int
  max_len: int
  mask_p: float
  negative_high: int   # negatives are drawn from 1..negative_high


class PretrainBatches:
  """The reference's pre-training batches, drawn afresh every epoch."""

  def __init__(self, dataset: data_lib.Dataset, settings: PretrainSettings, seed: int):
    self.dataset = dataset
    self.settings = settings
    self.seed = seed
    self.starts, self.ends = data_lib.pretrain_prefixes(dataset, settings.max_len)

  @property
  def num_sequences(self) -> int:
    return len(self.starts)

  @property
  def steps_per_epoch(self) -> int:
    return num_batches(self.num_sequences, self.settings.batch_size)

  def order(self, epoch: int) -> np.ndarray:
    return rng_for(self.seed, STREAM_PRETRAIN_ORDER, epoch).permutation(self.num_sequences)

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    order = self.order(epoch)
    bs = self.settings.batch_size
    for step in range(start_step, self.steps_per_epoch):
      yield self.batch(order[step * bs:(step + 1) * bs], rng_for(self.seed, STREAM_PRETRAIN_BATCH, epoch, step))

  def batch(self, prefix_ids: np.ndarray, rng: np.random.Generator) -> Batch:
    s, ds = self.settings, self.dataset
    rows, weights = _pad_rows(prefix_ids, s.batch_size)
    real_row = rows >= 0
    starts = np.where(real_row, self.starts[np.maximum(rows, 0)], 0)
    ends = np.where(real_row, self.ends[np.maximum(rows, 0)], 0)
    lengths = ends - starts                                           # [B]
    items = data_lib.left_pad(ds.offsets, ds.items, starts, ends, s.max_len)  # [B, L]
    col = np.arange(s.max_len)[None, :]
    first = s.max_len - lengths[:, None]                              # column of t[0]
    real = col >= first
    mask_id = ds.mask_id

    # Masked item prediction: each item but the last masked with p; the last always.
    is_last = real & (col == s.max_len - 1)
    masked = (real & (rng.random(items.shape) < s.mask_p)) | is_last
    masked_items = np.where(masked, mask_id, items)
    negative_items = sample_excluding(
        rng, 1, s.negative_high, items.shape, masked,
        lambda draws: (draws[:, :, None] == items[:, None, :]).any(-1))

    # Segment prediction: span length k ~ U{1..n//2}, start ~ U{0..n-k}, and a
    # negative span of the same length from the concatenation of all sequences.
    has_span = lengths >= 2
    span = rng.integers(1, np.maximum(lengths // 2, 1) + 1)
    span_start = rng.integers(0, np.maximum(lengths - span, 0) + 1)
    neg_start = rng.integers(0, len(ds.items) - span + 1)
    pos_in_t = col - first
    in_span = real & (pos_in_t >= span_start[:, None]) & (pos_in_t < (span_start + span)[:, None])
    neg_index = np.clip(neg_start[:, None] + pos_in_t - span_start[:, None], 0, len(ds.items) - 1)
    outside = np.where(real, mask_id, 0)
    context = np.where(in_span, mask_id, items)
    positive = np.where(in_span, items, outside)
    negative = np.where(in_span, ds.items[neg_index], outside)
    # Sequences shorter than 2 use the sequence itself for all three views.
    keep = ~has_span[:, None]
    context, positive, negative = (np.where(keep, items, v) for v in (context, positive, negative))

    as_ids = lambda a: a.astype(np.int32)
    return {
        "items": as_ids(items),
        "masked_items": as_ids(masked_items),
        "negative_items": as_ids(negative_items),
        "segment_context": as_ids(context),
        "segment_positive": as_ids(positive),
        "segment_negative": as_ids(negative),
        "weights": weights,
    }


# --- fine-tuning -------------------------------------------------------------


class FinetuneBatches:
  """Next-item training batches: one negative per target position, outside the user's sequence."""

  def __init__(self, dataset: data_lib.Dataset, splits: dict, batch_size: int,
               negative_high: int, seed: int):
    self.dataset = dataset
    self.inputs = splits["train_inputs"]
    self.targets = splits["train_targets"]
    self.batch_size = batch_size
    self.negative_high = negative_high
    self.seed = seed
    # Sorted (user, item) keys answer "is item in user u's sequence" with one searchsorted.
    users = np.repeat(np.arange(dataset.num_users), np.diff(dataset.offsets))
    self._stride = dataset.item_size + 1
    self._keys = np.unique(users * self._stride + dataset.items.astype(np.int64))

  @property
  def steps_per_epoch(self) -> int:
    return num_batches(len(self.inputs), self.batch_size)

  def in_sequence(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    query = users * self._stride + items
    pos = np.minimum(np.searchsorted(self._keys, query), len(self._keys) - 1)
    return self._keys[pos] == query

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    order = rng_for(self.seed, STREAM_FINETUNE_ORDER, epoch).permutation(len(self.inputs))
    bs = self.batch_size
    for step in range(start_step, self.steps_per_epoch):
      yield self.batch(order[step * bs:(step + 1) * bs], rng_for(self.seed, STREAM_FINETUNE_BATCH, epoch, step))

  def batch(self, users: np.ndarray, rng: np.random.Generator) -> Batch:
    rows, weights = _pad_rows(users, self.batch_size)
    real_row = rows >= 0
    safe = np.maximum(rows, 0)
    inputs = np.where(real_row[:, None], self.inputs[safe], 0)
    targets = np.where(real_row[:, None], self.targets[safe], 0)
    negatives = sample_excluding(
        rng, 1, self.negative_high, targets.shape, targets > 0,
        lambda draws: self.in_sequence(safe[:, None], draws))
    return {"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32),
            "negatives": negatives.astype(np.int32), "weights": weights}


# --- evaluation --------------------------------------------------------------


def eval_batches(dataset: data_lib.Dataset, splits: dict, split: str, protocol: str,
                 batch_size: int) -> Iterator[Batch]:
  """Users in file order; `candidates` (answer first) for sampled, `history` for full ranking."""
  inputs, answers = splits[f"{split}_inputs"], splits[f"{split}_answers"]
  history = splits[f"{split}_history"]
  if protocol == "sampled" and dataset.sample_negatives is None:
    raise ValueError("the sampled protocol needs sample negatives, but the dataset has none")
  for start in range(0, len(inputs), batch_size):
    rows, weights = _pad_rows(np.arange(start, min(start + batch_size, len(inputs))), batch_size)
    real_row = rows >= 0
    safe = np.maximum(rows, 0)
    batch = {"inputs": np.where(real_row[:, None], inputs[safe], 0).astype(np.int32),
             "answers": np.where(real_row, answers[safe], 1).astype(np.int32),
             "weights": weights}
    if protocol == "sampled":
      batch["candidates"] = np.concatenate(
          [batch["answers"][:, None], dataset.sample_negatives[safe]], axis=1).astype(np.int32)
    else:
      batch["history"] = np.where(real_row[:, None], history[safe], 0).astype(np.int32)
    yield batch


def prefetch(iterator: Iterator, size: int = 2) -> Iterator:
  """Builds the next `size` items on a background thread while the device works."""
  q: queue.Queue = queue.Queue(maxsize=size)
  done = object()

  def produce():
    try:
      for item in iterator:
        q.put(item)
    except BaseException as e:  # surfaced in the consumer
      q.put(e)
    q.put(done)

  threading.Thread(target=produce, daemon=True).start()
  while True:
    item = q.get()
    if item is done:
      return
    if isinstance(item, BaseException):
      raise item
    yield item
