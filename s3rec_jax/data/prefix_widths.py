"""Prefix rows trimmed of their leading padding (finetune.trim_padding).

A prefix sample sits on its own row, left-padded to max_len; on the Amazon and Yelp files
most prefixes hold a few items, so most of a batch's tokens are padding. An encoder whose
newest position does not read the padding (EncoderSpec.trims_padding) can run a short
prefix on the row's last W columns alone, each column keeping its position. A batch is then
split into a few groups of fixed width and capacity, narrowest first: the shortest samples
fill the narrowest group. The widths are 8, 16, 32, ... below max_len, and max_len; the
capacities come from the epoch's length distribution, each group's share of a batch at its
binomial tail, so that a random batch fails to fit with probability below `MISFIT` (such a
batch runs untrimmed, as one group of max_len: the step then compiles once more). The groups
are fixed for the run, so the step compiles once.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SMALLEST_WIDTH = 8
# The chance that a random batch has more long samples than a group boundary allows, per
# boundary: the capacities are binomial tail quantiles at this level.
MISFIT = 1e-9


@dataclasses.dataclass(frozen=True)
class Group:
  """`capacity` rows of `width` columns (the last `width` of max_len)."""
  width: int
  capacity: int


def widths(max_len: int) -> tuple[int, ...]:
  """8, 16, 32, ... below max_len, then max_len."""
  out, width = [], SMALLEST_WIDTH
  while width < max_len:
    out.append(width)
    width *= 2
  return tuple(out) + (max_len,)


def binomial_tail_count(n: int, p: float, misfit: float = MISFIT) -> int:
  """The least c with P(X > c) < misfit for X ~ Binomial(n, p)."""
  if p <= 0.0:
    return 0
  if p >= 1.0:
    return n
  log_p, log_q = math.log(p), math.log1p(-p)
  above = 0.0   # P(X > c), accumulated from the top
  for c in range(n, -1, -1):
    if above >= misfit:
      return min(n, c + 1)
    above += math.exp(math.lgamma(n + 1) - math.lgamma(c + 1) - math.lgamma(n - c + 1)
                      + c * log_p + (n - c) * log_q)
  return 0


def plan(longer_than: dict[int, float], batch_rows: int, max_len: int,
         pieces: int) -> tuple[Group, ...]:
  """The groups of a batch of `batch_rows` rows (a multiple of `pieces`, the devices times
  micro-batches that split every group evenly), given the share of samples longer than each
  width but the last (`longer_than[width]`). Groups of no rows are left out."""
  if batch_rows % pieces:
    raise ValueError(f"batch_rows={batch_rows} must be a multiple of pieces={pieces}")
  ws = widths(max_len)
  round_up = lambda rows: -(-rows // pieces) * pieces
  # Rows at least as wide as each width: all of them for the first, then the tails.
  at_least = [batch_rows] + [
      min(batch_rows, round_up(binomial_tail_count(batch_rows, longer_than[w])))
      for w in ws[:-1]]
  for i in range(len(at_least) - 2, -1, -1):   # nested tails, whatever the rounding did
    at_least[i] = max(at_least[i], at_least[i + 1])
  groups = [Group(w, at_least[i] - (at_least[i + 1] if i + 1 < len(ws) else 0))
            for i, w in enumerate(ws)]
  return tuple(g for g in groups if g.capacity)


def assign(lengths: np.ndarray, groups: tuple[Group, ...]) -> list[np.ndarray] | None:
  """Which of a batch's rows go to each group: positions into `lengths` (a row's items; 0
  for an empty padding row), shortest first, each group filled to its capacity; None when
  some row is longer than its group's width (the batch does not fit)."""
  if len(lengths) != sum(g.capacity for g in groups):
    raise ValueError(f"{len(lengths)} rows for groups of {sum(g.capacity for g in groups)}")
  order = np.argsort(lengths, kind="stable")
  out, start = [], 0
  for group in groups:
    rows = order[start:start + group.capacity]
    if rows.size and lengths[rows[-1]] > group.width:
      return None
    out.append(rows)
    start += group.capacity
  return out


def describe(groups: tuple[Group, ...], max_len: int) -> str:
  """One line: the groups, and their tokens against untrimmed rows."""
  rows = sum(g.capacity for g in groups)
  tokens = sum(g.capacity * g.width for g in groups)
  return (", ".join(f"{g.capacity} x {g.width}" for g in groups)
          + f" ({tokens / (rows * max_len):.0%} of the tokens of {rows} x {max_len})")
