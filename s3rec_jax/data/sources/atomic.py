"""RecBole atomic files: `.inter` (interactions) and `.item` (item features).

Both are tab-separated text with a header of `name:type` columns, e.g.
`user_id:token<TAB>item_id:token<TAB>rating:float<TAB>timestamp:float`. RecBole
defines four types: `token` (one string), `token_seq` (strings separated by
spaces), `float` and `float_seq`. Cells are taken literally (no quoting).
Columns are found by name, the part before the colon.
"""

from __future__ import annotations

import os
import pathlib
from typing import Sequence

from s3rec_jax.data.dataset import DataError
from s3rec_jax.data.sources import delimited
from s3rec_jax.data.sources import Interactions, ItemAttributes

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
ATTRIBUTE_TYPES = ("token", "token_seq")


def read_fields(path: pathlib.Path, what: str) -> dict[str, tuple[str, str]]:
  """The header: field name -> (header column, type), in header order."""
  header = delimited.read_header(path, "\t", quoting=False, what=what)
  delimited.check_unique_header(path, header)
  fields = {}
  for column in header:
    name, colon, field_type = column.rpartition(":")
    if not colon or not name:
      raise DataError(f"{path}:1: column {column!r} has no type; expected 'name:type' with type "
                      f"one of {', '.join(RECBOLE_TYPES)}")
    if field_type not in RECBOLE_TYPES:
      raise DataError(f"{path}:1: column {column!r} has type {field_type!r}; expected one of "
                      f"{', '.join(RECBOLE_TYPES)}")
    if name in fields:
      raise DataError(f"{path}:1: field {name!r} appears twice in the header; expected "
                      f"distinct field names")
    fields[name] = (column, field_type)
  return fields


def _column(path: pathlib.Path, fields: dict[str, tuple[str, str]], name: str, flag: str,
            types: Sequence[str], role: str) -> str:
  if name not in fields:
    columns = [column for column, _ in fields.values()]
    raise DataError(f"{path}:1: no column {name!r} ({role}, {flag}); columns are "
                    f"{delimited.describe_columns(columns)}")
  column, field_type = fields[name]
  if field_type not in types:
    raise DataError(f"{path}:1: column {column!r} has type {field_type!r}; expected "
                    f"{' or '.join(types)} for {role} ({flag})")
  return column


def read_interactions(path: os.PathLike | str, *, user_field: str = "user_id",
                      item_field: str = "item_id", time_field: str | None = None,
                      block_bytes: int | None = None) -> Interactions:
  """Reads a `.inter` file.

  Args:
    path: the file.
    user_field: the field of user ids (type token).
    item_field: the field of item ids (type token).
    time_field: the field of times (type float, or token holding numbers);
      None uses `timestamp` when the file has it, else file order.
    block_bytes: the size of the blocks the file is read in (default
      delimited.BLOCK_BYTES); the result does not depend on it.
  """
  what = "RecBole .inter file"
  path = delimited.check_readable(path, what)
  fields = read_fields(path, what)
  user_column = _column(path, fields, user_field, "--user_field", ("token",), "the user ids")
  item_column = _column(path, fields, item_field, "--item_field", ("token",), "the item ids")
  if time_field is None and "timestamp" in fields:
    time_field = "timestamp"
  columns = [user_column, item_column]
  time_column = None
  if time_field is not None:
    time_column = _column(path, fields, time_field, "--time_field", ("float", "token"),
                          "the times")
    columns.append(time_column)
  header = [column for column, _ in fields.values()]
  blocks = delimited.text_blocks(path, header, columns, delimiter="\t", quoting=False, what=what,
                                 block_bytes=block_bytes)
  return delimited.read_interactions(blocks, user=user_column, item=item_column, time=time_column,
                                     source=str(path))


def read_items(path: os.PathLike | str, *, item_field: str = "item_id",
               attribute_fields: Sequence[str] | None = None,
               block_bytes: int | None = None) -> ItemAttributes:
  """Reads a `.item` file.

  Args:
    path: the file.
    item_field: the field of item ids (type token).
    attribute_fields: fields to read as attributes (type token or token_seq;
      a token_seq cell holds several values separated by spaces); None reads
      every token and token_seq field but the item ids, in header order.
    block_bytes: the size of the blocks the file is read in (default
      delimited.BLOCK_BYTES); the result does not depend on it.
  """
  what = "RecBole .item file"
  path = delimited.check_readable(path, what)
  fields = read_fields(path, what)
  item_column = _column(path, fields, item_field, "--item_field", ("token",), "the item ids")
  candidates = [name for name, (_, field_type) in fields.items()
                if field_type in ATTRIBUTE_TYPES and name != item_field]
  if attribute_fields is None:
    attribute_fields = candidates
  for name in attribute_fields:
    if name == item_field:
      raise DataError(f"{path}:1: --attribute_fields names {name!r}, the item id field; "
                      f"expected attribute fields ({', '.join(candidates) or 'none here'})")
    if name not in fields:
      raise DataError(f"{path}:1: no field {name!r} (--attribute_fields); the token and "
                      f"token_seq fields here are {', '.join(map(repr, candidates)) or 'none'}")
    _column(path, fields, name, "--attribute_fields", ATTRIBUTE_TYPES, "an attribute field")
  header = [column for column, _ in fields.values()]
  columns = list(dict.fromkeys([item_column] + [fields[name][0] for name in attribute_fields]))
  blocks = delimited.text_blocks(path, header, columns, delimiter="\t", quoting=False, what=what,
                                 block_bytes=block_bytes)
  return delimited.read_items(
      blocks, key=item_column, source=str(path),
      fields={name: (fields[name][0], " " if fields[name][1] == "token_seq" else None)
              for name in attribute_fields})
