"""Tables of delimited text and Parquet files, read with pyarrow.

Every column is read as strings (ids keep their spelling: `007` stays `007`)
and converted here, vectorised, so that a bad cell can be reported with its
file, line and column: for text files line 1 is the header, so table row r is
line r + 2; Parquet files have no lines and are reported by 1-based row.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import io
import lzma
import os
import pathlib
from typing import Sequence

import numpy as np

from s3rec_jax.data.dataset import DataError

try:  # pyarrow is only needed for these sources; the Amazon reader does without.
  import pyarrow as pa
  import pyarrow.compute as pc
  import pyarrow.csv as pa_csv
  import pyarrow.parquet as pq
except ImportError:  # pragma: no cover - exercised only where pyarrow is missing
  pa = None

_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
_INTEGER = r"^[+-]?[0-9]+$"
_NUMBER = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_SHOWN_COLUMNS = 12


def _require_pyarrow(path: os.PathLike | str) -> None:
  if pa is None:
    raise DataError(f"{path}: reading this file needs pyarrow, which is not installed; "
                    f"expected `pip install pyarrow`")


def check_readable(path: os.PathLike | str, what: str) -> pathlib.Path:
  """The path, or a DataError if it is not a readable file."""
  path = pathlib.Path(path)
  if not path.exists():
    raise DataError(f"{path}: file not found; expected the {what}")
  if not path.is_file():
    raise DataError(f"{path}: not a file; expected the {what}")
  if not os.access(path, os.R_OK):
    raise DataError(f"{path}: cannot read (permission denied); expected the {what}")
  return path


def open_text(path: pathlib.Path):
  """Opens a text file, decompressing by extension (.gz, .bz2, .xz)."""
  opener = _OPENERS.get(path.suffix.lower())
  if opener is not None:
    return opener(path, "rt", encoding="utf-8-sig", newline="")
  return open(path, encoding="utf-8-sig", newline="")


def read_header(path: pathlib.Path, delimiter: str, quoting: bool, what: str) -> list[str]:
  """The column names on line 1."""
  try:
    with open_text(path) as f:
      line = f.readline()
  except (OSError, EOFError, UnicodeDecodeError, lzma.LZMAError) as e:
    raise DataError(f"{path}:1: cannot read the header ({e}); expected the {what}") from None
  line = line.rstrip("\r\n")
  if not line.strip():
    raise DataError(f"{path}:1: empty header line; expected the {what} with a header of "
                    f"column names")
  if quoting:
    return next(csv.reader(io.StringIO(line), delimiter=delimiter))
  return line.split(delimiter)


def describe_columns(names: Sequence[str]) -> str:
  shown = ", ".join(repr(n) for n in names[:_SHOWN_COLUMNS])
  return shown + (f" and {len(names) - _SHOWN_COLUMNS} more" if len(names) > _SHOWN_COLUMNS else "")


def check_unique_header(path: pathlib.Path, header: Sequence[str]) -> None:
  seen = set()
  for name in header:
    if name in seen:
      raise DataError(f"{path}:1: column {name!r} appears twice in the header; expected "
                      f"distinct column names")
    seen.add(name)


@dataclasses.dataclass(frozen=True, eq=False)
class Table:
  """Some columns of one file, each a pyarrow array of one chunk."""

  path: pathlib.Path
  columns: dict[str, "pa.Array"]
  num_rows: int
  has_lines: bool  # text (rows are lines after the header) or Parquet (rows only)

  def where(self, row: int) -> str:
    """`path:LINE` for text files, `path: row N` for Parquet (both 1-based)."""
    return f"{self.path}:{row + 2}" if self.has_lines else f"{self.path}: row {row + 1}"

  def line_name(self, row: int) -> str:
    """`line N` or `row N`, for pointing at a second place in the same file."""
    return f"line {row + 2}" if self.has_lines else f"row {row + 1}"


def _one_chunk(array) -> "pa.Array":
  return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def read_text(path: pathlib.Path, header: Sequence[str], columns: Sequence[str], *,
              delimiter: str, quoting: bool, what: str) -> Table:
  """Reads `columns` of a delimited text file (header on line 1) as strings."""
  _require_pyarrow(path)
  bad_rows = []

  def on_invalid_row(row):
    bad_rows.append(row)
    return "skip"

  parse = pa_csv.ParseOptions(
      delimiter=delimiter, quote_char='"' if quoting else False, double_quote=quoting,
      escape_char=False, newlines_in_values=False, ignore_empty_lines=False,
      invalid_row_handler=on_invalid_row)
  # Threads would lose the line numbers of bad rows.
  read = pa_csv.ReadOptions(use_threads=False, column_names=list(header), skip_rows=1)
  convert = pa_csv.ConvertOptions(
      include_columns=list(columns), column_types={c: pa.string() for c in columns},
      strings_can_be_null=False, quoted_strings_can_be_null=False)
  try:
    table = pa_csv.read_csv(path, read_options=read, parse_options=parse, convert_options=convert)
  except (pa.ArrowInvalid, OSError, EOFError) as e:
    raise DataError(f"{path}: cannot parse ({e}); expected the {what}") from None
  if bad_rows:
    row = bad_rows[0]
    line = f":{row.number}" if row.number is not None else ""
    shown = row.text[:60] + ("..." if len(row.text) > 60 else "")
    raise DataError(f"{path}{line}: {row.actual_columns} columns in {shown!r}; expected "
                    f"{row.expected_columns}, as in the header (the {what})")
  arrays = {c: _one_chunk(table.column(c)) for c in columns}
  num_rows = table.num_rows
  # Blank lines at the very end are not rows (pyarrow reads them as empty cells).
  if num_rows and arrays:
    blank = np.ones(num_rows, bool)
    for array in arrays.values():
      blank &= pc.equal(pc.utf8_length(array), 0).to_numpy(zero_copy_only=False)
    filled = np.flatnonzero(~blank)
    num_rows = int(filled[-1]) + 1 if filled.size else 0
    arrays = {c: a.slice(0, num_rows) for c, a in arrays.items()}
  return Table(path=path, columns=arrays, num_rows=num_rows, has_lines=True)


def parquet_columns(path: pathlib.Path, what: str) -> list[str]:
  _require_pyarrow(path)
  try:
    return list(pq.read_schema(path).names)
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: cannot read as Parquet ({e}); expected the {what}") from None


def read_parquet(path: pathlib.Path, columns: Sequence[str], what: str) -> Table:
  _require_pyarrow(path)
  try:
    table = pq.read_table(path, columns=list(columns))
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: cannot read as Parquet ({e}); expected the {what}") from None
  return Table(path=path, columns={c: _one_chunk(table.column(c)) for c in columns},
               num_rows=table.num_rows, has_lines=False)


def _first(mask) -> int | None:
  """Index of the first True of a pyarrow boolean array (nulls count as True)."""
  values = pc.fill_null(mask, True).to_numpy(zero_copy_only=False)
  hits = np.flatnonzero(values)
  return int(hits[0]) if hits.size else None


def _as_strings(table: Table, column: str, what: str) -> "pa.Array":
  array = table.columns[column]
  if pa.types.is_string(array.type):
    return array
  try:
    return pc.cast(array, pa.string())
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
    raise DataError(f"{table.path}: column {column!r} has type {array.type}; expected {what} "
                    f"(strings or integers)") from None


def id_codes(table: Table, column: str, what: str) -> tuple[np.ndarray, np.ndarray]:
  """Codes (by first appearance) and names of a column of ids; no cell may be empty."""
  array = _as_strings(table, column, what)
  blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(array)), 0)
  empty = pc.or_kleene(pc.is_null(array), blank)
  row = _first(empty)
  if row is not None:
    raise DataError(f"{table.where(row)}: column {column!r} is empty; expected {what}")
  encoded = pc.dictionary_encode(array)  # dictionary in order of first appearance
  codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
  names = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
  return codes, names


def check_distinct(table: Table, column: str, codes: np.ndarray, what: str) -> None:
  """Each id of `column` on one row only."""
  if np.unique(codes).shape[0] == codes.shape[0]:
    return
  _, first = np.unique(codes, return_index=True)
  repeated = np.ones(codes.shape[0], bool)
  repeated[first] = False
  row = int(np.flatnonzero(repeated)[0])
  prev = int(np.flatnonzero(codes == codes[row])[0])
  value = table.columns[column][row].as_py()
  raise DataError(f"{table.where(row)}: column {column!r}: {value!r} appears again (first on "
                  f"{table.line_name(prev)}); expected each {what} once")


def times(table: Table, column: str) -> np.ndarray:
  """A numeric time column: int64 when every cell is an integer, else float64."""
  array = table.columns[column]
  expected = "a number (e.g. unix seconds)"
  # Typed Parquet times order as their integer ticks (days for date32).
  if pa.types.is_timestamp(array.type) or pa.types.is_date64(array.type):
    array = pc.cast(array, pa.int64())
  elif pa.types.is_date32(array.type):
    array = pc.cast(array, pa.int32())
  if pa.types.is_integer(array.type) or pa.types.is_floating(array.type):
    row = _first(pc.is_null(array))
    if row is not None:
      raise DataError(f"{table.where(row)}: column {column!r} is empty; expected {expected}")
    values = array.to_numpy(zero_copy_only=False)
    values = values.astype(np.int64 if pa.types.is_integer(array.type) else np.float64)
  elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
    trimmed = pc.utf8_trim_whitespace(array)
    bad = pc.invert(pc.match_substring_regex(trimmed, _NUMBER))
    row = _first(bad)
    if row is not None:
      value = array[row].as_py()
      raise DataError(f"{table.where(row)}: column {column!r}: time {value!r} is not a number; "
                      f"expected {expected}")
    trimmed = pc.replace_substring_regex(trimmed, r"^\+", "")  # pyarrow's casts refuse a '+'
    values = None
    if _first(pc.invert(pc.match_substring_regex(trimmed, _INTEGER))) is None:
      try:
        values = pc.cast(trimmed, pa.int64()).to_numpy(zero_copy_only=False)
      except pa.ArrowInvalid:  # beyond int64; floats still order them
        values = None
    if values is None:
      values = pc.cast(trimmed, pa.float64()).to_numpy(zero_copy_only=False)
  else:
    raise DataError(f"{table.path}: column {column!r} has type {array.type}; expected {expected}")
  if values.dtype == np.float64 and not np.isfinite(values).all():
    row = int(np.flatnonzero(~np.isfinite(values))[0])
    raise DataError(f"{table.where(row)}: column {column!r}: time {values[row]!r} is not finite; "
                    f"expected {expected}")
  return values


def value_lists(table: Table, column: str, separator: str | None) -> tuple[np.ndarray, np.ndarray]:
  """The values of an attribute column as flat (row, value) pairs.

  Args:
    table: the table.
    column: the column; a list-typed (Parquet) column gives its elements.
    separator: splits string cells into several values; None keeps each cell
      one value, " " splits at runs of whitespace. Values are trimmed and empty
      ones dropped, so an empty cell has no values.

  Returns:
    (rows [V] int64, values [V] object array of str), in cell order.
  """
  array = table.columns[column]
  if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
    rows = pc.list_parent_indices(array)
    flat = pc.list_flatten(array)
  else:
    array = _as_strings(table, column, "attribute values")
    if separator is None:
      rows, flat = pa.array(np.arange(len(array), dtype=np.int64)), array
    else:
      parts = (pc.utf8_split_whitespace(array) if separator == " "
               else pc.split_pattern(array, separator))
      rows, flat = pc.list_parent_indices(parts), pc.list_flatten(parts)
  flat = pc.utf8_trim_whitespace(pc.cast(flat, pa.string()))
  keep = pc.fill_null(pc.greater(pc.utf8_length(flat), 0), False)
  rows = pc.filter(rows, keep).to_numpy(zero_copy_only=False).astype(np.int64)
  values = np.asarray(pc.filter(flat, keep).to_pylist(), dtype=object)
  return rows, values.reshape(-1)
