"""Readers of source datasets for `s3rec-prepare`.

Every reader turns one source format into the same two records, which the
shared core in `s3rec_jax.data.prepare` filters, numbers and writes:

- `Interactions`: one row per interaction, as integer codes into tables of the
  original (string) user and item ids, plus optional times and row filters.
- `ItemAttributes`: one record per item of an item file, with each attribute
  field's values as flat (record, value) pairs.

One module per source: `atomic` (RecBole atomic files), `table` (CSV, TSV and
Parquet through pyarrow), `amazon` (the Amazon review dumps). `delimited` holds
the pyarrow helpers that `atomic` and `table` share.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Interactions:
  """Interactions in source order, ids as codes into their original names.

  Codes number the distinct ids by first appearance in the source, so code
  order is source order.
  """

  users: np.ndarray  # [N] int32 (or int64) codes into user_names.
  user_names: np.ndarray  # [num user codes] object array of str.
  items: np.ndarray  # [N] int32 (or int64) codes into item_names.
  item_names: np.ndarray  # [num item codes] object array of str.
  times: np.ndarray | None  # [N] int64 or float64; None keeps source order.
  source: str  # What the rows were read from, for messages.
  # Reader rules applied before anything else, in order: (rule, [N] bool kept).
  row_filters: tuple[tuple[str, np.ndarray], ...] = ()

  def __post_init__(self):
    n = self.users.shape[0]
    if self.items.shape != (n,) or (self.times is not None and self.times.shape != (n,)):
      raise ValueError("users, items and times must be [N] arrays of one length")
    for rule, kept in self.row_filters:
      if kept.shape != (n,) or kept.dtype != bool:
        raise ValueError(f"row filter {rule!r} must be a [N] bool array")

  @property
  def num_rows(self) -> int:
    return int(self.users.shape[0])


@dataclasses.dataclass(frozen=True, eq=False)
class ItemAttributes:
  """Attribute values of the records of an item file.

  `fields[name] = (records, values)`: value `values[j]` belongs to record
  `records[j]`; within a record, values keep their order in the source cell.
  """

  item_names: np.ndarray  # [R] object array of str, one distinct item per record.
  fields: dict[str, tuple[np.ndarray, np.ndarray]]  # name -> ([V] int64, [V] object str).
  source: str


def codes_by_first_appearance(values: Sequence[str] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Numbers distinct values 0, 1, ... in order of first appearance.

  Returns:
    (codes [N] int64, names [distinct] object array) with names[codes] == values.
  """
  values = np.asarray(values, dtype=object)
  if values.size == 0:
    return np.zeros(0, np.int64), np.zeros(0, object)
  distinct, first, inverse = np.unique(values, return_index=True, return_inverse=True)
  order = np.argsort(first, kind="stable")
  rank = np.empty(order.shape[0], np.int64)
  rank[order] = np.arange(order.shape[0])
  return rank[inverse.reshape(-1)], distinct[order]


class Coder:
  """Assigns codes by first appearance while a Python loop reads records."""

  def __init__(self):
    self._codes: dict[str, int] = {}

  def __call__(self, value: str) -> int:
    code = self._codes.get(value)
    if code is None:
      code = self._codes[value] = len(self._codes)
    return code

  def names(self) -> np.ndarray:
    out = np.empty(len(self._codes), dtype=object)
    out[:] = list(self._codes)  # dicts keep insertion order, i.e. the codes.
    return out


def index_dtype(count: int):
  """int32 for codes or row numbers below `count` where they fit (half the memory of int64
  on a large table), else int64."""
  return np.int32 if count < np.iinfo(np.int32).max else np.int64


def object_array(strings: Iterable[str]) -> np.ndarray:
  """A 1-D object array of str (np.array would make a fixed-width str array)."""
  strings = list(strings)
  out = np.empty(len(strings), dtype=object)
  out[:] = strings
  return out
