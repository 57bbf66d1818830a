"""CSV, TSV and Parquet tables: interactions and item attributes by column name.

The format follows the extension: `.parquet`/`.pq` is Parquet, anything else
delimited text with a header line (`.tsv`/`.tab` tab-separated, otherwise
comma-separated, unless a delimiter is given; `.gz`, `.bz2` and `.xz` are
decompressed). A folder is a Parquet dataset as Spark, BigQuery or Beam write
it: its files (`part-00000-....parquet`, ...) in name order, bookkeeping files
such as `_SUCCESS` and `.crc` left out. Text cells may be quoted with `"`. Id
columns are read as strings, so integer and string ids both work and keep
their spelling. Files are read in blocks (see `delimited`): memory follows
the rows and the distinct ids, not the text, and no column is held whole, so
pyarrow's 2 GiB of strings per array does not limit them.
"""

from __future__ import annotations

import os
import pathlib
from typing import Iterator, Sequence

from s3rec_jax.data.dataset import DataError
from s3rec_jax.data.sources import delimited
from s3rec_jax.data.sources import Interactions, ItemAttributes

_PARQUET = (".parquet", ".pq")
_TAB_SEPARATED = (".tsv", ".tab")
_COMPRESSED = (".gz", ".bz2", ".xz")


def is_parquet(path: pathlib.Path) -> bool:
  return path.suffix.lower() in _PARQUET


def default_delimiter(path: pathlib.Path) -> str:
  suffixes = [s.lower() for s in path.suffixes]
  if suffixes and suffixes[-1] in _COMPRESSED:
    suffixes.pop()
  return "\t" if suffixes and suffixes[-1] in _TAB_SEPARATED else ","


def _check_columns(names: Sequence[str], wanted: list[tuple[str, str]], where: str) -> None:
  for flag, column in wanted:
    if column not in names:
      raise DataError(f"{where}: no column {column!r} ({flag}); columns are "
                      f"{delimited.describe_columns(names)}")


def _blocks(path: os.PathLike | str, wanted: list[tuple[str, str]], delimiter: str | None,
            what: str, block_bytes: int | None) -> tuple[pathlib.Path, Iterator[delimited.Table]]:
  """The path and the blocks of the columns `wanted` ((flag, column name) pairs) of a table.

  The columns are checked here, before any row is read.
  """
  path = pathlib.Path(path)
  columns = list(dict.fromkeys(column for _, column in wanted))
  if path.is_dir():
    files = delimited.parquet_files(path, what)
    for file in files:
      _check_columns(delimited.parquet_columns(file, what), wanted, f"{file}")

    def folder_blocks():
      for file in files:
        yield from delimited.parquet_blocks(file, columns, what, block_bytes=block_bytes)

    return path, folder_blocks()
  path = delimited.check_readable(path, what)
  if is_parquet(path):
    _check_columns(delimited.parquet_columns(path, what), wanted, f"{path}")
    return path, delimited.parquet_blocks(path, columns, what, block_bytes=block_bytes)
  delimiter = default_delimiter(path) if delimiter is None else delimiter
  if len(delimiter) != 1:
    raise DataError(f"{path}: delimiter {delimiter!r} is not one character; expected e.g. "
                    f"',' or a tab (--delimiter)")
  names = delimited.read_header(path, delimiter, quoting=True, what=what)
  delimited.check_unique_header(path, names)
  _check_columns(names, wanted, f"{path}:1")
  return path, delimited.text_blocks(path, names, columns, delimiter=delimiter, quoting=True,
                                     what=what, block_bytes=block_bytes)


def read_interactions(path: os.PathLike | str, *, user_col: str, item_col: str,
                      time_col: str | None = None, delimiter: str | None = None,
                      block_bytes: int | None = None) -> Interactions:
  """Reads one interaction per row; without `time_col` rows are in time order.

  `block_bytes` is the size of the blocks the file is read in (default
  delimited.BLOCK_BYTES); the result does not depend on it.
  """
  wanted = [("--user_col", user_col), ("--item_col", item_col)]
  if time_col is not None:
    wanted.append(("--time_col", time_col))
  path, blocks = _blocks(path, wanted, delimiter, "interactions table", block_bytes)
  return delimited.read_interactions(blocks, user=user_col, item=item_col, time=time_col,
                                     source=str(path))


def read_items(path: os.PathLike | str, *, item_key_col: str, attribute_cols: Sequence[str],
               list_sep: str | None = None, delimiter: str | None = None,
               block_bytes: int | None = None) -> ItemAttributes:
  """Reads one item per row, each attribute column one field.

  Args:
    path: the file.
    item_key_col: the column of item ids, as in the interactions.
    attribute_cols: the attribute columns, in field order.
    list_sep: splits every attribute cell into several values (e.g. "|");
      None keeps each cell one value. List-typed Parquet columns are lists
      either way.
    delimiter: for text files; None follows the extension.
    block_bytes: the size of the blocks the file is read in (default
      delimited.BLOCK_BYTES); the result does not depend on it.
  """
  if item_key_col in attribute_cols:
    raise DataError(f"{path}: --attribute_cols names {item_key_col!r}, the item key column; "
                    f"expected attribute columns only")
  wanted = [("--item_key_col", item_key_col)] + [("--attribute_cols", c) for c in attribute_cols]
  path, blocks = _blocks(path, wanted, delimiter, "item table", block_bytes)
  return delimited.read_items(blocks, key=item_key_col,
                              fields={column: (column, list_sep) for column in attribute_cols},
                              source=str(path))
