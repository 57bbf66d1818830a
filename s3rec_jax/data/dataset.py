"""Datasets for S3-Rec: loading, validation, sampled negatives and splits.

Everything here is plain numpy. A dataset is kept in CSR form: `offsets[u]`
and `offsets[u + 1]` delimit user `u`'s sequence inside one flat `items`
array, so splits and pre-training prefixes are index arithmetic over ranges
of that array instead of per-user Python lists.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import re
import stat
import tempfile
from typing import Callable, Iterator, Union

import numpy as np

from s3rec_jax.core import errors
from s3rec_jax.core import files
from s3rec_jax.data import array_store

PathLike = Union[str, os.PathLike]

# Item ids live in int32 arrays and mask_id = max_item + 1 must fit too.
_MAX_ITEM_ID = np.iinfo(np.int32).max - 1
_MAX_ATTR_ID = np.iinfo(np.int32).max
_MAX_USER_ID = np.iinfo(np.int64).max
# Fewest items a sequence needs: one to train on, one to validate, one to test.
MIN_SEQUENCE_LENGTH = 3

# bytes regexes only match ASCII digits, unlike str's \d.
_INT_LINE = re.compile(rb"[ \t\r\f\v]*[0-9]+(?:[ \t\r\f\v]+[0-9]+)*[ \t\r\f\v]*")
_SIGNED_INT = re.compile(rb"[+-]?[0-9]+")
_JSON_KEY = re.compile(r"[1-9][0-9]*")


class DataError(errors.UserError):
  """Bad input.

  The message always names the file, the line number (1-based; for the JSON
  file the offending key) and what was expected.
  """


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
  """One dataset in CSR form; arrays are made read-only on construction."""

  name: str
  user_ids: np.ndarray  # [U] int64, file order.
  offsets: np.ndarray  # [U + 1] int64 CSR offsets into `items`.
  items: np.ndarray  # [total] int32, all sequences concatenated.
  max_item: int
  max_attr: int
  attr_ids: np.ndarray  # [item_size, K] int32, sorted unique ids, 0-padded.
  sample_negatives: np.ndarray | None  # [U, num_negatives] int32 or None.
  # Sorted unique (user row * (item_size + 1) + item) of every interaction (`sequence_keys`):
  # given when the arrays come from a store, else computed once on first use.
  keys: np.ndarray | None = None

  def __post_init__(self):
    num_users = self.user_ids.shape[0]
    if self.offsets.shape != (num_users + 1,):
      raise ValueError(f"offsets has shape {self.offsets.shape}, expected ({num_users + 1},)")
    if self.offsets[0] != 0 or self.offsets[-1] != self.items.shape[0]:
      raise ValueError("offsets must start at 0 and end at len(items)")
    if self.attr_ids.ndim != 2 or self.attr_ids.shape[0] != self.item_size:
      raise ValueError(f"attr_ids has shape {self.attr_ids.shape}, expected ({self.item_size}, K)")
    if self.sample_negatives is not None and self.sample_negatives.shape[0] != num_users:
      raise ValueError(f"sample_negatives has {self.sample_negatives.shape[0]} rows, "
                       f"expected {num_users}")
    # Many modules share one Dataset; read-only arrays turn accidental in-place
    # edits into immediate errors instead of silent cross-module corruption.
    for array in (self.user_ids, self.offsets, self.items, self.attr_ids, self.sample_negatives,
                  self.keys):
      if array is not None:
        array.setflags(write=False)

  @property
  def item_size(self) -> int:
    """Embedding rows: 0 = padding, 1..max_item, mask_id."""
    return self.max_item + 2

  @property
  def mask_id(self) -> int:
    return self.max_item + 1

  @property
  def attribute_size(self) -> int:
    """Attribute rows: 0 unused, 1..max_attr."""
    return self.max_attr + 1

  @property
  def num_users(self) -> int:
    return int(self.user_ids.shape[0])

  @property
  def num_interactions(self) -> int:
    return int(self.items.shape[0])

  def sequence(self, u: int) -> np.ndarray:
    """User at row `u` (file order, not user id): a view of their items."""
    return self.items[self.offsets[u]:self.offsets[u + 1]]

  def lengths(self) -> np.ndarray:
    """[U] int64 sequence lengths."""
    return np.diff(self.offsets)

  @functools.cached_property
  def sequence_keys(self) -> np.ndarray:
    """[distinct (user, item) pairs] int64, sorted: `in_sequence` looks them up."""
    if self.keys is not None:
      return self.keys
    return interaction_keys(self.offsets, self.items, self.item_size)

  def in_sequence(self, user_rows: np.ndarray, items: np.ndarray) -> np.ndarray:
    """Whether each item is anywhere in the sequence of the user at that row (broadcast)."""
    keys = self.sequence_keys
    query = np.asarray(user_rows, np.int64) * (self.item_size + 1) + items
    pos = np.minimum(np.searchsorted(keys, query), max(len(keys) - 1, 0))
    return keys[pos] == query if len(keys) else np.zeros(np.shape(query), bool)


def interaction_keys(offsets: np.ndarray, items: np.ndarray, item_size: int,
                     block: int = 1 << 22) -> np.ndarray:
  """Sorted unique user_row * (item_size + 1) + item over the CSR arrays.

  Users a block of about `block` interactions at a time: keys grow with the user row, so the
  blocks' sorted keys concatenate in order, and no temporary is the size of the data."""
  num_users = offsets.shape[0] - 1
  bounds = np.searchsorted(offsets, np.arange(0, int(offsets[-1]), block), side="right") - 1
  bounds = np.unique(np.concatenate([bounds, [num_users]]))
  parts = []
  for first, last in zip(bounds[:-1], bounds[1:]):
    lo, hi = int(offsets[first]), int(offsets[last])
    users = np.repeat(np.arange(first, last, dtype=np.int64), np.diff(offsets[first:last + 1]))
    parts.append(np.unique(users * (item_size + 1) + np.asarray(items[lo:hi], np.int64)))
  return np.concatenate(parts) if parts else np.zeros(0, np.int64)


# ----------------------------------------------------------------------------
# Reading files.


def _read_bytes(path: PathLike, what: str) -> bytes:
  try:
    return pathlib.Path(path).read_bytes()
  except FileNotFoundError:
    raise DataError(f"{path}: file not found; expected the {what}") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror}); expected the {what}") from None


def _parse_int_lines(path: PathLike, lines: list[bytes], what: str, id_name: str,
                     first_line: int = 1) -> list[list[int]]:
  """Parses lines of positive integers, raising DataError on the first bad one."""
  rows = []
  for lineno, line in enumerate(lines, start=first_line):
    try:
      row = [int(token) for token in line.split()] if _INT_LINE.fullmatch(line) else None
    except ValueError:  # More digits than int() takes; the slow path says so.
      row = None
    if row is not None:
      # The pattern admits only unsigned digits, so 0 is the one bad value left.
      if 0 in row:
        raise DataError(f"{path}:{lineno}: non-positive {id_name} 0; "
                        f"expected positive integer ids in {what}")
      rows.append(row)
      continue
    # Slow path: only reached for a bad line, to say exactly what is wrong.
    shown = line[:60].decode("utf-8", "replace") + ("..." if len(line) > 60 else "")
    if not line.strip():
      raise DataError(f"{path}:{lineno}: blank line; expected {what}")
    for token in line.split():
      if not _SIGNED_INT.fullmatch(token):
        raise DataError(f"{path}:{lineno}: malformed line {shown!r} (token "
                        f"{token.decode('utf-8', 'replace')!r} is not an integer); expected {what}")
      try:
        value = int(token)
      except ValueError:  # More than sys.get_int_max_str_digits() digits.
        raise DataError(f"{path}:{lineno}: integer of {len(token)} characters is too long; "
                        f"expected {what}") from None
      if value <= 0:
        raise DataError(f"{path}:{lineno}: non-positive {id_name} {value}; "
                        f"expected positive integer ids in {what}")
    raise DataError(f"{path}:{lineno}: malformed line {shown!r}; expected {what}")
  return rows


# Bytes read per block of lines: the text of a large file is never in memory whole.
BLOCK_BYTES = 16 << 20
_INT_TEXT = b"0123456789 \t\r\f\v\n"
_SPACE = b" \t\r\f\v\n"


def _content_end(f, size: int) -> int:
  """Offset just past the last non-blank byte (trailing blank lines are not lines)."""
  end = size
  while end > 0:
    start = max(0, end - (1 << 16))
    f.seek(start)
    chunk = f.read(end - start)
    stripped = chunk.rstrip(_SPACE)
    if stripped:
      return start + len(stripped)
    end = start
  return 0


def _block_tokens(block: bytes) -> tuple[np.ndarray, np.ndarray] | None:
  """(tokens per line, the tokens as int64) of whole `\n`-ended lines of positive integers,
  or None where anything is off (the line-by-line parser then says what)."""
  if block.translate(None, _INT_TEXT):
    return None
  buf = np.frombuffer(block, np.uint8)
  digit = (buf >= ord("0")) & (buf <= ord("9"))
  starts = np.flatnonzero(digit[1:] & ~digit[:-1]) + 1
  if digit[0]:
    starts = np.concatenate([[0], starts])
  newlines = np.flatnonzero(buf == ord("\n"))
  counts = np.bincount(np.searchsorted(newlines, starts), minlength=newlines.size)
  if counts.size == 0 or counts.min() == 0:   # a blank line
    return None
  try:
    tokens = np.array(block.split()).astype(np.int64)
  except (ValueError, OverflowError):   # beyond int64
    return None
  if tokens.size != starts.size or not tokens.all():   # a 0 id
    return None
  return counts.astype(np.int64), tokens


def _int_line_blocks(path: PathLike, kind: str, what: str, id_name: str,
                     check_rows: Callable[[list[list[int]], int], None]
                     ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
  """Reads lines of positive integers a block at a time.

  Yields (line number of the block's first line, tokens per line [n] int64, the block's
  tokens [sum] int64). A block the vectorised parser cannot take whole is parsed line by
  line, which raises DataError naming the first bad line; its rows then pass
  `check_rows(rows, first_line)`, which raises for values the caller cannot hold.
  """
  try:
    f = open(path, "rb")
  except FileNotFoundError:
    raise DataError(f"{path}: file not found; expected the {kind}") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read ({e.strerror}); expected the {kind}") from None
  with f:
    end = _content_end(f, os.fstat(f.fileno()).st_size)
    f.seek(0)
    position, carry, line = 0, b"", 1
    while position < end:
      data = f.read(min(BLOCK_BYTES, end - position))
      position += len(data)
      data = carry + data
      if position >= end:
        block, carry = data + b"\n", b""
      else:
        cut = data.rfind(b"\n") + 1
        if cut == 0:   # a line longer than a block: read on
          carry = data
          continue
        block, carry = data[:cut], data[cut:]
      parsed = _block_tokens(block)
      if parsed is None:
        rows = _parse_int_lines(path, block[:-1].split(b"\n"), what, id_name, first_line=line)
        check_rows(rows, line)
        parsed = (np.array([len(r) for r in rows], np.int64),
                  np.fromiter((v for r in rows for v in r), np.int64))
      yield line, parsed[0], parsed[1]
      line += parsed[0].size


def _heads_and_tails(counts: np.ndarray, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Each line's first token and the other tokens, in order."""
  first = np.cumsum(counts) - counts
  rest = np.ones(tokens.size, bool)
  rest[first] = False
  return tokens[first], tokens[rest]


def _check_unique_users(path: PathLike, user_ids: np.ndarray, first_line: int = 1) -> None:
  _, first, counts = np.unique(user_ids, return_index=True, return_counts=True)
  if (counts > 1).any():
    # Report the earliest repeat (the second occurrence in file order).
    seen = np.zeros(user_ids.shape[0], bool)
    seen[first] = True
    row = int(np.flatnonzero(~seen)[0])
    uid = int(user_ids[row])
    prev = int(np.flatnonzero(user_ids == uid)[0])
    raise DataError(f"{path}:{row + first_line}: duplicate user id {uid} (first on line "
                    f"{prev + first_line}); expected each user on one line")


def read_sequences(path: PathLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Reads `user_id item_1 item_2 ...` lines, a block at a time.

  Returns:
    (user_ids [U] int64, offsets [U + 1] int64, items [total] int32).
  """
  what = "'user_id item_1 item_2 ...' (whitespace-separated positive integers)"

  def check_block(lengths, user_ids, items, line):
    # The first bad line of the block, whichever check it fails (as a line-by-line read would).
    short = np.flatnonzero(lengths < MIN_SEQUENCE_LENGTH)
    large = np.flatnonzero(items > _MAX_ITEM_ID) if items.size else short[:0]
    large_row = (int(np.searchsorted(np.cumsum(lengths), int(large[0]), side="right"))
                 if large.size else None)
    if short.size and (large_row is None or short[0] <= large_row):
      row = int(short[0])
      raise DataError(f"{path}:{line + row}: user {user_ids[row]} has {lengths[row]} items; "
                      f"expected at least {MIN_SEQUENCE_LENGTH} (train, valid and test items)")
    if large_row is not None:
      start = int(np.cumsum(lengths)[large_row] - lengths[large_row])
      top = int(items[start:start + int(lengths[large_row])].max())
      raise DataError(f"{path}:{line + large_row}: item id {top} too large; "
                      f"expected at most {_MAX_ITEM_ID}")

  def check_rows(rows, line):
    for lineno, row in enumerate(rows, start=line):
      if len(row) - 1 < MIN_SEQUENCE_LENGTH:
        raise DataError(f"{path}:{lineno}: user {row[0]} has {len(row) - 1} items; expected at "
                        f"least {MIN_SEQUENCE_LENGTH} (train, valid and test items)")
      if row[0] > _MAX_USER_ID:
        raise DataError(f"{path}:{lineno}: user id {row[0]} too large; "
                        f"expected at most {_MAX_USER_ID}")
      if max(row[1:]) > _MAX_ITEM_ID:
        raise DataError(f"{path}:{lineno}: item id {max(row[1:])} too large; "
                        f"expected at most {_MAX_ITEM_ID}")

  user_blocks, length_blocks, item_blocks = [], [], []
  for line, counts, tokens in _int_line_blocks(path, "sequence file", what, "id", check_rows):
    users, items = _heads_and_tails(counts, tokens)
    check_block(counts - 1, users, items, line)
    user_blocks.append(users)
    length_blocks.append(counts - 1)
    item_blocks.append(items.astype(np.int32))
  if not user_blocks:
    raise DataError(f"{path}:1: no users; expected at least one line {what}")
  user_ids = np.concatenate(user_blocks)
  _check_unique_users(path, user_ids)
  lengths = np.concatenate(length_blocks)
  offsets = np.zeros(user_ids.size + 1, dtype=np.int64)
  np.cumsum(lengths, out=offsets[1:])
  items = np.concatenate(item_blocks) if len(item_blocks) > 1 else item_blocks[0]
  return user_ids, offsets, items


class _Pairs(list):
  """A JSON object as its (key, value) pairs, so duplicate keys stay visible."""


def _build_attr_table(item_idx: np.ndarray, attr_idx: np.ndarray, max_item: int) -> np.ndarray:
  """[max_item + 2, K] table of each item's sorted unique attributes, 0-padded."""
  keep = item_idx <= max_item
  item_idx, attr_idx = item_idx[keep].astype(np.int64), attr_idx[keep].astype(np.int64)
  # One sort of (item, attr) keys dedups and orders every row at once.
  scale = int(attr_idx.max(initial=0)) + 1
  keys = np.unique(item_idx * scale + attr_idx)
  rows, attrs = keys // scale, keys % scale
  counts = np.bincount(rows, minlength=max_item + 2)
  width = max(1, int(counts.max(initial=0)))
  row_start = np.cumsum(counts) - counts
  cols = np.arange(keys.shape[0]) - row_start[rows]
  table = np.zeros((max_item + 2, width), dtype=np.int32)
  table[rows, cols] = attrs
  return table


def _show_json(value: object) -> str:
  """The start of `value` as JSON, for messages."""
  try:
    return json.dumps(value)[:60]
  except RecursionError:
    return "a deeply nested value"


def read_item_attributes(path: PathLike, max_item: int) -> tuple[np.ndarray, int]:
  """Reads `{"item_id": [attribute ids]}`.

  Entries of items above `max_item` are validated but left out of the table.

  Returns:
    (attr_ids [max_item + 2, K] int32, max_attr), where max_attr is the largest
    attribute id anywhere in the file (0 if there is none).
  """
  data = _read_bytes(path, "item-attribute JSON file")
  expected = 'one JSON object {"item_id": [attribute_id, ...]} with positive integers'
  try:
    doc = json.loads(data, object_pairs_hook=_Pairs)
  except json.JSONDecodeError as e:
    raise DataError(f"{path}: invalid JSON at line {e.lineno} column {e.colno} ({e.msg}); "
                    f"expected {expected}") from None
  except UnicodeDecodeError:
    raise DataError(f"{path}: not UTF-8 text; expected {expected}") from None
  except ValueError:  # A number with more digits than int() takes.
    raise DataError(f"{path}: integer too long to parse; expected {expected}") from None
  except RecursionError:
    raise DataError(f"{path}: JSON nested too deeply; expected {expected}") from None
  if not isinstance(doc, _Pairs):
    raise DataError(f"{path}: top level is a JSON {type(doc).__name__}; expected {expected}")
  item_idx, attr_idx, seen = [], [], set()
  for key, value in doc:
    if not _JSON_KEY.fullmatch(key):
      raise DataError(f"{path}: key {key!r} is not a positive integer item id; expected {expected}")
    # Length first: int() refuses keys of thousands of digits.
    if len(key) > len(str(_MAX_ITEM_ID)) or int(key) > _MAX_ITEM_ID:
      raise DataError(f"{path}: key {key!r} too large; expected item ids at most {_MAX_ITEM_ID}")
    item = int(key)
    if item in seen:
      raise DataError(f"{path}: key {key!r} appears twice; expected each item once")
    seen.add(item)
    # bool is an int subclass in Python, but `true` is no attribute id.
    if type(value) is not list or any(
        type(a) is not int or a <= 0 or a > _MAX_ATTR_ID for a in value):
      raise DataError(f"{path}: key {key!r} maps to {_show_json(value)}; expected a list of "
                      f"positive integer attribute ids")
    item_idx.extend([item] * len(value))
    attr_idx.extend(value)
  item_arr = np.array(item_idx, dtype=np.int64)
  attr_arr = np.array(attr_idx, dtype=np.int64)
  max_attr = int(attr_arr.max(initial=0))
  return _build_attr_table(item_arr, attr_arr, max_item), max_attr


def read_sample_negatives(path: PathLike, user_ids: np.ndarray, num_negatives: int = 99, *,
                          max_item: int | None = None) -> np.ndarray:
  """Reads `user_id neg_1 ... neg_N` lines, aligned to `user_ids`.

  Args:
    path: the sample file.
    user_ids: [U] the dataset's users; the file must hold exactly these.
    num_negatives: the number of negatives each line must hold.
    max_item: when given, negatives above it are rejected too.

  Returns:
    [U, num_negatives] int32, row u for user_ids[u].
  """
  what = f"'user_id neg_1 ... neg_{num_negatives}' (positive integers)"
  limit = _MAX_ITEM_ID if max_item is None else max_item

  def check_rows(rows, line):
    for lineno, row in enumerate(rows, start=line):
      if len(row) - 1 != num_negatives:
        raise DataError(f"{path}:{lineno}: user {row[0]} has {len(row) - 1} negatives; "
                        f"expected {num_negatives}")
      top = max(row[1:], default=0)
      if top > limit:
        raise DataError(f"{path}:{lineno}: negative item {top} out of range; "
                        f"expected at most {limit}")
      if row[0] > _MAX_USER_ID:
        raise DataError(f"{path}:{lineno}: user id {row[0]} too large; "
                        f"expected at most {_MAX_USER_ID}")

  user_blocks, negative_blocks = [], []
  for line, counts, tokens in _int_line_blocks(path, "sample-negatives file", what, "id",
                                               check_rows):
    users, negatives = _heads_and_tails(counts, tokens)
    wrong = np.flatnonzero(counts - 1 != num_negatives)
    out_of_range = np.flatnonzero(
        (negatives > limit).reshape(counts.size, num_negatives).any(axis=1)
        if not wrong.size else [])
    if wrong.size or out_of_range.size:
      # The line-by-line checks name the first bad line and what is wrong with it.
      first = int(wrong[0] if wrong.size else out_of_range[0])
      start = int(np.sum(counts[:first]))
      check_rows([tokens[start:start + int(counts[first])].tolist()], line + first)
    user_blocks.append(users)
    negative_blocks.append(negatives.astype(np.int32).reshape(counts.size, num_negatives))
  file_users = (np.concatenate(user_blocks) if user_blocks else np.zeros(0, np.int64))
  negatives = (np.concatenate(negative_blocks) if negative_blocks
               else np.zeros((0, num_negatives), np.int32))
  _check_unique_users(path, file_users)
  user_ids = np.asarray(user_ids, dtype=np.int64)
  extra = ~np.isin(file_users, user_ids)
  if extra.any():
    row = int(np.flatnonzero(extra)[0])
    raise DataError(f"{path}:{row + 1}: user {int(file_users[row])} is not in the dataset; "
                    f"expected exactly the dataset's users")
  missing = ~np.isin(user_ids, file_users)
  if missing.any():
    row = int(np.flatnonzero(missing)[0])
    raise DataError(f"{path}:{file_users.size + 1}: no line for user {int(user_ids[row])} "
                    f"(line {row + 1} of the sequence file); expected exactly the dataset's users")
  # Both id lists are unique and equal as sets, so this is a permutation.
  order = np.argsort(file_users)
  return negatives[order[np.searchsorted(file_users, user_ids, sorter=order)]]


# ----------------------------------------------------------------------------
# Sampled negatives.


# Users whose negatives are drawn together: memory [block, ~1.3 x negatives / acceptance]
# int64 draws, whatever the number of users.
NEGATIVE_BLOCK_USERS = 1 << 16


def generate_sample_negatives(data: Dataset | tuple[np.ndarray, np.ndarray], num_negatives: int,
                              rng: np.random.Generator) -> np.ndarray:
  """Draws `num_negatives` distinct negatives per user (the reference procedure).

  Each user's set is uniform among the subsets of the items that occur in the
  data, excluding every item of that user's whole sequence. Users are drawn a block of
  NEGATIVE_BLOCK_USERS at a time, in order, from the one generator.

  Args:
    data: a Dataset, or its (offsets, items) arrays.
    num_negatives: negatives per user.
    rng: the generator to draw from.

  Returns:
    [U, num_negatives] int32, in draw order.
  """
  offsets, items = (data.offsets, data.items) if isinstance(data, Dataset) else data
  offsets = np.asarray(offsets, dtype=np.int64)
  num_users = offsets.shape[0] - 1
  items = np.asarray(items)
  candidates = _distinct_ids(items)
  scale = int(candidates[-1]) + 1 if candidates.size else 1
  out = np.zeros((num_users, num_negatives), dtype=np.int32)
  blocks = [(lo, min(lo + NEGATIVE_BLOCK_USERS, num_users))
            for lo in range(0, num_users, NEGATIVE_BLOCK_USERS)]
  rooms = []
  for lo, hi in blocks:   # every user's room first: a user short of items fails before any draw
    keys = interaction_keys(offsets[lo:hi + 1] - offsets[lo],
                            items[offsets[lo]:offsets[hi]], scale - 1)
    rooms.append((keys, candidates.size - np.bincount(keys // scale, minlength=hi - lo)))
  for (lo, _), (_, room) in zip(blocks, rooms):
    if room.size and room.min() < num_negatives:
      row = lo + int(np.argmin(room))
      raise DataError(f"cannot draw {num_negatives} negatives for user row {row}: only "
                      f"{int(room.min())} of the {candidates.size} items are outside their "
                      f"sequence")
  if num_negatives == 0 or num_users == 0:
    return out
  for (lo, hi), (seen_keys, room) in zip(blocks, rooms):
    out[lo:hi] = _draw_negatives(seen_keys, room, candidates, scale, num_negatives, rng)
  return out


def _draw_negatives(seen_keys, room, candidates, scale, num_negatives, rng) -> np.ndarray:
  """One block's negatives: rejection sampling, vectorised over its users (rows 0..)."""
  out = np.zeros((room.size, num_negatives), dtype=np.int32)
  # The first `num_negatives` distinct accepted draws of an i.i.d. uniform stream form a
  # uniform subset. Rows that run short are redrawn with a longer stream.
  accept = float((room / candidates.size).min())
  width = int(np.ceil(1.3 * num_negatives / accept)) + 16
  pending = np.arange(room.size)
  while pending.size:
    draws = candidates[rng.integers(0, candidates.size, size=(pending.size, width))]
    keys = pending[:, None] * scale + draws
    pos = np.searchsorted(seen_keys, keys).clip(max=max(seen_keys.size - 1, 0))
    ok = seen_keys[pos] != keys if seen_keys.size else np.ones(keys.shape, bool)
    first = np.zeros(keys.size, dtype=bool)
    first[np.unique(keys.ravel(), return_index=True)[1]] = True
    ok &= first.reshape(keys.shape)
    done = ok.sum(axis=1) >= num_negatives
    picked = np.argsort(~ok[done], axis=1, kind="stable")[:, :num_negatives]
    out[pending[done]] = np.take_along_axis(draws[done], picked, axis=1)
    pending = pending[~done]
    width *= 2
  return out


def write_sample_negatives(path: PathLike, user_ids: np.ndarray, negatives: np.ndarray) -> None:
  """Writes `user_id neg_1 ...` lines atomically (temp file, fsync, rename)."""
  path = pathlib.Path(path)
  table = np.column_stack([np.asarray(user_ids, np.int64), np.asarray(negatives, np.int64)])
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "w") as f:
      np.savetxt(f, table, fmt="%d", delimiter=" ")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.unlink(tmp)
    except FileNotFoundError:
      pass
    raise
  files.fsync_dir(path.parent)   # the rename itself, durable


def _is_writable_dir(directory: pathlib.Path) -> bool:
  """Whether to write into `directory`.

  A directory with no write bit at all is treated as read-only on purpose, even
  for root (who os.access would let through): shared data is shipped that way.
  """
  try:
    mode = directory.stat().st_mode
  except OSError:
    return False
  if not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH):
    return False
  return os.access(directory, os.W_OK | os.X_OK)


# ----------------------------------------------------------------------------
# Id density: embedding tables have one row per id up to the largest.

# Ids are too sparse when more than half of 1..max_id are unused, and more
# than this many: a table that size is mostly rows no data ever touches.
_MAX_UNUSED_IDS = 1024
_PREPARE_HINT = ("map the ids to 1..N with `s3rec-prepare` (docs/own-data.md)")


def _distinct_ids(ids: np.ndarray) -> np.ndarray:
  """The ids that occur, sorted: a count per id where ids are dense (no sort, no copy)."""
  ids = np.asarray(ids)
  max_id = int(ids.max()) if ids.size else 0
  if max_id <= 8 * ids.size + 1024:
    return np.flatnonzero(np.bincount(ids, minlength=max_id + 1))
  return np.unique(ids)


def _too_sparse(max_id: int, distinct: int) -> bool:
  unused = max_id - distinct
  return unused > _MAX_UNUSED_IDS and 2 * unused > max_id


def check_dense_items(path: PathLike, offsets: np.ndarray, items: np.ndarray,
                      distinct: int | None = None) -> None:
  """DataError naming the line of the largest item id when the ids are far from 1..N.

  The readers accept any ids the format allows; a model, though, has a table
  row for every id up to the largest, so train.py refuses sparse ids.
  """
  if not items.size:
    return
  max_item = int(items.max())
  if distinct is None:
    distinct = _distinct_ids(items).size
  if _too_sparse(max_item, distinct):
    row = int(np.searchsorted(offsets, int(np.argmax(items)), side="right")) - 1
    raise DataError(f"{path}:{row + 1}: item id {max_item} but only {distinct} distinct items "
                    f"occur; expected dense ids 1..N (the embedding table would have "
                    f"{max_item + 2:,} rows): {_PREPARE_HINT}")


def check_dense_attributes(path: PathLike, attr_ids: np.ndarray, max_attr: int) -> None:
  """The same for attribute ids (`attr_ids` is the item -> attributes table)."""
  distinct = int(np.count_nonzero(np.unique(attr_ids)))
  if _too_sparse(max_attr, distinct):
    raise DataError(f"{path}: attribute id {max_attr} but only {distinct} distinct attributes "
                    f"occur; expected dense ids 1..N (the attribute table would have "
                    f"{max_attr + 1:,} rows): {_PREPARE_HINT}")


# ----------------------------------------------------------------------------
# Loading.


# The memory-mapped form of NAME.txt and NAME_item2attributes.json (NAME_sample.txt), made
# on first load beside the text files (else in sample_dir) and reused while they are unchanged.
STORE_SUFFIX = ".arrays"
# Bumped when the conversion's output changes: older stores are then rebuilt.
_STORE_REVISION = 1


def load_dataset(data_dir: PathLike, name: str, *, sample_dir: PathLike | None = None,
                 num_negatives: int = 99, sample_seed: int = 12345, need_samples: bool = True,
                 log: Callable[[str], object] = print, require_dense_ids: bool = False,
                 cache: bool = False) -> Dataset:
  """Loads and validates NAME.txt, NAME_item2attributes.json and NAME_sample.txt.

  With `cache` (what train.py asks), the text files are parsed once and kept as
  memory-mapped arrays (`NAME.arrays/`, and `NAME_sample.arrays/` for the negatives) beside
  them where data_dir is writable, else in sample_dir (neither writable: parsed each time).
  A later load maps those arrays instead of parsing: no copy, pages shared by the processes
  of a host, and the dataset bounded by disk rather than memory. A changed text file (size
  or modification time) is converted again. The arrays are written only once every file has
  loaded: a load that fails leaves nothing behind. Without `cache` nothing is written but a
  generated sample file.

  With `require_dense_ids` (what train.py asks), item and attribute ids far
  from 1..N are a DataError (see `check_dense_ids`), raised before anything
  is generated or written.

  The sample file is read from data_dir, else from sample_dir; if neither has
  it, it is generated with `sample_seed` and written to data_dir when that is
  writable, else to sample_dir, else kept in memory only.

  The processes of a host take turns (a lock on the first writable folder): the first to
  come parses and writes (or draws the negatives), the others then map its files.
  """
  writable = [place for place in _places(data_dir, sample_dir) if _is_writable_dir(place)]
  held = (array_store.lock(writable[0] / f"{name}{STORE_SUFFIX}")
          if writable and (cache or need_samples) else contextlib.nullcontext())
  with held:
    return _load_dataset(data_dir, name, sample_dir=sample_dir, num_negatives=num_negatives,
                         sample_seed=sample_seed, need_samples=need_samples, log=log,
                         require_dense_ids=require_dense_ids, cache=cache)


def _places(data_dir: PathLike, sample_dir: PathLike | None) -> list[pathlib.Path]:
  """Where a dataset's files are looked for (and its stores kept): data_dir, then sample_dir."""
  return [pathlib.Path(data_dir)] + ([pathlib.Path(sample_dir)] if sample_dir is not None else [])


def _load_dataset(data_dir: PathLike, name: str, *, sample_dir: PathLike | None,
                  num_negatives: int, sample_seed: int, need_samples: bool,
                  log: Callable[[str], object], require_dense_ids: bool,
                  cache: bool) -> Dataset:
  """`load_dataset` under its lock."""
  data_dir = pathlib.Path(data_dir)
  places = _places(data_dir, sample_dir)
  sequence_path = data_dir / f"{name}.txt"
  attribute_path = data_dir / f"{name}_item2attributes.json"

  def convert():
    user_ids, offsets, items = read_sequences(sequence_path)
    max_item = int(items.max())
    distinct = _distinct_ids(items).size
    if require_dense_ids:   # before the attribute table, which has a row per item id
      check_dense_items(sequence_path, offsets, items, distinct=distinct)
    attr_ids, max_attr = read_item_attributes(attribute_path, max_item)
    arrays = {"user_ids": user_ids, "offsets": offsets, "items": items, "attr_ids": attr_ids,
              "keys": interaction_keys(offsets, items, max_item + 2)}
    return arrays, {"max_item": max_item, "max_attr": max_attr, "distinct_items": distinct}

  pending = []   # stores to write once every file has loaded
  arrays, meta = _cached(f"{name}{STORE_SUFFIX}", places if cache else [],
                         [sequence_path, attribute_path], convert, pending)
  user_ids, offsets, items = arrays["user_ids"], arrays["offsets"], arrays["items"]
  max_item, max_attr, attr_ids = meta["max_item"], meta["max_attr"], arrays["attr_ids"]
  if require_dense_ids:
    check_dense_items(sequence_path, offsets, items, distinct=meta["distinct_items"])
    check_dense_attributes(attribute_path, attr_ids, max_attr)
  negatives = None
  if need_samples:
    sample_name = f"{name}_sample.txt"
    # Under load_dataset's lock: the first process draws and writes the negatives.
    found = next((d / sample_name for d in places if (d / sample_name).exists()), None)
    if found is not None:
      def convert_samples():
        negatives = read_sample_negatives(found, user_ids, num_negatives, max_item=max_item)
        return {"negatives": negatives}, {}
      # Keyed on the sequence file too: the rows follow its users.
      negatives = _cached(f"{name}_sample{STORE_SUFFIX}", places if cache else [],
                          [found, sequence_path], convert_samples, pending,
                          extra_key={"num_negatives": num_negatives, "max_item": max_item}
                          )[0]["negatives"]
    else:
      try:
        negatives = generate_sample_negatives((offsets, items), num_negatives,
                                              np.random.default_rng(sample_seed))
      except DataError as e:
        raise DataError(f"{sequence_path}: {e} (no {sample_name} was found, so "
                        f"negatives are drawn from this file)") from None
      where = _write_generated(sample_name, data_dir, sample_dir, user_ids, negatives)
      log(f"generated {num_negatives} sampled negatives per user for {name} with seed "
          f"{sample_seed}; " + (f"written to {where}" if where else "kept in memory only "
                                f"({data_dir} is read-only and no sample_dir was given)"))
  written = [write(log) for write in pending]
  if written and all(written):   # map what was just written: the parsed copies go
    return _load_dataset(data_dir, name, sample_dir=sample_dir, num_negatives=num_negatives,
                        sample_seed=sample_seed, need_samples=need_samples, log=log,
                        require_dense_ids=require_dense_ids, cache=cache)
  return Dataset(name=name, user_ids=user_ids, offsets=offsets, items=items, max_item=max_item,
                 max_attr=max_attr, attr_ids=attr_ids, sample_negatives=negatives,
                 keys=arrays["keys"])


def _cached(store_name: str, places: list[pathlib.Path], sources: list[pathlib.Path],
            convert: Callable[[], tuple[dict, dict]], pending: list,
            extra_key: dict | None = None) -> tuple[dict[str, np.ndarray], dict]:
  """The arrays (and meta) `convert()` makes of `sources`: mapped from a store in one of
  `places` made of these very files, else converted now, with the store's writing appended
  to `pending` (a callable taking the log) for the first writable place."""
  key = {"revision": _STORE_REVISION, **(extra_key or {})}
  for source in sources:
    try:
      key[source.name] = array_store.fingerprint(source)
    except OSError:
      return convert()   # the readers name the missing or unreadable file
  for place in places:
    meta = array_store.read_meta(place / store_name)
    if meta is not None and meta.get("key") == key:
      return array_store.open_arrays(place / store_name)
  writable = [place for place in places if _is_writable_dir(place)]
  arrays, extra = convert()
  if writable:
    target = writable[0] / store_name

    def write(log):
      with array_store.lock(target):
        meta = array_store.read_meta(target)   # another process may have made it meanwhile
        if meta is not None and meta.get("key") == key:
          return True
        try:
          array_store.write(target, arrays, {**extra, "key": key})
        except OSError as e:   # e.g. a full disk: go on from memory
          log(f"could not keep {store_name} in {target.parent} ({e}); parsed again next time")
          return False
      log(f"converted {', '.join(s.name for s in sources)} to memory-mapped arrays in {target}")
      return True

    pending.append(write)
  return arrays, extra


def _write_generated(file_name: str, data_dir: pathlib.Path, sample_dir: PathLike | None,
                     user_ids: np.ndarray, negatives: np.ndarray) -> pathlib.Path | None:
  """Writes generated negatives where allowed; returns the path or None."""
  if _is_writable_dir(data_dir):
    try:
      write_sample_negatives(data_dir / file_name, user_ids, negatives)
      return data_dir / file_name
    except OSError:
      pass  # E.g. a read-only mount that the mode bits do not show.
  if sample_dir is None:
    return None
  sample_dir = pathlib.Path(sample_dir)
  try:
    sample_dir.mkdir(parents=True, exist_ok=True)
    write_sample_negatives(sample_dir / file_name, user_ids, negatives)
  except OSError as e:
    raise DataError(f"{sample_dir / file_name}: cannot write generated negatives ({e}); "
                    f"expected a writable sample_dir") from None
  return sample_dir / file_name


# ----------------------------------------------------------------------------
# Synthetic data.


def _synthetic_from_walks(walk: np.ndarray, lengths: np.ndarray, item_col: np.ndarray,
                          attr_col: np.ndarray, num_negatives: int | None,
                          rng: np.random.Generator) -> Dataset:
  """The synthetic Dataset of users' walks [U, max_len] cut to `lengths`, with the
  (item, attribute) pairs and, if asked, sampled negatives drawn from `rng`."""
  num_users, max_len = walk.shape
  mask = np.arange(max_len)[None, :] < lengths[:, None]
  items = walk[mask].astype(np.int32)
  offsets = np.zeros(num_users + 1, dtype=np.int64)
  np.cumsum(lengths, out=offsets[1:])
  max_item = int(items.max())
  negatives = None
  if num_negatives:
    negatives = generate_sample_negatives((offsets, items), num_negatives, rng)
  return Dataset(name="synthetic", user_ids=np.arange(1, num_users + 1, dtype=np.int64),
                 offsets=offsets, items=items, max_item=max_item, max_attr=int(attr_col.max()),
                 attr_ids=_build_attr_table(item_col, attr_col, max_item),
                 sample_negatives=negatives)


def synthetic_dataset(*, num_users: int = 500, num_items: int = 300, num_attributes: int = 30,
                      min_len: int = 5, max_len: int = 30, num_groups: int = 10, seed: int = 0,
                      num_negatives: int | None = 99) -> Dataset:
  """A small seeded dataset with learnable structure, for demos and tests.

  Items fall into latent groups; a group fixes most of an item's attributes.
  Each item has a few preferred successors in its own group, and users walk
  that sparse Markov chain with a little noise, so the next item is
  predictable from the current one and attributes carry the group signal.

  Args:
    num_users: users, with ids 1..num_users.
    num_items: item ids 1..num_items; all occur when num_users >= num_items.
    num_attributes: attribute ids 1..num_attributes.
    min_len: shortest sequence (at least 3).
    max_len: longest sequence.
    num_groups: latent item groups.
    seed: seeds everything, the sampled negatives included.
    num_negatives: sampled negatives per user (None for none).
  """
  if not MIN_SEQUENCE_LENGTH <= min_len <= max_len:
    raise ValueError(f"need {MIN_SEQUENCE_LENGTH} <= min_len <= max_len, got {min_len}, {max_len}")
  if num_items < 2 * num_groups or num_attributes < 1 or num_users < 1:
    raise ValueError("need num_items >= 2 * num_groups, num_attributes >= 1, num_users >= 1")
  rng = np.random.default_rng(seed)
  item_ids = np.arange(1, num_items + 1)

  # Balanced groups, shuffled so that ids say nothing about groups.
  group = np.zeros(num_items + 1, dtype=np.int64)
  group[1:] = rng.permutation(np.arange(num_items) % num_groups)

  # Each group owns up to 3 core attributes; items keep each w.p. 0.9 and may
  # carry one random attribute as noise.
  core = rng.integers(1, num_attributes + 1, size=(num_groups, 3))
  keep = rng.random((num_items, 3)) < 0.9
  noise_attr = rng.integers(1, num_attributes + 1, size=num_items)
  has_noise = rng.random(num_items) < 0.3
  item_col = np.concatenate([np.repeat(item_ids, 3)[keep.ravel()], item_ids[has_noise]])
  attr_col = np.concatenate([core[group[1:]].ravel()[keep.ravel()], noise_attr[has_noise]])

  # Sparse transitions: 3 successors in the same group, skewed weights.
  num_succ = 3
  # Loop over groups, not users; +1 because row 0 of `group` is padding.
  members = [np.flatnonzero(group[1:] == g) + 1 for g in range(num_groups)]
  succ = np.zeros((num_items + 1, num_succ), dtype=np.int64)
  for m in members:
    succ[m] = m[rng.integers(0, m.size, size=(m.size, num_succ))]
  weights = rng.dirichlet(np.full(num_succ, 0.5), size=num_items + 1)
  cum_weights = np.cumsum(weights, axis=1)

  # Every item starts some user's sequence (when users suffice), so all occur.
  lengths = rng.integers(min_len, max_len + 1, size=num_users)
  walk = np.zeros((num_users, max_len), dtype=np.int64)
  walk[:, 0] = rng.permutation(np.resize(item_ids, num_users))
  group_size = np.array([m.size for m in members])
  group_start = np.cumsum(group_size) - group_size
  by_group = np.concatenate(members)
  for t in range(1, max_len):  # loop over time steps; users are vectorised
    cur = walk[:, t - 1]
    pick = (rng.random((num_users, 1)) > cum_weights[cur]).sum(axis=1).clip(max=num_succ - 1)
    nxt = succ[cur, pick]
    mode = rng.random(num_users)
    g = group[cur]
    same_group = by_group[group_start[g] + rng.integers(0, group_size[g])]
    anywhere = rng.integers(1, num_items + 1, size=num_users)
    walk[:, t] = np.where(mode < 0.85, nxt, np.where(mode < 0.95, same_group, anywhere))

  return _synthetic_from_walks(walk, lengths, item_col, attr_col, num_negatives, rng)


def synthetic_long_tail_dataset(*, num_users: int = 2000, num_items: int = 1500,
                                num_categories: int = 25, num_attributes: int = 60,
                                min_len: int = 4, max_len: int = 8, popularity_exponent: float = 1.0,
                                category_follow: float = 0.85, seed: int = 0,
                                num_negatives: int | None = 99) -> Dataset:
  """A seeded dataset on which attribute-aware pre-training pays: the README demo.

  What S3-Rec is for, in miniature: short histories, a long tail of rare items,
  and successors that follow the attributes rather than the item ids.
  Every item has one category (attributes 1..num_categories) and, half the
  time, one uninformative tag (the other attribute ids). Categories form a
  hidden chain: the next item's category is the current one's successor
  w.p. `category_follow` (else any category), and the item is drawn within
  that category by a Zipf popularity. Most items are rare, so fine-tuning
  alone sees each a few times and cannot place it; the item-attribute
  objectives learn its category from the attribute table, which is exactly
  what the next step depends on.

  Args:
    num_users: users, with ids 1..num_users.
    num_items: item ids 1..num_items; all occur when num_users >= num_items.
    num_categories: the informative attribute ids 1..num_categories.
    num_attributes: all attribute ids; those past num_categories are noise tags.
    min_len: shortest sequence (at least 3).
    max_len: longest sequence.
    popularity_exponent: Zipf exponent of the item popularity within a category.
    category_follow: how often the next category is the chain's successor.
    seed: seeds everything, the sampled negatives included.
    num_negatives: sampled negatives per user (None for none).
  """
  if not MIN_SEQUENCE_LENGTH <= min_len <= max_len:
    raise ValueError(f"need {MIN_SEQUENCE_LENGTH} <= min_len <= max_len, got {min_len}, {max_len}")
  if num_items < 2 * num_categories or num_users < 1 or num_categories < 2:
    raise ValueError("need num_items >= 2 * num_categories >= 4 and num_users >= 1")
  if num_attributes <= num_categories:
    raise ValueError(f"need num_attributes > num_categories, got {num_attributes}, "
                     f"{num_categories}")
  if not 0.0 <= category_follow <= 1.0:
    raise ValueError(f"need 0 <= category_follow <= 1, got {category_follow}")
  rng = np.random.default_rng(seed)
  item_ids = np.arange(1, num_items + 1)
  # Balanced categories, shuffled so that ids say nothing about them.
  category = np.zeros(num_items + 1, dtype=np.int64)
  category[1:] = rng.permutation(np.arange(num_items) % num_categories)
  has_tag = rng.random(num_items) < 0.5
  tags = rng.integers(num_categories + 1, num_attributes + 1, size=num_items)
  item_col = np.concatenate([item_ids, item_ids[has_tag]])
  attr_col = np.concatenate([category[1:] + 1, tags[has_tag]])

  # Within each category, a random popularity order with Zipf weights.
  members = [rng.permutation(np.flatnonzero(category[1:] == g) + 1)
             for g in range(num_categories)]
  cum_popularity = [np.cumsum(w / w.sum()) for w in
                    (1.0 / np.arange(1, m.size + 1) ** popularity_exponent for m in members)]
  successor = rng.permutation(num_categories)

  def draw_in(categories: np.ndarray) -> np.ndarray:
    out = np.empty(categories.shape[0], dtype=np.int64)
    u = rng.random(categories.shape[0])
    for g in range(num_categories):  # loop over categories; users are vectorised
      rows = np.flatnonzero(categories == g)
      pos = np.searchsorted(cum_popularity[g], u[rows]).clip(max=members[g].size - 1)
      out[rows] = members[g][pos]
    return out

  lengths = rng.integers(min_len, max_len + 1, size=num_users)
  walk = np.zeros((num_users, max_len), dtype=np.int64)
  # Every item starts some user's sequence (when users suffice), so all occur.
  walk[:, 0] = rng.permutation(np.resize(item_ids, num_users))
  for t in range(1, max_len):
    current = category[walk[:, t - 1]]
    follow = rng.random(num_users) < category_follow
    nxt = np.where(follow, successor[current], rng.integers(0, num_categories, size=num_users))
    walk[:, t] = draw_in(nxt)

  return _synthetic_from_walks(walk, lengths, item_col, attr_col, num_negatives, rng)


# ----------------------------------------------------------------------------
# Splits.


def left_pad(offsets: np.ndarray, items: np.ndarray, starts: np.ndarray, ends: np.ndarray,
             length: int) -> np.ndarray:
  """Rows `items[starts[i]:ends[i]]`, cut to their last `length` items, left-padded with 0.

  `offsets` only bounds the ranges (they must lie within offsets[-1]).

  Returns:
    [N, length] int32.
  """
  starts = np.asarray(starts, dtype=np.int64)
  ends = np.asarray(ends, dtype=np.int64)
  if starts.size and (starts.min() < 0 or (ends < starts).any() or ends.max() > offsets[-1]):
    raise ValueError(f"ranges must satisfy 0 <= start <= end <= {int(offsets[-1])}")
  return _left_pad(items, starts, ends, length)


def _left_pad(items: np.ndarray, starts: np.ndarray, ends: np.ndarray,
              length: int) -> np.ndarray:
  n = np.minimum(ends - starts, length)
  col = np.arange(length)
  pad = (length - n)[:, None]
  # Column j holds items[end - length + j] once past the padding.
  index = ends[:, None] - length + col[None, :]
  valid = col[None, :] >= pad
  if items.size == 0:
    return np.zeros((starts.shape[0], length), dtype=np.int32)
  return np.where(valid, items[np.where(valid, index, 0)], 0).astype(np.int32)


def _right_pad(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int) -> np.ndarray:
  col = np.arange(width)
  valid = col[None, :] < (ends - starts)[:, None]
  index = np.where(valid, starts[:, None] + col[None, :], 0)
  if items.size == 0:
    return np.zeros((starts.shape[0], width), dtype=np.int32)
  return np.where(valid, items[index], 0).astype(np.int32)


class PaddedRows:
  """[N, width] rows `items[starts[i]:ends[i]]`, padded with 0, built for the rows asked for.

  Splits and histories are views of the CSR arrays: materialised for every user they would
  take users x width x 4 bytes (and a history's width is the longest sequence). Indexing
  (`r[rows]`, `r[rows, columns]`, `r[a:b]`) builds just those rows; np.asarray(r) builds all.
  `align="left"` keeps a row's last `width` items, right-aligned after the padding (model
  inputs, as `left_pad`); `align="right"` its first `width` items, then the padding.
  """

  dtype = np.dtype(np.int32)
  ndim = 2

  def __init__(self, items: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int,
               align: str = "right"):
    if align not in ("left", "right"):
      raise ValueError(f"align={align!r}; expected 'left' or 'right'")
    self.items, self.width, self.align = items, width, align
    self.starts = np.asarray(starts, np.int64)
    self.ends = np.asarray(ends, np.int64)

  @property
  def shape(self) -> tuple[int, int]:
    return (len(self.starts), self.width)

  def __len__(self) -> int:
    return len(self.starts)

  def lengths(self) -> np.ndarray:
    """[N] the items each row holds (its non-zero entries)."""
    return np.minimum(self.ends - self.starts, self.width)

  def __getitem__(self, key):
    rows, columns = key if isinstance(key, tuple) else (key, slice(None))
    index = np.arange(len(self.starts))[rows]
    starts, ends = np.atleast_1d(self.starts[index]), np.atleast_1d(self.ends[index])
    if self.align == "left":
      block = _left_pad(self.items, starts, ends, self.width)
    else:
      block = _right_pad(self.items, starts, ends, self.width)
    return (block if np.ndim(index) else block[0])[..., columns]

  def __array__(self, dtype=None, copy=None):
    del copy
    full = self[:]
    return full if dtype is None else full.astype(dtype)


def finetune_splits(ds: Dataset, max_len: int) -> dict[str, np.ndarray]:
  """Leave-one-out splits (int32 rows, `PaddedRows`: built per batch of users, never for
  all of them at once).

  Returns:
    train_inputs/train_targets [U, L]: s[:-3] and s[1:-2], cut and left-padded
      alike so targets[j] is the item after inputs[j].
    valid_inputs [U, L], valid_answers [U]: s[:-2] and s[-2].
    test_inputs [U, L], test_answers [U]: s[:-1] and s[-1].
    valid_history/test_history [U, H]: the whole s[:-2] / s[:-1], right-padded
      with 0; H = longest test history = max length - 1, shared by both.
  """
  starts, ends = ds.offsets[:-1], ds.offsets[1:]
  width = int((ends - starts).max()) - 1 if ds.num_users else 0

  def inputs(s, e):
    return PaddedRows(ds.items, s, e, max_len, align="left")

  return {
      "train_inputs": inputs(starts, ends - 3),
      "train_targets": inputs(starts + 1, ends - 2),
      "valid_inputs": inputs(starts, ends - 2),
      "valid_answers": np.asarray(ds.items[ends - 2], np.int32),
      "test_inputs": inputs(starts, ends - 1),
      "test_answers": np.asarray(ds.items[ends - 1], np.int32),
      "valid_history": PaddedRows(ds.items, starts, ends - 2, width),
      "test_history": PaddedRows(ds.items, starts, ends - 1, width),
  }


def first_users(splits: dict, count: int) -> dict:
  """The splits of the first `count` users (file order); all of them for 0."""
  if not count:
    return splits
  out = {}
  for name, value in splits.items():
    if isinstance(value, PaddedRows):
      out[name] = PaddedRows(value.items, value.starts[:count], value.ends[:count], value.width,
                             value.align)
    else:
      out[name] = value[:count]
  return out


class PrefixRanges:
  """Every prefix t[:1] .. t[:n] of t = s[-(max_len + 2):-2], per user (users in file order,
  prefixes by increasing length), as [start, end) ranges into ds.items, found from a prefix's
  index when asked for: per-user arrays only, never one entry per prefix."""

  def __init__(self, ds: "Dataset", max_len: int):
    t_end = ds.offsets[1:] - 2
    self.t_start = np.maximum(ds.offsets[:-1], ds.offsets[1:] - (max_len + 2))
    self.per_user = t_end - self.t_start
    self.cumulative = np.cumsum(self.per_user)   # prefixes of users 0..u

  def __len__(self) -> int:
    return int(self.cumulative[-1]) if self.cumulative.size else 0

  def ranges(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) int64 of these prefixes."""
    ids = np.asarray(ids, np.int64)
    user = np.searchsorted(self.cumulative, ids, side="right")
    starts = self.t_start[user]
    return starts, starts + (ids - (self.cumulative[user] - self.per_user[user])) + 1

  def lengths(self, ids: np.ndarray) -> np.ndarray:
    starts, ends = self.ranges(ids)
    return ends - starts

  def mean_length(self) -> float:
    n = self.per_user.astype(np.float64)
    return float((n * (n + 1) / 2).sum() / max(n.sum(), 1))


def pretrain_prefixes(ds: Dataset, max_len: int) -> tuple[np.ndarray, np.ndarray]:
  """Every prefix's range, materialised (`PrefixRanges` finds them one batch at a time).

  Returns:
    (starts, ends) int64 absolute [start, end) ranges into ds.items; users in
    file order, prefixes by increasing length.
  """
  prefixes = PrefixRanges(ds, max_len)
  return prefixes.ranges(np.arange(len(prefixes)))
