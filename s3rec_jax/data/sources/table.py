"""CSV, TSV and Parquet tables: interactions and item attributes by column name.

The format follows the extension: `.parquet`/`.pq` is Parquet, anything else
delimited text with a header line (`.tsv`/`.tab` tab-separated, otherwise
comma-separated, unless a delimiter is given; `.gz`, `.bz2` and `.xz` are
decompressed). Text cells may be quoted with `"`. Id columns are read as
strings, so integer and string ids both work and keep their spelling.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

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


def _read(path: os.PathLike | str, wanted: list[tuple[str, str]], delimiter: str | None,
          what: str) -> delimited.Table:
  """Reads the columns `wanted` ((flag, column name) pairs) of one file."""
  path = delimited.check_readable(path, what)
  if is_parquet(path):
    names, where = delimited.parquet_columns(path, what), f"{path}"
  else:
    delimiter = default_delimiter(path) if delimiter is None else delimiter
    if len(delimiter) != 1:
      raise DataError(f"{path}: delimiter {delimiter!r} is not one character; expected e.g. "
                      f"',' or a tab (--delimiter)")
    names, where = delimited.read_header(path, delimiter, quoting=True, what=what), f"{path}:1"
    delimited.check_unique_header(path, names)
  for flag, column in wanted:
    if column not in names:
      raise DataError(f"{where}: no column {column!r} ({flag}); columns are "
                      f"{delimited.describe_columns(names)}")
  columns = list(dict.fromkeys(column for _, column in wanted))
  if is_parquet(path):
    return delimited.read_parquet(path, columns, what)
  return delimited.read_text(path, names, columns, delimiter=delimiter, quoting=True, what=what)


def read_interactions(path: os.PathLike | str, *, user_col: str, item_col: str,
                      time_col: str | None = None, delimiter: str | None = None) -> Interactions:
  """Reads one interaction per row; without `time_col` rows are in time order."""
  wanted = [("--user_col", user_col), ("--item_col", item_col)]
  if time_col is not None:
    wanted.append(("--time_col", time_col))
  table = _read(path, wanted, delimiter, "interactions table")
  users, user_names = delimited.id_codes(table, user_col, "a user id")
  items, item_names = delimited.id_codes(table, item_col, "an item id")
  times = delimited.times(table, time_col) if time_col is not None else None
  return Interactions(users=users, user_names=user_names, items=items, item_names=item_names,
                      times=times, source=str(table.path))


def read_items(path: os.PathLike | str, *, item_key_col: str, attribute_cols: Sequence[str],
               list_sep: str | None = None, delimiter: str | None = None) -> ItemAttributes:
  """Reads one item per row, each attribute column one field.

  Args:
    path: the file.
    item_key_col: the column of item ids, as in the interactions.
    attribute_cols: the attribute columns, in field order.
    list_sep: splits every attribute cell into several values (e.g. "|");
      None keeps each cell one value. List-typed Parquet columns are lists
      either way.
    delimiter: for text files; None follows the extension.
  """
  if item_key_col in attribute_cols:
    raise DataError(f"{path}: --attribute_cols names {item_key_col!r}, the item key column; "
                    f"expected attribute columns only")
  wanted = [("--item_key_col", item_key_col)] + [("--attribute_cols", c) for c in attribute_cols]
  table = _read(path, wanted, delimiter, "item table")
  codes, item_names = delimited.id_codes(table, item_key_col, "an item id")
  delimited.check_distinct(table, item_key_col, codes, "item")
  fields = {column: delimited.value_lists(table, column, list_sep) for column in attribute_cols}
  return ItemAttributes(item_names=item_names, fields=fields, source=str(table.path))
