"""Tables of delimited text and Parquet files, read with pyarrow.

Files are read in blocks of about BLOCK_BYTES (text through pyarrow's
streaming CSV reader, Parquet batch by batch). Each block is checked and its
times converted at once; its ids become integer codes a group of blocks (about
GROUP_BYTES of ids) at a time, against one mapping kept across groups. Memory
follows the rows and the distinct ids, not the text, and no array ever holds
more than a group, however large the file (one pyarrow string array holds at
most 2 GiB).

Every column is read as strings (ids keep their spelling: `007` stays `007`)
and converted here, vectorised, so that a bad cell can be reported with its
file, line and column: for text files line 1 is the header, so file row r is
line r + 2; Parquet files have no lines and are reported by 1-based row.
"""

from __future__ import annotations

import bisect
import bz2
import csv
import dataclasses
import gzip
import io
import lzma
import os
import pathlib
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np

from s3rec_jax.data.dataset import DataError
from s3rec_jax.data.sources import Interactions, ItemAttributes, index_dtype, object_array

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
# Text (or uncompressed Parquet column data) read per block: no pyarrow array
# holds more than about one block, far below the 2 GiB of strings one array may hold.
BLOCK_BYTES = 16 << 20
MAX_BLOCK_BYTES = 1 << 30
# Bytes of one id column dictionary-encoded together (see IdCoder): at most
# this plus one block, far below the 2 GiB of strings one pyarrow array may hold.
GROUP_BYTES = 256 << 20
MAX_BATCH_ROWS = 1 << 20  # Parquet rows per batch, whatever their size


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
  """Some columns of one block of rows of a file, each a pyarrow array of one chunk.

  A file is read as a run of blocks; `first_row` is the block's first row in
  the file, so rows are reported by their place in the file, not the block.
  """

  path: pathlib.Path
  columns: dict[str, "pa.Array"]
  num_rows: int
  has_lines: bool  # text (rows are lines after the header) or Parquet (rows only)
  first_row: int = 0  # the file row of the block's row 0

  def where(self, row: int) -> str:
    """`path:LINE` for text files, `path: row N` for Parquet (both 1-based), of block row `row`."""
    row += self.first_row
    return f"{self.path}:{row + 2}" if self.has_lines else f"{self.path}: row {row + 1}"

  def line_name(self, row: int) -> str:
    """`line N` or `row N` of block row `row`, for pointing at a second place in the same file."""
    row += self.first_row
    return f"line {row + 2}" if self.has_lines else f"row {row + 1}"

  def slice(self, start: int, stop: int | None = None) -> "Table":
    stop = self.num_rows if stop is None else stop
    return Table(path=self.path, columns={c: a.slice(start, stop - start)
                                          for c, a in self.columns.items()},
                 num_rows=stop - start, has_lines=self.has_lines,
                 first_row=self.first_row + start)


def _block_bytes(block_bytes: int | None) -> int:
  block_bytes = BLOCK_BYTES if block_bytes is None else int(block_bytes)
  if not 0 < block_bytes <= MAX_BLOCK_BYTES:
    raise ValueError(f"block_bytes {block_bytes}: expected 1 to {MAX_BLOCK_BYTES}")
  return block_bytes


def _first_line_bytes(path: pathlib.Path) -> int:
  """Length of line 1 in (decompressed) bytes, newline included."""
  opener = _OPENERS.get(path.suffix.lower(), open)
  try:
    with opener(path, "rb") as f:
      return len(f.readline())
  except (OSError, EOFError, lzma.LZMAError):
    return 0  # the reader reports it


def _blank_rows(block: Table) -> np.ndarray:
  """[rows] bool: every read cell of the row is empty."""
  blank = np.ones(block.num_rows, bool)
  for array in block.columns.values():
    blank &= pc.equal(pc.utf8_length(array), 0).to_numpy(zero_copy_only=False)
  return blank


def text_blocks(path: pathlib.Path, header: Sequence[str], columns: Sequence[str], *,
                delimiter: str, quoting: bool, what: str,
                block_bytes: int | None = None) -> Iterator[Table]:
  """Reads `columns` of a delimited text file (header on line 1) as strings, block by block.

  Each block holds about `block_bytes` bytes of text (default BLOCK_BYTES), so
  no array ever holds more than one block of the file. Blank rows at the very
  end of the file are not rows (pyarrow reads them as empty cells).
  """
  _require_pyarrow(path)
  bad_rows = []

  def on_invalid_row(row):
    bad_rows.append(row)
    return "skip"

  def check_rows():
    if bad_rows:
      row = bad_rows[0]
      line = f":{row.number}" if row.number is not None else ""
      shown = row.text[:60] + ("..." if len(row.text) > 60 else "")
      raise DataError(f"{path}{line}: {row.actual_columns} columns in {shown!r}; expected "
                      f"{row.expected_columns}, as in the header (the {what})")

  parse = pa_csv.ParseOptions(
      delimiter=delimiter, quote_char='"' if quoting else False, double_quote=quoting,
      escape_char=False, newlines_in_values=False, ignore_empty_lines=False,
      invalid_row_handler=on_invalid_row)
  # Threads would lose the line numbers of bad rows. The header must fit in
  # the first block, which pyarrow skips.
  block_size = max(_block_bytes(block_bytes), _first_line_bytes(path) + 1)
  read = pa_csv.ReadOptions(use_threads=False, column_names=list(header), skip_rows=1,
                            block_size=block_size)
  convert = pa_csv.ConvertOptions(
      include_columns=list(columns), column_types={c: pa.string() for c in columns},
      strings_can_be_null=False, quoted_strings_can_be_null=False)

  def cannot_parse(e) -> DataError:
    if "straddl" in str(e):  # pyarrow's word for a row longer than a block
      return DataError(f"{path}: a line after line {first_row + 1} is longer than the block size "
                       f"({block_size} bytes); expected the {what} with shorter lines")
    return DataError(f"{path}: cannot parse ({e}); expected the {what}")

  # pyarrow decompresses .gz and .bz2 itself, but not .xz.
  opener = _OPENERS.get(path.suffix.lower())
  stream = lzma.open(path, "rb") if opener is lzma.open else None
  first_row = 0
  try:
    try:
      reader = pa_csv.open_csv(stream if stream is not None else str(path), read_options=read,
                               parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, OSError, EOFError, lzma.LZMAError) as e:
      check_rows()
      raise cannot_parse(e) from None
    blank_blocks = []  # blank rows are rows only if a filled row follows them
    while True:
      try:
        batch = reader.read_next_batch()
      except StopIteration:
        break
      except (pa.ArrowInvalid, OSError, EOFError, lzma.LZMAError) as e:
        check_rows()
        raise cannot_parse(e) from None
      check_rows()
      block = Table(path=path, columns={c: batch.column(c) for c in columns},
                    num_rows=batch.num_rows, has_lines=True, first_row=first_row)
      first_row += batch.num_rows
      if not block.num_rows:
        continue
      filled = np.flatnonzero(~_blank_rows(block))
      if not filled.size:
        blank_blocks.append(block)
        continue
      yield from blank_blocks
      blank_blocks = []
      end = int(filled[-1]) + 1
      yield block.slice(0, end)
      if end < block.num_rows:
        blank_blocks.append(block.slice(end))
    check_rows()
  finally:
    if stream is not None:
      stream.close()


def parquet_columns(path: pathlib.Path, what: str) -> list[str]:
  _require_pyarrow(path)
  try:
    return list(pq.read_schema(path).names)
  except (pa.ArrowInvalid, OSError) as e:
    raise DataError(f"{path}: cannot read as Parquet ({e}); expected the {what}") from None


def parquet_files(folder: pathlib.Path, what: str) -> list[pathlib.Path]:
  """The data files of a folder of Parquet files (as Spark, BigQuery or Beam write them).

  Files are taken in name order; hidden and bookkeeping files (names starting
  with `.` or `_`, such as `_SUCCESS`, and `.crc` checksums) and subfolders
  are not read.
  """
  try:
    entries = sorted(folder.iterdir(), key=lambda p: p.name)
  except OSError as e:
    raise DataError(f"{folder}: cannot list ({e.strerror}); expected the {what}") from None
  files = [p for p in entries if p.is_file() and not p.name.startswith((".", "_"))
           and not p.name.lower().endswith(".crc")]
  if not files:
    raise DataError(f"{folder}: no data files in this folder; expected the {what} as Parquet "
                    f"files (part-00000.parquet, ...)")
  return files


def _batch_rows(metadata, columns: Sequence[str], block_bytes: int) -> int:
  """Rows per batch for about `block_bytes` bytes of the columns, uncompressed."""
  wanted, size = set(columns), 0
  for group in range(metadata.num_row_groups):
    row_group = metadata.row_group(group)
    for k in range(row_group.num_columns):
      chunk = row_group.column(k)
      if chunk.path_in_schema.split(".")[0] in wanted:
        size += chunk.total_uncompressed_size
  row_bytes = max(1, size // max(1, metadata.num_rows))
  return max(1, min(block_bytes // row_bytes, MAX_BATCH_ROWS))


def parquet_blocks(path: pathlib.Path, columns: Sequence[str], what: str, *,
                   block_bytes: int | None = None) -> Iterator[Table]:
  """Reads `columns` of a Parquet file, batch by batch (about `block_bytes` bytes each)."""
  _require_pyarrow(path)
  block_bytes = _block_bytes(block_bytes)

  def cannot_read(e) -> DataError:
    return DataError(f"{path}: cannot read as Parquet ({e}); expected the {what}")

  try:
    parquet = pq.ParquetFile(path)
    batches = parquet.iter_batches(batch_size=_batch_rows(parquet.metadata, columns, block_bytes),
                                   columns=list(columns))
  except (pa.ArrowInvalid, OSError) as e:
    raise cannot_read(e) from None
  first_row = 0
  while True:
    try:
      batch = next(batches)
    except StopIteration:
      break
    except (pa.ArrowInvalid, OSError) as e:
      raise cannot_read(e) from None
    yield Table(path=path, columns={c: batch.column(c) for c in columns},
                num_rows=batch.num_rows, has_lines=False, first_row=first_row)
    first_row += batch.num_rows


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


class IdCoder:
  """Codes of a column of ids by first appearance, block after block.

  Blocks are queued (`add`) and encoded a group at a time (`flush`): pyarrow
  dictionary-encodes the group's cells in one pass, and only the group's
  distinct ids are looked up in (or added to) one mapping of every id seen.
  A group holds about GROUP_BYTES of cells, so its dictionary stays far below
  the 2 GiB of strings one pyarrow array may hold, however many ids there are.
  """

  def __init__(self):
    self._codes: dict[str, int] = {}
    self._queued: list = []
    self._queued_bytes = 0

  def __len__(self) -> int:
    return len(self._codes)

  def add(self, table: Table, column: str, what: str) -> None:
    """Queues the block's cells; no cell may be empty."""
    array = _as_strings(table, column, what)
    blank = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(array)), 0)
    empty = pc.or_kleene(pc.is_null(array), blank)
    row = _first(empty)
    if row is not None:
      raise DataError(f"{table.where(row)}: column {column!r} is empty; expected {what}")
    self._queued.append(array)
    self._queued_bytes += array.nbytes

  @property
  def full(self) -> bool:
    """Whether the queued cells are a group's worth (then flush)."""
    return self._queued_bytes >= GROUP_BYTES

  def flush(self) -> list[np.ndarray]:
    """[rows] int64 codes of each queued block, in the order they were added."""
    if not self._queued:
      return []
    # One dictionary for the whole group, its ids in order of first appearance.
    encoded = pc.dictionary_encode(pa.chunked_array(self._queued, type=pa.string()))
    self._queued, self._queued_bytes = [], 0
    names = encoded.chunk(0).dictionary.to_numpy(zero_copy_only=False)
    codes, code = self._codes, self._codes.setdefault
    # setdefault's second argument is read before a new id is added: the next code.
    known = np.fromiter([code(name, len(codes)) for name in names], np.int64,
                        count=names.shape[0])
    known = known.astype(index_dtype(len(codes)), copy=False)  # until the blocks are joined
    return [known[chunk.indices.to_numpy(zero_copy_only=False)] for chunk in encoded.chunks]

  def names(self) -> np.ndarray:
    """[codes] object array of str: the original ids, by code."""
    return object_array(self._codes)  # dicts keep insertion order, i.e. the codes


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


def _join(parts: list[np.ndarray], dtype) -> np.ndarray:
  return np.concatenate(parts, dtype=dtype) if parts else np.zeros(0, dtype)


def _release_memory() -> None:
  """Hands pyarrow's freed blocks back to the system; the later stages need numpy's memory."""
  pa.default_memory_pool().release_unused()


def _join_times(parts: list[np.ndarray]) -> np.ndarray:
  """The blocks' times: float64 if any block needed floats, else int64."""
  return _join(parts, np.float64 if any(p.dtype == np.float64 for p in parts) else np.int64)


def read_interactions(blocks: Iterable[Table], *, user: str, item: str, time: str | None,
                      source: str) -> Interactions:
  """Interactions from blocks of rows: ids coded a group of blocks at a time, times per block."""
  user_coder, item_coder = IdCoder(), IdCoder()
  users, items, time_parts = [], [], []
  for block in blocks:
    user_coder.add(block, user, "a user id")
    item_coder.add(block, item, "an item id")
    if time is not None:
      time_parts.append(times(block, time))
    if user_coder.full or item_coder.full:
      users += user_coder.flush()
      items += item_coder.flush()
  users += user_coder.flush()
  items += item_coder.flush()
  _release_memory()
  user_names, item_names = user_coder.names(), item_coder.names()
  return Interactions(users=_join(users, index_dtype(user_names.shape[0])), user_names=user_names,
                      items=_join(items, index_dtype(item_names.shape[0])), item_names=item_names,
                      times=_join_times(time_parts) if time is not None else None, source=source)


def read_items(blocks: Iterable[Table], *, key: str, fields: Mapping[str, tuple[str, str | None]],
               source: str) -> ItemAttributes:
  """Item attributes from blocks of rows, one distinct item a row.

  Args:
    blocks: the rows (of one file, or of several files one after another).
    key: the column of item ids.
    fields: field name -> (column, separator for value_lists).
    source: what the rows were read from, for messages.
  """
  coder = IdCoder()
  parts = {name: ([], []) for name in fields}
  queued = []  # (block, its first record): blocks whose keys wait in the coder
  files = []  # (first record, first block) of each file
  records = 0  # rows so far; with distinct items, a row's record (and code) is its place

  def first_place(code: int, block: Table) -> str:
    start, first = files[bisect.bisect_right([s for s, _ in files], code) - 1]
    place = first.line_name(code - start - first.first_row)
    return place if first.path == block.path else f"{place} of {first.path}"

  def check():
    for (block, before), codes in zip(queued, coder.flush()):
      repeated = np.flatnonzero(codes != before + np.arange(codes.shape[0]))
      if repeated.size:
        row = int(repeated[0])
        value = block.columns[key][row].as_py()
        raise DataError(f"{block.where(row)}: column {key!r}: {value!r} appears again (first on "
                        f"{first_place(int(codes[row]), block)}); expected each item once")
    queued.clear()

  for block in blocks:
    if not files or files[-1][1].path != block.path:
      files.append((records, block))
    coder.add(block, key, "an item id")
    queued.append((dataclasses.replace(block, columns={key: block.columns[key]}), records))
    for name, (column, separator) in fields.items():
      rows, values = value_lists(block, column, separator)
      parts[name][0].append(rows + records)
      parts[name][1].append(values)
    records += block.num_rows
    if coder.full:
      check()
  check()
  _release_memory()
  return ItemAttributes(item_names=coder.names(),
                        fields={name: (_join(rows, np.int64), _join(values, object))
                                for name, (rows, values) in parts.items()},
                        source=source)
