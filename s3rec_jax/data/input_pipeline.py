"""Seeded, vectorised numpy batches for pre-training, fine-tuning and evaluation.

Every random draw comes from a numpy Generator derived from
(seed, stream, epoch[, step]), so a batch is a pure function of those numbers:
runs are reproducible and a resumed run sees exactly the batches it would have
seen. The last partial batch of an epoch is padded with empty sequences whose
`weights` entry is 0, so every batch has the same number of sequences; packed
batches take a row count from a short ladder (`row_bucket`), so a run compiles
its step for a handful of shapes only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import queue
import threading
from typing import Iterator

import numpy as np

from s3rec_jax.data import dataset as data_lib
from s3rec_jax.data import keyed_random
from s3rec_jax.data import prefix_widths
from s3rec_jax.data import workers as workers_lib

# Distinct stream ids keep the draws of different consumers independent.
STREAM_PRETRAIN_ORDER = 1
STREAM_PRETRAIN_BATCH = 2
STREAM_FINETUNE_ORDER = 3
STREAM_FINETUNE_BATCH = 4

Batch = dict[str, np.ndarray]

# Training batches are packed on epoch 0's most rows plus this share (at least a row): other
# epochs' batches, drawn in another order, rarely need more (see Packer.fixed_rows).
TRAIN_ROWS_MARGIN = 0.05
# ... planned on at most this many of epoch 0's batches, evenly spaced: an epoch of a large
# dataset has hundreds of thousands, and a batch that needs more rows than the count takes
# the next rung of the ladder (one more compile), so a sample bounds the start-up cost.
PLANNED_BATCHES = 512


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


def keyed_excluding(base: np.uint64, low: int, high: int, sequence: np.ndarray, column: np.ndarray,
                    need: np.ndarray, is_excluded) -> np.ndarray:
  """Keyed uniform ints in [low, high] where `need` (by the broadcast sequence and column
  counters), drawn again with the next draw number where `is_excluded(draws)`; 0 elsewhere.

  Rejection keeps the draw uniform over the allowed set; a draw depends only on its key.
  """
  sequence, column = np.broadcast_arrays(sequence, column)
  draws = keyed_random.integers(base, low, high, sequence, column, 1)
  todo = need & is_excluded(draws)
  for attempt in range(2, 1002):
    if not todo.any():
      return np.where(need, draws, 0)
    draws[todo] = keyed_random.integers(base, low, high, sequence[todo], column[todo], attempt)
    todo = need & is_excluded(draws)
  raise RuntimeError("negative sampling did not converge: is every item excluded for some row?")


# --- packing -----------------------------------------------------------------


def _first_fit_decreasing(lengths: np.ndarray, max_len: int
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
  """First-fit decreasing, one length at a time: (row, first column, slot) of each sequence
  (row -1 for empty ones) and the rows used.

  The same layout as placing the sequences one by one, longest first (ties in index order),
  each in the lowest row with room for it: sequences of one length s fill the rows in order,
  row r taking floor(room_r / s) of them, then new rows. Each of the at most max_len
  distinct lengths costs a few vector operations over the rows, so a batch costs time
  linear in its sequences, not quadratic.
  """
  n = len(lengths)
  row = np.full(n, -1, np.int64)
  first = np.zeros(n, np.int64)
  slot = np.zeros(n, np.int64)
  room = np.zeros(0, np.int64)     # room left in each row
  count = np.zeros(0, np.int64)    # sequences in each row
  order = np.argsort(-lengths, kind="stable")
  sizes = lengths[order]
  real = int(np.count_nonzero(sizes > 0))
  bounds = np.flatnonzero(np.diff(sizes[:real])) + 1
  for group in np.split(order[:real], bounds) if real else ():
    size = int(lengths[group[0]])
    takes = np.where(room >= size, room // size, 0)              # per existing row
    placed_before = np.cumsum(takes) - takes
    fits = int(takes.sum())
    if fits < len(group):                                         # new rows, each full of s
      per_row = max_len // size
      extra = -(-(len(group) - fits) // per_row)
      room = np.concatenate([room, np.full(extra, max_len, np.int64)])
      count = np.concatenate([count, np.zeros(extra, np.int64)])
      takes = np.concatenate([takes, np.full(extra, per_row, np.int64)])
      placed_before = np.cumsum(takes) - takes
    k = np.arange(len(group))                                     # k-th of the group
    r = np.searchsorted(placed_before + takes, k, side="right")    # its row
    within = k - placed_before[r]                                 # its place among the row's new
    row[group] = r
    slot[group] = count[r] + within
    first[group] = max_len - room[r] + within * size
    used = np.bincount(r, minlength=len(room))
    room = room - used * size
    count = count + used
  return row, first, slot, len(room)


@dataclasses.dataclass(frozen=True)
class Shards:
  """A global batch is split into `count` equal shards, one per device of the
  mesh; this process builds shards first_local .. first_local + num_local - 1.

  With `micro_batches` M > 1 each shard is split further into M equal
  micro-batches, each packed on its own rows (see `Packer.pack_shards`), so
  that a step can run them one after another (see train_steps).
  """
  count: int = 1
  first_local: int = 0
  num_local: int = 1
  micro_batches: int = 1

  def __post_init__(self):
    if self.micro_batches < 1:
      raise ValueError(f"micro_batches must be >= 1, got {self.micro_batches}")


def row_bucket(rows: int) -> int:
  """`rows` rounded up to the ladder 1..8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...

  Packed batches need a varying number of rows; rounding to quarter steps
  between powers of two keeps the number of distinct shapes (one compiled
  step each) to a handful while padding at most a fifth of the rows.
  """
  rows = max(int(rows), 1)
  if rows <= 8:
    return rows
  step = 1 << (rows.bit_length() - 3)           # a quarter of the power of two below rows
  return -(-rows // step) * step


@dataclasses.dataclass(frozen=True)
class PackPlan:
  """A global batch's layout (Packer.plan): the lengths (completed with empty sequences to a
  multiple of the pieces), each piece's sequence indices and packed layout, the row count."""
  lengths: np.ndarray
  members: list
  layouts: list
  num_rows: int


@dataclasses.dataclass(frozen=True)
class Packer:
  """Lays sequences out in rows of max_len tokens, several short ones per row.

  Sequences are placed first-fit in order of decreasing length (a row takes
  a sequence while it has room for it), which fills rows almost completely.
  Every token keeps its absolute position (the newest item at max_len - 1)
  and a segment id that keeps the sequences of a row from attending to each
  other, so a packed batch computes exactly what the padded one does with far
  fewer rows. The row count of a batch is the rows its layout needs, rounded
  up by `row_bucket` (see `pack_shards`).
  `pack=False` gives the reference's layout: one left-padded sequence per row.
  """
  max_len: int
  pack: bool = True

  @staticmethod
  def shard_assignment(lengths: np.ndarray, num_shards: int) -> np.ndarray:
    """Sequence indices in shard order: shard s holds entries s*per .. (s+1)*per - 1.

    Longest first, dealt to the shards in a snake (0..S-1, S-1..0, ...), so
    every shard gets a similar number of tokens and the per-shard row count
    (the maximum over shards) stays close to the average. Works on [..., B].
    """
    batch = lengths.shape[-1]
    per = batch // num_shards
    by_length = np.argsort(-lengths, axis=-1, kind="stable")
    rank = np.arange(batch)
    rnd, pos = rank // num_shards, rank % num_shards
    shard = np.where(rnd % 2 == 0, pos, num_shards - 1 - pos)
    slot = shard * per + rnd                                # where the rank-th longest goes
    order = np.empty_like(by_length)
    np.put_along_axis(order, np.broadcast_to(slot, by_length.shape), by_length, axis=-1)
    return order

  def layout(self, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(row, first column, index within its row) of each sequence (row -1 for empty
    ones), and the number of rows used."""
    n = len(lengths)
    if not self.pack:
      return (np.where(lengths > 0, np.arange(n), -1), self.max_len - lengths,
              np.zeros(n, np.int64), n)
    return _first_fit_decreasing(np.asarray(lengths, np.int64), self.max_len)

  def plan(self, lengths: np.ndarray, shards: "Shards", num_rows: int | None = None
           ) -> "PackPlan":
    """Where each sequence of a global batch goes: its piece (device, micro-batch) and its
    place in the piece's rows. Needs only the lengths, so every process plans the whole
    batch alike (and agrees on the row count) and then builds only its own pieces.

    The B sequences are split into `shards.count * shards.micro_batches` equal pieces
    (balanced by token count when packing; completed with empty sequences when they do not
    divide B); each is packed into the same number of rows: `num_rows` if given and enough,
    else the most any piece needs, rounded up by `row_bucket`.
    """
    pieces = shards.count * shards.micro_batches
    per = -(-len(lengths) // pieces)
    lengths = np.concatenate([lengths, np.zeros(per * pieces - len(lengths), lengths.dtype)])
    members, layouts = self._pieces(lengths, pieces)
    needed = max(used for *_, used in layouts)
    if num_rows is None or needed > num_rows:
      # A fixed row count too small for this batch (rare): the next rung of the ladder.
      num_rows = row_bucket(needed) if self.pack else per
    return PackPlan(lengths, members, layouts, num_rows)

  def pack_local(self, plan: "PackPlan", shards: "Shards", build) -> Batch:
    """This process's pieces of a planned batch, one after another.

    `build(indices)` returns the arrays of those sequences of the global batch (indices
    past the batch are empty padding sequences): ({name: [S, max_len] left-padded tokens},
    {name: [S, ...] per-sequence values}). Only the local pieces' sequences are built.
    """
    parts = []
    first = shards.first_local * shards.micro_batches
    for piece in range(first, first + shards.num_local * shards.micro_batches):
      m = plan.members[piece]
      token_arrays, sequence_arrays = build(m)
      part = self.apply(plan.lengths[m], token_arrays, plan.num_rows, sequence_ids=m,
                        layout=plan.layouts[piece])
      part.update(sequence_arrays)
      parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def pack_shards(self, lengths: np.ndarray, token_arrays: dict[str, np.ndarray],
                  sequence_arrays: dict[str, np.ndarray], shards: "Shards",
                  num_rows: int | None = None) -> Batch:
    """Packs this process's shards of a global batch, each shard on its own rows.

    The B sequences of the global batch are split into `shards.count` equal
    shards (one per device; balanced by token count when packing); each is
    packed into the same number of rows: `num_rows` if given, else the most
    any shard needs rounded up by `row_bucket` (every process computes it
    from the whole batch's lengths, so all agree). `last_index` indexes the
    shard's own tokens, so a device never needs another device's rows.
    Per-sequence arrays follow their sequences; token ids stay those of the
    global batch.

    With `shards.micro_batches` M > 1 the batch is split the same way into
    count * M pieces (piece d * M + m is micro-batch m of device d), each
    packed on `num_rows` rows of its own; a device's rows and sequences are
    then its M pieces one after another. When count * M does not divide B,
    the batch is completed with empty sequences (no tokens, weight 0), which
    change no loss.
    """
    plan = self.plan(lengths, shards, num_rows)
    missing = len(plan.lengths) - len(lengths)

    def padded(v):
      return np.concatenate([v, np.zeros((missing,) + v.shape[1:], v.dtype)]) if missing else v

    token_arrays = {k: padded(v) for k, v in token_arrays.items()}
    sequence_arrays = {k: padded(v) for k, v in sequence_arrays.items()}
    return self.pack_local(plan, shards, lambda m: ({k: v[m] for k, v in token_arrays.items()},
                                                    {k: v[m] for k, v in sequence_arrays.items()}))

  def _pieces(self, lengths: np.ndarray, pieces: int) -> tuple[list, list]:
    """Each piece's sequence indices and packed layout."""
    per = len(lengths) // pieces
    order = (self.shard_assignment(lengths, pieces) if self.pack and pieces > 1
             else np.arange(len(lengths)))
    members = [order[s * per:(s + 1) * per] for s in range(pieces)]
    return members, [self.layout(lengths[m]) for m in members]

  def rows_needed(self, lengths: np.ndarray, shards: "Shards") -> int:
    """The rows per piece that `pack_shards` needs for a global batch of these lengths."""
    pieces = shards.count * shards.micro_batches
    per = -(-len(lengths) // pieces)
    lengths = np.concatenate([lengths, np.zeros(per * pieces - len(lengths), np.int64)])
    if not self.pack:
      return per
    return max(used for *_, used in self._pieces(lengths, pieces)[1])

  def fixed_rows(self, batches_lengths: Iterator[np.ndarray], shards: "Shards",
                 margin: float = 0.0) -> int:
    """One row count for every batch: the ladder rung of the most any of these batches
    (e.g. a whole epoch's) needs, plus `margin` (a share, at least one row when > 0) for
    batches not among them. A step compiled for it serves them all, the last partial batch
    included; a batch that needs more (rare) takes the next rung, compiling once more."""
    most = max((self.rows_needed(l, shards) for l in batches_lengths), default=1)
    if not self.pack:
      return most
    return row_bucket(most + (max(1, math.ceil(margin * most)) if margin > 0 else 0))

  def apply(self, lengths: np.ndarray, arrays: dict[str, np.ndarray], num_rows: int,
            sequence_ids: np.ndarray | None = None, layout=None) -> Batch:
    """Packs left-padded [S, max_len] arrays into [num_rows, max_len] ones.

    Adds segment_ids and positions (per token), token_ids (sequence index in
    the global batch * max_len + position: what dropout keys on, so it does
    not depend on the layout), last_index (each sequence's newest token in the flattened
    [num_rows * max_len] layout; 0 for an empty sequence) and lengths (tokens
    per sequence).
    """
    L = self.max_len
    row, first, slot, used = self.layout(lengths) if layout is None else layout
    if used > num_rows:
      raise ValueError(f"packing needs {used} rows but the batch has {num_rows}")
    seq = np.repeat(np.arange(len(lengths)), lengths)                   # one entry per real token
    step = np.arange(len(seq)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    src_col = L - lengths[seq] + step                                  # column in the padded array
    dst = row[seq] * L + first[seq] + step                             # flat packed index
    out = {}
    for name, value in arrays.items():
      packed = np.zeros(num_rows * L, value.dtype)
      packed[dst] = value[seq, src_col]
      out[name] = packed.reshape(num_rows, L)
    segment = np.zeros(num_rows * L, np.int32)
    segment[dst] = slot[seq] + 1
    positions = np.zeros(num_rows * L, np.int32)
    if not self.pack:   # one sequence per row: padding keeps its column too (filters see it)
      positions = np.tile(np.arange(L, dtype=np.int32), num_rows)
    positions[dst] = src_col
    token_ids = np.zeros(num_rows * L, np.int32)
    ids = np.arange(len(lengths)) if sequence_ids is None else np.asarray(sequence_ids)
    token_ids[dst] = ids[seq] * L + src_col
    out["segment_ids"] = segment.reshape(num_rows, L)
    out["positions"] = positions.reshape(num_rows, L)
    out["token_ids"] = token_ids.reshape(num_rows, L)
    out["last_index"] = np.where(lengths > 0, row * L + first + lengths - 1, 0).astype(np.int32)
    out["lengths"] = np.asarray(lengths, np.int32)   # tokens per sequence (0: none, e.g. padding)
    return out


def _planned(packer: Packer, shards: Shards, ids: np.ndarray, lengths: np.ndarray,
             batch_size: int, num_rows: int | None
             ) -> tuple[PackPlan, np.ndarray, np.ndarray]:
  """The plan of a batch of these sequences (dataset indices), and their indices and weights
  completed with empty sequences (-1, weight 0) to the plan's pieces."""
  rows, weights = _pad_rows(ids, batch_size)
  plan = packer.plan(np.where(rows >= 0, lengths[np.maximum(rows, 0)], 0), shards, num_rows)
  pad = len(plan.lengths) - len(rows)
  return (plan, np.concatenate([rows, np.full(pad, -1, rows.dtype)]),
          np.concatenate([weights, np.zeros(pad, weights.dtype)]))


def _batch_lengths(lengths, order: np.ndarray, batch_size: int,
                   most: int | None = None) -> Iterator[np.ndarray]:
  """The sequence lengths of each batch of an epoch in `order` (the last one padded); with
  `most`, of at most that many batches, evenly spaced, the last one always among them."""
  count = num_batches(len(order), batch_size)
  steps = range(count)
  if most is not None and count > most:
    steps = np.unique(np.linspace(0, count - 1, most).round().astype(np.int64))
  for step in steps:
    part = np.asarray(lengths[order[step * batch_size:(step + 1) * batch_size]])
    yield np.concatenate([part, np.zeros(batch_size - len(part), part.dtype)])


# --- pre-training ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
  batch_size: int
  max_len: int
  mask_p: float
  negative_high: int        # negatives are drawn from 1..negative_high
  pack: bool = True         # several short sequences per row (same math, fewer rows)
  # Same-layout SP negatives per sequence: `segment_negative`, then
  # `segment_negative_2` .. (drawn after every other view, so the others do not change).
  segment_negatives: int = 1


class _Lookup:
  """`lookup[ids]` calls `function(ids)`: per-sequence values found when asked for."""

  def __init__(self, function):
    self.function = function

  def __getitem__(self, ids):
    return self.function(ids)


class PretrainBatches:
  """The reference's pre-training batches, drawn afresh every epoch.

  A batch holds four views of each sequence (the masked sequence and the
  three segment-prediction sequences) laid out identically by the packer,
  plus the original items and one negative per masked position.
  """

  # Worker processes that build the batches ahead (0: this process; see data/workers.py).
  workers = 0

  def __init__(self, dataset: data_lib.Dataset, settings: PretrainSettings, seed: int,
               shards: Shards = Shards()):
    self.dataset = dataset
    self.settings = settings
    self.seed = seed
    self.shards = shards
    self.packer = Packer(settings.max_len, settings.pack)
    self.prefixes = data_lib.PrefixRanges(dataset, settings.max_len)
    self.lengths = _Lookup(self.prefixes.lengths)

  @property
  def num_sequences(self) -> int:
    return len(self.prefixes)

  @property
  def steps_per_epoch(self) -> int:
    return num_batches(self.num_sequences, self.settings.batch_size)

  def order(self, epoch: int) -> np.ndarray:
    return rng_for(self.seed, STREAM_PRETRAIN_ORDER, epoch).permutation(self.num_sequences)

  _order = functools.lru_cache(maxsize=2)(order)   # an epoch's order, drawn once per process

  @functools.cached_property
  def num_rows(self) -> int:
    """The packed rows of every batch (one compiled step): what epoch 0 needs at most, and
    a margin for the other epochs' batches (their layouts differ a little)."""
    return self.packer.fixed_rows(
        _batch_lengths(self.lengths, self.order(0), self.settings.batch_size, PLANNED_BATCHES),
        self.shards, margin=TRAIN_ROWS_MARGIN)

  def batch_at(self, epoch: int, step: int) -> Batch:
    """Step `step` of `epoch` (a pure function of the two: any process or worker builds it)."""
    bs = self.settings.batch_size
    return self.batch(self._order(epoch)[step * bs:(step + 1) * bs], epoch, self.num_rows)

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    return workers_lib.epoch_batches(self, epoch, start_step, self.workers)

  def batch(self, prefix_ids: np.ndarray, epoch: int, num_rows: int | None = None) -> Batch:
    """The batch of these prefixes (dataset indices) in `epoch`: this process's pieces only.

    Every draw of a sequence is keyed by (seed, epoch, its prefix index), so the batch does
    not depend on the devices, processes or workers that build it.
    """
    plan, rows, weights = _planned(self.packer, self.shards, prefix_ids, self.lengths,
                                   self.settings.batch_size, num_rows)
    base = keyed_random.key(self.seed, STREAM_PRETRAIN_BATCH, epoch)
    return self.packer.pack_local(
        plan, self.shards, lambda m: (self.views(rows[m], base), {"weights": weights[m]}))

  def views(self, rows: np.ndarray, base: np.uint64) -> dict[str, np.ndarray]:
    """The views of these prefixes (-1: an empty padding sequence), left-padded [S, L]."""
    s, ds = self.settings, self.dataset
    real_row = rows >= 0
    starts, ends = self.prefixes.ranges(np.maximum(rows, 0))
    starts, ends = np.where(real_row, starts, 0), np.where(real_row, ends, 0)
    lengths = ends - starts                                           # [S]
    items = data_lib.left_pad(ds.offsets, ds.items, starts, ends, s.max_len)  # [S, L]
    col = np.arange(s.max_len)[None, :]
    seq = rows[:, None]                                               # the draws' sequence key
    first = s.max_len - lengths[:, None]                              # column of t[0]
    real = col >= first
    mask_id = ds.mask_id

    # Masked item prediction: each item but the last masked with p; the last always.
    is_last = real & (col == s.max_len - 1)
    masked = (real & (keyed_random.uniform(base, seq, col, 0) < s.mask_p)) | is_last
    masked_items = np.where(masked, mask_id, items)
    negative_items = keyed_excluding(
        base, 1, s.negative_high, seq, col, masked,
        lambda draws: (draws[:, :, None] == items[:, None, :]).any(-1))

    # Segment prediction: span length k ~ U{1..n//2}, start ~ U{0..n-k}, and a
    # negative span of the same length from the concatenation of all sequences.
    # Per-sequence draws take the columns past the window as their counters.
    per_seq = lambda j: (rows, s.max_len + j)   # noqa: E731
    has_span = lengths >= 2
    span = keyed_random.integers(base, 1, np.maximum(lengths // 2, 1), *per_seq(0))
    span_start = keyed_random.integers(base, 0, np.maximum(lengths - span, 0), *per_seq(1))
    neg_start = keyed_random.integers(base, 0, len(ds.items) - span, *per_seq(2))
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

    views = {
        "items": items, "masked_items": masked_items, "negative_items": negative_items,
        "segment_context": context, "segment_positive": positive, "segment_negative": negative,
    }
    for k in range(2, s.segment_negatives + 1):   # more spans like `negative`, elsewhere
      start_k = keyed_random.integers(base, 0, len(ds.items) - span, *per_seq(1 + k))
      index_k = np.clip(start_k[:, None] + pos_in_t - span_start[:, None], 0, len(ds.items) - 1)
      views[f"segment_negative_{k}"] = np.where(keep, items,
                                                np.where(in_span, ds.items[index_k], outside))
    return {k: v.astype(np.int32) for k, v in views.items()}


# --- fine-tuning -------------------------------------------------------------


def _input_lengths(inputs) -> np.ndarray:
  """Items per row of [N, L] inputs (an array, or rows built on demand)."""
  if isinstance(inputs, data_lib.PaddedRows):
    return inputs.lengths()
  return (inputs > 0).sum(1)


class FinetuneBatches:
  """Next-item training batches: one negative per target position, outside the user's sequence."""

  # Worker processes that build the batches ahead (0: this process; see data/workers.py).
  workers = 0

  def __init__(self, dataset: data_lib.Dataset, splits: dict, batch_size: int,
               negative_high: int, seed: int, pack: bool = True, shards: Shards = Shards()):
    self.dataset = dataset
    self.inputs = splits["train_inputs"]
    self.targets = splits["train_targets"]
    self.lengths = _input_lengths(self.inputs)
    self.batch_size = batch_size
    self.negative_high = negative_high
    self.seed = seed
    self.shards = shards
    self.packer = Packer(self.inputs.shape[1], pack)

  @property
  def steps_per_epoch(self) -> int:
    return num_batches(len(self.inputs), self.batch_size)

  def order(self, epoch: int) -> np.ndarray:
    return rng_for(self.seed, STREAM_FINETUNE_ORDER, epoch).permutation(len(self.inputs))

  _order = functools.lru_cache(maxsize=2)(order)   # an epoch's order, drawn once per process

  @functools.cached_property
  def num_rows(self) -> int:
    """The packed rows of every batch (one compiled step): what epoch 0 needs at most, and
    a margin for the other epochs' batches (their layouts differ a little)."""
    return self.packer.fixed_rows(
        _batch_lengths(self.lengths, self.order(0), self.batch_size, PLANNED_BATCHES),
        self.shards, margin=TRAIN_ROWS_MARGIN)

  def batch_at(self, epoch: int, step: int) -> Batch:
    """Step `step` of `epoch` (a pure function of the two: any process or worker builds it)."""
    bs = self.batch_size
    return self.batch(self._order(epoch)[step * bs:(step + 1) * bs], epoch, self.num_rows)

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    return workers_lib.epoch_batches(self, epoch, start_step, self.workers)

  def batch(self, users: np.ndarray, epoch: int, num_rows: int | None = None) -> Batch:
    """The batch of these users in `epoch`: this process's pieces only. A user's negatives
    are keyed by (seed, epoch, user), so the batch does not depend on who builds it."""
    plan, rows, weights = _planned(self.packer, self.shards, users, self.lengths,
                                   self.batch_size, num_rows)
    base = keyed_random.key(self.seed, STREAM_FINETUNE_BATCH, epoch)

    def build(m):
      safe, real_row = np.maximum(rows[m], 0), rows[m] >= 0
      inputs = np.where(real_row[:, None], self.inputs[safe], 0)
      targets = np.where(real_row[:, None], self.targets[safe], 0)
      col = np.arange(targets.shape[1])[None, :]
      negatives = keyed_excluding(base, 1, self.negative_high, rows[m][:, None], col, targets > 0,
                                  lambda draws: self.dataset.in_sequence(safe[:, None], draws))
      return ({"inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32),
               "negatives": negatives.astype(np.int32)}, {"weights": weights[m]})

    return self.packer.pack_local(plan, self.shards, build)


class PrefixBatches:
  """Fine-tuning on prefixes (finetune.targets=last_of_prefixes): every prefix of a user's
  training part is a sample whose newest position alone predicts the next item.

  The training part's window is t = s[-(max_len + m + 2):-2] (the items before validation
  and test), m = `min_items`; sample i of a user is t[:i] -> t[i], i = m .. len(t) - 1. With
  m = 0 the first has no items (it learns the popular first items), as BSARec's code builds
  its training set; TV-Rec's has m = 1 (every input holds an item).
  Samples are numbered user by user and located from the offsets; a batch lays each out on
  its own row, left-padded to max_len (filter encoders see the whole row), and only this
  process's pieces are built. Negatives (for bce) are keyed by (seed, epoch, sample).

  With `trim_padding` a batch is a tuple of groups of rows of a few widths, narrowest first
  (data/prefix_widths.py): each row keeps only its last `width` columns, with their
  positions, token ids and draws, so an encoder that does not read the padding computes what
  it would on the whole row.
  """

  # Worker processes that build the batches ahead (0: this process; see data/workers.py).
  workers = 0

  def __init__(self, dataset: data_lib.Dataset, batch_size: int, max_len: int,
               negative_high: int, seed: int, shards: Shards = Shards(), min_items: int = 0,
               trim_padding: bool = False):
    self.dataset, self.batch_size, self.max_len = dataset, batch_size, max_len
    self.negative_high, self.seed, self.shards = negative_high, seed, shards
    ends = dataset.offsets[1:] - 2
    self.starts = np.maximum(dataset.offsets[:-1], ends - max_len - min_items)   # t's start
    self.min_items = min_items
    per_user = np.maximum(ends - self.starts - min_items, 0)
    self.first = np.cumsum(per_user) - per_user                      # each user's first sample
    self.num_samples = int(per_user.sum())
    self.groups = None
    if trim_padding:
      # Sample j of a user holds min(min_items + j, max_len) items: the share longer than w
      # counts, per user, the samples from j = w + 1 - min_items on.
      total = max(self.num_samples, 1)
      longer = {w: float(np.maximum(per_user - max(w + 1 - min_items, 0), 0).sum()) / total
                for w in prefix_widths.widths(max_len)[:-1]}
      pieces = shards.count * shards.micro_batches
      self.groups = prefix_widths.plan(longer, self.num_rows * pieces, max_len, pieces)

  @property
  def steps_per_epoch(self) -> int:
    return num_batches(self.num_samples, self.batch_size)

  @property
  def num_rows(self) -> int:
    return -(-self.batch_size // (self.shards.count * self.shards.micro_batches))

  def order(self, epoch: int) -> np.ndarray:
    return rng_for(self.seed, STREAM_FINETUNE_ORDER, epoch).permutation(self.num_samples)

  _order = functools.lru_cache(maxsize=2)(order)   # an epoch's order, drawn once per process

  def batch_at(self, epoch: int, step: int) -> Batch:
    """Step `step` of `epoch` (a pure function of the two: any process or worker builds it)."""
    bs = self.batch_size
    return self.batch(self._order(epoch)[step * bs:(step + 1) * bs], epoch)

  def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
    return workers_lib.epoch_batches(self, epoch, start_step, self.workers)

  def batch(self, samples: np.ndarray, epoch: int) -> Batch | tuple[Batch, ...]:
    """These samples' rows, this process's pieces only (one sample per row); with
    trim_padding, a tuple of groups (a batch that does not fit them: one group, untrimmed)."""
    pieces = self.shards.count * self.shards.micro_batches
    rows, weights = _pad_rows(samples, self.num_rows * pieces)
    slots = np.arange(len(rows))
    if self.groups is not None:
      members = prefix_widths.assign(self.sample_lengths(rows), self.groups)
      if members is not None:
        return tuple(self._local(rows[m], weights[m], epoch, slots[m], g.capacity // pieces,
                                 g.width)
                     for g, m in zip(self.groups, members))
    return self._local(rows, weights, epoch, slots, self.num_rows, self.max_len)

  def _local(self, rows, weights, epoch, slots, piece_rows: int, width: int) -> Batch:
    """This process's pieces of a group of `piece_rows` rows a piece."""
    first = self.shards.first_local * self.shards.micro_batches
    local = slice(first * piece_rows,
                  (first + self.shards.num_local * self.shards.micro_batches) * piece_rows)
    return self.rows(rows[local], weights[local], epoch, slots[local], piece_rows, width)

  def _ranges(self, samples: np.ndarray):
    """(user, start, end) of samples' inputs [start, end) in the item array (-1: empty)."""
    real = samples >= 0
    safe = np.maximum(samples, 0)
    user = np.searchsorted(self.first, safe, side="right") - 1
    window = self.starts[user]
    end = window + self.min_items + (safe - self.first[user])        # t[:i] is [window, end)
    start = np.maximum(window, end - self.max_len)                   # the newest L items
    return user, start, np.where(real, end, start)

  def sample_lengths(self, samples: np.ndarray) -> np.ndarray:
    """The items of each sample's input (0 for -1, an empty padding row)."""
    _, start, end = self._ranges(samples)
    return end - start

  def rows(self, samples: np.ndarray, weights: np.ndarray, epoch: int, slots: np.ndarray,
           piece_rows: int | None = None, width: int | None = None) -> Batch:
    """Rows of these samples (-1: padding), at these places of the global batch (dropout
    keys on the place: token id = slot * max_len + column), cut to their last `width`
    columns; the rows from the first on make pieces of `piece_rows` rows."""
    L = self.max_len
    piece_rows = piece_rows or self.num_rows
    width = width or L
    real = samples >= 0
    user, start, end = self._ranges(samples)
    inputs = data_lib.left_pad(self.dataset.offsets, self.dataset.items, start, end, width)
    answers = np.where(real, self.dataset.items[np.minimum(end, len(self.dataset.items) - 1)], 0)
    targets = np.zeros_like(inputs)
    targets[:, -1] = answers
    col = np.arange(L - width, L)[None, :]
    base = keyed_random.key(self.seed, STREAM_FINETUNE_BATCH, epoch)
    negatives = keyed_excluding(
        base, 1, self.negative_high, samples[:, None], col, targets > 0,
        lambda draws: self.dataset.in_sequence(user[:, None], draws))
    lengths = (end - start).astype(np.int32)
    n = len(samples)
    return {
        "inputs": inputs.astype(np.int32), "targets": targets.astype(np.int32),
        "negatives": negatives.astype(np.int32),
        "segment_ids": (inputs > 0).astype(np.int32),
        # Every column keeps its position, padding included: a filter sees the whole row.
        "positions": np.broadcast_to(col.astype(np.int32), (n, width)).copy(),
        "token_ids": (slots[:, None] * L + col).astype(np.int32),
        # The newest position reads the prediction, even for the sample with no items; a
        # piece's tokens are numbered from its own first row (a device sees its piece only).
        "last_index": ((np.arange(n) % piece_rows) * width + width - 1).astype(np.int32),
        "lengths": lengths, "weights": weights.astype(np.float32),
    }


# --- evaluation --------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class EvalShape:
  """The shape every evaluation batch takes, whatever the split: one compiled step serves
  validation and test. `num_rows`: packed rows per piece; `history_width`: columns of the
  full-ranking history (the longer split's)."""
  num_rows: int
  history_width: int


def eval_shape(splits: dict, names: tuple[str, ...], batch_size: int, pack: bool = True,
               shards: Shards = Shards()) -> EvalShape:
  """The EvalShape that fits every batch of the named splits."""
  packer = Packer(splits[f"{names[0]}_inputs"].shape[1], pack)
  return EvalShape(
      num_rows=max(packer.fixed_rows(_batch_lengths(_input_lengths(splits[f"{n}_inputs"]),
                                                    np.arange(len(splits[f"{n}_inputs"])),
                                                    batch_size), shards) for n in names),
      history_width=max(splits[f"{n}_history"].shape[1] for n in names))


def eval_batches(dataset: data_lib.Dataset, splits: dict, split: str, protocol: str,
                 batch_size: int, pack: bool = True, shards: Shards = Shards(),
                 shape: EvalShape | None = None) -> Iterator[Batch]:
  """Users in file order, packed inputs with each user's last_index; `candidates`
  (answer first) for the sampled protocol, `history` for full ranking. With `shape`,
  every batch has its rows and history columns (see `eval_shape`)."""
  inputs, answers = splits[f"{split}_inputs"], splits[f"{split}_answers"]
  history = splits[f"{split}_history"]
  if shape is not None and history.shape[1] != shape.history_width:
    raise ValueError(f"{split} history has {history.shape[1]} columns, the shape "
                     f"{shape.history_width}: the splits share one width")
  if protocol == "sampled" and dataset.sample_negatives is None:
    raise ValueError("the sampled protocol needs sample negatives, but the dataset has none")
  packer = Packer(inputs.shape[1], pack)
  lengths = _input_lengths(inputs)
  for start in range(0, len(inputs), batch_size):
    rows, weights = _pad_rows(np.arange(start, min(start + batch_size, len(inputs))), batch_size)
    real_row = rows >= 0
    safe = np.maximum(rows, 0)
    answers_ = np.where(real_row, answers[safe], 1).astype(np.int32)
    per_user = {"answers": answers_, "weights": weights}
    if protocol == "sampled":
      per_user["candidates"] = np.concatenate(
          [answers_[:, None], dataset.sample_negatives[safe]], axis=1).astype(np.int32)
    else:
      per_user["history"] = np.where(real_row[:, None], history[safe], 0).astype(np.int32)
    yield packer.pack_shards(
        np.where(real_row, lengths[safe], 0),
        {"inputs": np.where(real_row[:, None], inputs[safe], 0).astype(np.int32)},
        per_user, shards, shape.num_rows if shape is not None else None)


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
