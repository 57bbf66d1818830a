"""Turns a source dataset into the files train.py reads: `s3rec-prepare`.

Usage:

  s3rec-prepare atomic --inter data/ml.inter [--item data/ml.item] \\
      [--attribute_fields genre,director] --name ML --output data/
  s3rec-prepare csv --interactions ratings.csv --user_col user --item_col movie \\
      [--time_col ts] [--items movies.parquet --item_key_col movie \\
      --attribute_cols genres,year --list_sep '|'] --name ML --output data/
  s3rec-prepare amazon --reviews reviews_Beauty_5.json.gz \\
      --meta meta_Beauty.json.gz --name Beauty --output data/

Sources (one module each in s3rec_jax/data/sources/): RecBole atomic files, CSV /
TSV / Parquet tables, and the Amazon review dumps, prepared as the S3-Rec
authors did (see s3rec_jax/data/sources/amazon.py for their rules).

Every source goes through one core:

1. Reader rules (the Amazon rating rule) drop rows.
2. Each user's interactions are ordered by time with a stable sort, so equal
   times keep source order; without a time column, source order is time order.
3. `--dedup` keeps only the first (earliest) interaction of each (user, item).
4. k-core filtering, repeated until nothing changes: users need at least
   max(--min_user_interactions, 3) interactions (3: a train, a valid and a
   test item), items at least --min_item_interactions. Each pass applies the
   user rule, then the item rule; the result is the largest subset in which
   both hold, whatever the order.
5. Dense ids, all from 1:
   - users in order of first appearance in the interaction source;
   - items in order of first appearance walking the output sequences (users
     in dense order, each in time order);
   - attributes field by field, in the order of the attribute fields, and
     within a field in order of first appearance walking items by dense id
     (each item's values in their order in the source cell). Values found
     only on items that were filtered out get no id; with
     --min_attribute_count K, values on fewer than K kept items get none.
   Items of the item file that no kept interaction mentions are left out;
   kept items the item file lacks, or whose cells are empty, get `[]`.
6. Files, written together or not at all: into a temp folder next to
   --output, then moved in with os.replace; a failure leaves --output as it
   was. A NAME_sample.txt already in --output belongs to the old data and is
   removed, so train.py draws new negatives.

   NAME.txt                  `user item_1 item_2 ...`, one user a line, dense ids
   NAME_item2attributes.json `{"item": [attribute ids]}` for every item
   NAME_ids.json             dense -> original ids: {"format": "s3rec-jax ids v1",
                             "users": [...], "items": [...], "attributes":
                             [[field, value], ...], "attribute_fields":
                             {field: [first id, last id]}} (dense id k is entry
                             k - 1; a field with no values has last = first - 1)
   NAME_stats.json           sizes (the columns of the paper's dataset table),
                             what each rule removed, the options and the source
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
import sys
import tempfile
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
from absl import flags

from s3rec_jax.core import command
from s3rec_jax.core import errors
from s3rec_jax.core import files
from s3rec_jax.data.dataset import MIN_SEQUENCE_LENGTH, DataError
from s3rec_jax.data.sources import Interactions, ItemAttributes, codes_by_first_appearance
from s3rec_jax.data.sources import index_dtype

PROG = "s3rec-prepare"
IDS_FORMAT = "s3rec-jax ids v1"
STATS_FORMAT = "s3rec-jax stats v1"
DEFAULT_MIN_INTERACTIONS = 5  # the paper's 5-core
# Item ids live in int32 arrays next to a mask id of max_item + 1.
_MAX_ITEMS = np.iinfo(np.int32).max - 1
_MAX_ATTRIBUTES = np.iinfo(np.int32).max
_USERS_PER_PIECE = 4096  # users per piece of NAME.txt while writing

PathLike = str | os.PathLike
Log = Callable[[str], object]


@dataclasses.dataclass(frozen=True)
class Options:
  """Filtering options shared by every source."""

  min_user_interactions: int = DEFAULT_MIN_INTERACTIONS
  min_item_interactions: int = DEFAULT_MIN_INTERACTIONS
  dedup: bool = False
  min_attribute_count: int = 0

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if field.name != "dedup" and (type(value) is not int or value < 0):
        raise errors.UserError(f"--{field.name} is {value!r}; expected an integer >= 0")

  @property
  def user_threshold(self) -> int:
    return max(self.min_user_interactions, MIN_SEQUENCE_LENGTH)


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedDataset:
  """A prepared dataset: dense sequences, item attributes, id maps and stats."""

  name: str
  user_ids: tuple[str, ...]  # original id of dense user k at [k - 1]
  item_ids: tuple[str, ...]  # original id of dense item k at [k - 1]
  attributes: tuple[tuple[str, str], ...]  # (field, value) of dense attribute k at [k - 1]
  attribute_fields: dict[str, tuple[int, int]]  # field -> (first, last) dense id
  offsets: np.ndarray  # [U + 1] int64: dense user k's items are items[offsets[k-1]:offsets[k]]
  items: np.ndarray  # [N] int32 dense item ids
  attribute_offsets: np.ndarray  # [I + 1] int64, the same for items' attributes
  attribute_values: np.ndarray  # [pairs] int32 dense attribute ids, sorted per item
  stats: dict
  paths: tuple[pathlib.Path, ...] = ()

  def sequence(self, user: int) -> np.ndarray:
    """Dense user `user`'s items (dense ids, time order)."""
    return self.items[self.offsets[user - 1]:self.offsets[user]]

  def item_attributes(self, item: int) -> np.ndarray:
    """Dense item `item`'s attribute ids, sorted."""
    return self.attribute_values[self.attribute_offsets[item - 1]:self.attribute_offsets[item]]

  def ids_document(self) -> dict:
    return {"format": IDS_FORMAT, "users": list(self.user_ids), "items": list(self.item_ids),
            "attributes": [list(a) for a in self.attributes],
            "attribute_fields": {f: list(r) for f, r in self.attribute_fields.items()}}

  def file_texts(self) -> dict[str, str]:
    """File name -> contents of every file to write."""
    return {name: "".join(pieces) for name, pieces in self.file_pieces().items()}

  def file_pieces(self) -> dict[str, Iterable[str]]:
    """File name -> contents of every file to write, as pieces to write one after another.

    NAME.txt comes a few thousand users at a time, so no text of every
    interaction is ever held at once.
    """
    values = self.attribute_values.tolist()
    attribute_map = {str(item): values[self.attribute_offsets[item - 1]:
                                       self.attribute_offsets[item]]
                     for item in range(1, len(self.item_ids) + 1)}
    return {
        f"{self.name}.txt": self._sequence_lines(),
        f"{self.name}_item2attributes.json": [json.dumps(attribute_map) + "\n"],
        f"{self.name}_ids.json": [json.dumps(self.ids_document()) + "\n"],
        f"{self.name}_stats.json": [json.dumps(self.stats, indent=2) + "\n"],
    }

  def _sequence_lines(self) -> Iterator[str]:
    """NAME.txt: `user item_1 item_2 ...` a line, in pieces of _USERS_PER_PIECE users."""
    num_users = len(self.user_ids)
    if not num_users:
      yield "\n"
    for start in range(1, num_users + 1, _USERS_PER_PIECE):
      stop = min(start + _USERS_PER_PIECE, num_users + 1)
      first = self.offsets[start - 1]
      tokens = self.items[first:self.offsets[stop - 1]].astype(str).tolist()
      yield "".join(f"{user} " + " ".join(tokens[self.offsets[user - 1] - first:
                                                 self.offsets[user] - first]) + "\n"
                    for user in range(start, stop))


# ----------------------------------------------------------------------------
# The shared core: filter, number, write.


class _Removals:
  """What each rule removed: users, items and interactions that were there before."""

  def __init__(self, interactions: Interactions):
    self._users, self._items = interactions.users, interactions.items
    self._num_users = interactions.user_names.shape[0]
    self._num_items = interactions.item_names.shape[0]
    self.rules: dict[str, dict] = {}

  def _present(self, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return (np.bincount(self._users[keep], minlength=self._num_users) > 0,
            np.bincount(self._items[keep], minlength=self._num_items) > 0)

  def declare(self, rule: str, **about) -> None:
    """Lists `rule` (with facts such as its threshold) even if it removes nothing."""
    self.rules.setdefault(rule, {"rule": rule, **about, "users": 0, "items": 0,
                                 "interactions": 0})

  def apply(self, rule: str, keep: np.ndarray, new_keep: np.ndarray) -> np.ndarray:
    """Records the step from `keep` to `new_keep` under `rule`; returns new_keep."""
    self.declare(rule)
    entry = self.rules[rule]
    dropped = int(keep.sum() - new_keep.sum())
    if dropped:
      (users_before, items_before), (users_after, items_after) = (self._present(keep),
                                                                  self._present(new_keep))
      entry["users"] += int(users_before.sum() - users_after.sum())
      entry["items"] += int(items_before.sum() - items_after.sum())
      entry["interactions"] += dropped
    return new_keep

  def reorder(self, users: np.ndarray, items: np.ndarray) -> None:
    """The rows' user and item codes in the order `keep` masks from now on (shared, not copied)."""
    self._users, self._items = users, items

  def summary(self) -> str:
    return "; ".join(f"{r['rule']} removed {r['interactions']} interactions, {r['users']} users, "
                     f"{r['items']} items" for r in self.rules.values())


def _filter(interactions: Interactions,
            options: Options) -> tuple[np.ndarray, np.ndarray, _Removals, int]:
  """Orders and filters the rows.

  Returns:
    (keep, removals, passes, users, items): the rows' user and item codes in output order
    (grouped by user code, each user in time order), of which `keep` marks the kept ones;
    passes is the number of k-core passes.
  """
  n = interactions.num_rows
  if n == 0:
    raise DataError(f"{interactions.source}: no interactions; expected at least one row")
  removals = _Removals(interactions)
  keep = np.ones(n, bool)
  for rule, kept in interactions.row_filters:
    keep = removals.apply(rule, keep, keep & kept)
    if not keep.any():
      raise DataError(f"{interactions.source}: no interactions left after the rule {rule} "
                      f"(it removed all {n}); expected some rows to pass it")
  # Stable sorts: by time, then by user, so ties keep source order. Row numbers as int32
  # where they fit: a third less memory at this, the peak of a large table's preparation.
  index = index_dtype(n)
  order = (np.arange(n, dtype=index) if interactions.times is None
           else np.argsort(interactions.times, kind="stable").astype(index))
  order = order[np.argsort(interactions.users[order], kind="stable")]
  users, items, keep = interactions.users[order], interactions.items[order], keep[order]
  del order
  removals.reorder(users, items)
  num_users, num_items = interactions.user_names.shape[0], interactions.item_names.shape[0]
  if options.dedup:
    rows = np.flatnonzero(keep)
    _, first = np.unique(users[rows].astype(np.int64) * num_items + items[rows],
                         return_index=True)
    deduped = np.zeros(n, bool)
    deduped[rows[first]] = True
    keep = removals.apply("dedup", keep, deduped)
  user_rule = "min_user_interactions"
  about_user = {"threshold": options.user_threshold}
  if options.user_threshold > options.min_user_interactions:
    about_user["note"] = (f"--min_user_interactions {options.min_user_interactions} raised to "
                          f"{MIN_SEQUENCE_LENGTH}: each sequence needs a train, a valid and a "
                          f"test item")
  removals.declare(user_rule, **about_user)
  removals.declare("min_item_interactions", threshold=options.min_item_interactions)
  passes = 0
  while True:
    passes += 1
    user_count = np.bincount(users[keep], minlength=num_users)
    keep = removals.apply(user_rule, keep, keep & (user_count >= options.user_threshold)[users])
    item_count = np.bincount(items[keep], minlength=num_items)
    item_ok = (item_count >= options.min_item_interactions)[items]
    if not (keep & ~item_ok).any():
      break  # the user rule held before the item rule, which removed nothing
    keep = removals.apply("min_item_interactions", keep, keep & item_ok)
  if not keep.any():
    raise DataError(
        f"{interactions.source}: no interactions left after filtering: users need at least "
        f"{options.user_threshold} interactions (--min_user_interactions "
        f"{options.min_user_interactions}, never below {MIN_SEQUENCE_LENGTH}) and items at least "
        f"{options.min_item_interactions} (--min_item_interactions); {removals.summary()}; "
        f"expected lower thresholds or more data")
  return keep, removals, passes, users, items


def _number_attributes(attributes: ItemAttributes | None, fields: Sequence[str],
                       item_index: Mapping[str, int], num_items: int,
                       min_count: int) -> tuple[list, dict, np.ndarray, np.ndarray]:
  """Dense attribute ids (see the module docstring) and each item's set.

  Returns:
    (names [(field, value)], ranges {field: (first, last)}, offsets [I + 1],
    values [pairs] int32 sorted per item).
  """
  names, ranges = [], {}
  pair_items, pair_attributes = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
  next_id = 1
  if attributes is not None:
    record_item = np.fromiter((item_index.get(n, 0) for n in attributes.item_names), np.int64,
                              count=attributes.item_names.shape[0])
    for field in fields:
      records, values = attributes.fields[field]
      dense = record_item[records]
      kept = dense > 0
      order = np.argsort(dense[kept], kind="stable")  # by item; cell order within
      dense, values = dense[kept][order], values[kept][order]
      codes, distinct = codes_by_first_appearance(values)
      width = max(distinct.shape[0], 1)
      pairs = np.unique(dense * width + codes)  # one per (item, value)
      dense, codes = pairs // width, pairs % width
      if min_count > 0:
        enough = np.bincount(codes, minlength=distinct.shape[0]) >= min_count
        renumber = np.cumsum(enough) - 1
        kept = enough[codes]
        dense, codes, distinct = dense[kept], renumber[codes[kept]], distinct[enough]
      ranges[field] = (next_id, next_id + distinct.shape[0] - 1)
      names.extend((field, str(value)) for value in distinct)
      pair_items.append(dense)
      pair_attributes.append(codes + next_id)
      next_id += distinct.shape[0]
  if next_id - 1 > _MAX_ATTRIBUTES:
    raise DataError(f"{attributes.source}: {next_id - 1} attributes; expected at most "
                    f"{_MAX_ATTRIBUTES}")
  item_col, attribute_col = np.concatenate(pair_items), np.concatenate(pair_attributes)
  keys = np.unique(item_col * next_id + attribute_col)
  counts = np.bincount(keys // next_id, minlength=num_items + 1)[1:]
  offsets = np.zeros(num_items + 1, np.int64)
  np.cumsum(counts, out=offsets[1:])
  return names, ranges, offsets, (keys % next_id).astype(np.int32)


def build(interactions: Interactions, attributes: ItemAttributes | None = None, *, name: str,
          options: Options = Options(), attribute_fields: Sequence[str] | None = None,
          source: Mapping[str, object] | None = None) -> PreparedDataset:
  """Filters and numbers a source's records (nothing is written).

  Args:
    interactions: the interactions, from a reader in s3rec_jax.data.sources.
    attributes: the item attributes, if any.
    name: the dataset name.
    options: filtering options.
    attribute_fields: the fields of `attributes` in id order; None = all, in
      their order there.
    source: what to record about the source in the stats.
  """
  check_name(name)
  keep, removals, passes, users, items = _filter(interactions, options)
  users, items = users[keep], items[keep]
  del keep
  # Rows are grouped by user code in increasing order (code order = source order): runs.
  starts = np.flatnonzero(np.concatenate([[True], users[1:] != users[:-1]]))
  user_codes = users[starts]
  offsets = np.append(starts, users.shape[0]).astype(np.int64)
  del users
  # Item codes in order of first appearance in the output; a count per code, no sort of rows.
  index = index_dtype(items.shape[0])
  first = np.full(interactions.item_names.shape[0], items.shape[0], index)
  np.minimum.at(first, items, np.arange(items.shape[0], dtype=index))
  seen = np.flatnonzero(first < items.shape[0])
  item_codes = seen[np.argsort(first[seen], kind="stable")]
  del first
  if item_codes.shape[0] > _MAX_ITEMS:
    raise DataError(f"{interactions.source}: {item_codes.shape[0]} items; expected at most "
                    f"{_MAX_ITEMS}")
  dense_item = np.zeros(interactions.item_names.shape[0], np.int32)  # ids fit: _MAX_ITEMS
  dense_item[item_codes] = np.arange(1, item_codes.shape[0] + 1)
  item_ids = tuple(str(n) for n in interactions.item_names[item_codes])
  if attributes is not None and attribute_fields is None:
    attribute_fields = list(attributes.fields)
  attribute_fields = list(attribute_fields or [])
  missing = [f for f in attribute_fields if attributes is None or f not in attributes.fields]
  if missing:
    raise errors.UserError(f"attribute fields {missing} were not read; expected some of "
                           f"{[] if attributes is None else list(attributes.fields)}")
  names, ranges, attribute_offsets, attribute_values = _number_attributes(
      attributes, attribute_fields, {n: k for k, n in enumerate(item_ids, start=1)},
      len(item_ids), options.min_attribute_count)
  prepared = PreparedDataset(
      name=name, user_ids=tuple(str(n) for n in interactions.user_names[user_codes]),
      item_ids=item_ids, attributes=tuple(names), attribute_fields=ranges, offsets=offsets,
      items=dense_item[items], attribute_offsets=attribute_offsets,
      attribute_values=attribute_values, stats={})
  prepared.stats.update(_stats(prepared, interactions, removals, passes, options, source or {}))
  return prepared


def _stats(prepared: PreparedDataset, interactions: Interactions, removals: _Removals,
           passes: int, options: Options, source: Mapping[str, object]) -> dict:
  num_users, num_items = len(prepared.user_ids), len(prepared.item_ids)
  num_interactions = int(prepared.items.shape[0])
  lengths = np.diff(prepared.offsets)
  per_item = np.diff(prepared.attribute_offsets)
  return {
      "format": STATS_FORMAT,
      "name": prepared.name,
      "users": num_users,
      "items": num_items,
      "interactions": num_interactions,
      "avg_sequence_length": num_interactions / num_users,
      "min_sequence_length": int(lengths.min()),
      "max_sequence_length": int(lengths.max()),
      "avg_interactions_per_item": num_interactions / num_items,
      "attributes": len(prepared.attributes),
      "attributes_per_field": {f: last - first + 1
                               for f, (first, last) in prepared.attribute_fields.items()},
      "avg_attributes_per_item": float(per_item.mean()),
      "items_without_attributes": int((per_item == 0).sum()),
      "sparsity": 1.0 - num_interactions / (num_users * num_items),
      "input": {"rows": interactions.num_rows, "users": int(interactions.user_names.shape[0]),
                "items": int(interactions.item_names.shape[0])},
      "removed": list(removals.rules.values()),
      "k_core_passes": passes,
      "options": {"min_user_interactions": options.min_user_interactions,
                  "min_item_interactions": options.min_item_interactions,
                  "effective_min_user_interactions": options.user_threshold,
                  "dedup": options.dedup, "min_attribute_count": options.min_attribute_count,
                  "time_order": "time column, stable" if interactions.times is not None
                                else "source order"},
      "source": dict(source),
  }


def check_name(name: str) -> None:
  """A dataset name that is one plain file-name stem train.py can load."""
  if (not name or name != name.strip() or "/" in name or os.sep in name
      or name.startswith(".") or "\0" in name):
    raise errors.UserError(f"--name {name!r}: expected a plain file-name stem such as 'Beauty'")
  if name == "synthetic":
    raise errors.UserError("--name 'synthetic' is train.py's built-in dataset; expected another "
                           "name")


def write(prepared: PreparedDataset, output: PathLike, *, log: Log = print) -> PreparedDataset:
  """Writes the files into `output`, all of them or none; returns them with their paths."""
  output = pathlib.Path(output)
  if output.exists() and not output.is_dir():
    raise DataError(f"{output}: exists and is not a folder; expected --output to be a folder")
  texts = prepared.file_pieces()
  parent = output.absolute().parent
  try:
    parent.mkdir(parents=True, exist_ok=True)
    temp = pathlib.Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent))
  except OSError as e:
    raise DataError(f"{output}: cannot create ({e.strerror}); expected a writable place for "
                    f"--output") from None
  try:
    for file_name, text in texts.items():
      with open(temp / file_name, "w", encoding="utf-8") as f:
        for piece in text:
          f.write(piece)
        f.flush()
        os.fsync(f.fileno())
    if output.is_dir():
      stale = output / f"{prepared.name}_sample.txt"
      if stale.exists():
        stale.unlink()
        log(f"removed {stale}: its negatives belong to the data being replaced")
      for file_name in texts:
        os.replace(temp / file_name, output / file_name)
    else:
      umask = os.umask(0)
      os.umask(umask)
      os.chmod(temp, 0o777 & ~umask)  # mkdtemp makes it private
      os.rename(temp, output)
  except OSError as e:
    raise DataError(f"{output}: cannot write ({e.strerror}); expected a writable folder") from None
  finally:
    shutil.rmtree(temp, ignore_errors=True)
  files.fsync_dir(output)
  files.fsync_dir(parent)
  return dataclasses.replace(prepared, paths=tuple(output / n for n in texts))


def _finish(prepared: PreparedDataset, output: PathLike | None, log: Log) -> PreparedDataset:
  if output is not None:
    prepared = write(prepared, output, log=log)
  for line in summary(prepared):
    log(line)
  return prepared


def summary(prepared: PreparedDataset) -> list[str]:
  """The stats table and the paths written, as lines."""
  s = prepared.stats
  per_field = ", ".join(f"{f} {n:,}" for f, n in s["attributes_per_field"].items())
  rows = [
      ("dataset", prepared.name),
      ("users", f"{s['users']:,}"),
      ("items", f"{s['items']:,}"),
      ("interactions", f"{s['interactions']:,}"),
      ("avg sequence length", f"{s['avg_sequence_length']:.2f}"),
      ("avg interactions per item", f"{s['avg_interactions_per_item']:.2f}"),
      ("sparsity", f"{100 * s['sparsity']:.2f}%"),
      ("attributes", f"{s['attributes']:,}" + (f" ({per_field})" if per_field else "")),
      ("avg attributes per item", f"{s['avg_attributes_per_item']:.2f}"),
  ]
  lines = [f"{label:<26}{value}" for label, value in rows]
  for rule in s["removed"]:
    threshold = f" (>= {rule['threshold']})" if "threshold" in rule else ""
    lines.append(f"removed by {rule['rule']}{threshold}: {rule['interactions']:,} interactions, "
                 f"{rule['users']:,} users, {rule['items']:,} items")
  lines.extend(f"wrote {path}" for path in prepared.paths)
  return lines


# ----------------------------------------------------------------------------
# One entry point per source.


def prepare_atomic(inter: PathLike, item: PathLike | None = None, *, name: str,
                   output: PathLike | None, user_field: str = "user_id",
                   item_field: str = "item_id", time_field: str | None = None,
                   attribute_fields: Sequence[str] | None = None, options: Options = Options(),
                   log: Log = print, block_bytes: int | None = None) -> PreparedDataset:
  """Prepares RecBole atomic files (see s3rec_jax.data.sources.atomic).

  Args:
    inter: the .inter file.
    item: the .item file, if any.
    name: the dataset name.
    output: the folder to write into; None writes nothing.
    user_field: the user id field.
    item_field: the item id field.
    time_field: the time field; None = `timestamp` if present, else file order.
    attribute_fields: .item fields to use, in id order; None = every token and
      token_seq field.
    options: filtering options.
    log: where the summary goes.
    block_bytes: the files are read in blocks of this many bytes (default
      sources.delimited.BLOCK_BYTES); the result does not depend on it.
  """
  from s3rec_jax.data.sources import atomic  # pylint: disable=g-import-not-at-top
  check_name(name)
  interactions = atomic.read_interactions(inter, user_field=user_field, item_field=item_field,
                                          time_field=time_field, block_bytes=block_bytes)
  attributes = None
  if item is not None:
    attributes = atomic.read_items(item, item_field=item_field, attribute_fields=attribute_fields,
                                   block_bytes=block_bytes)
  source = {"format": "atomic", "inter": str(inter), "item": None if item is None else str(item),
            "user_field": user_field, "item_field": item_field,
            "time_field": time_field or ("timestamp" if interactions.times is not None else None),
            "attribute_fields": None if attributes is None else list(attributes.fields)}
  prepared = build(interactions, attributes, name=name, options=options, source=source)
  return _finish(prepared, output, log)


def prepare_table(interactions: PathLike, *, user_col: str, item_col: str, name: str,
                  output: PathLike | None, time_col: str | None = None,
                  items: PathLike | None = None, item_key_col: str | None = None,
                  attribute_cols: Sequence[str] = (), list_sep: str | None = None,
                  delimiter: str | None = None, options: Options = Options(),
                  log: Log = print, block_bytes: int | None = None) -> PreparedDataset:
  """Prepares CSV / TSV / Parquet tables (see s3rec_jax.data.sources.table).

  Args:
    interactions: the interactions table: a file, or a folder of Parquet files.
    user_col: its user id column.
    item_col: its item id column.
    name: the dataset name.
    output: the folder to write into; None writes nothing.
    time_col: its time column; None = rows are in time order.
    items: the item table, if any.
    item_key_col: its item id column; None = the same name as item_col.
    attribute_cols: its attribute columns, in id order.
    list_sep: splits attribute cells into several values (e.g. "|").
    delimiter: for text files; None = tab for .tsv/.tab, else comma.
    options: filtering options.
    log: where the summary goes.
    block_bytes: the tables are read in blocks of this many bytes (default
      sources.delimited.BLOCK_BYTES); the result does not depend on it.
  """
  from s3rec_jax.data.sources import table  # pylint: disable=g-import-not-at-top
  check_name(name)
  records = table.read_interactions(interactions, user_col=user_col, item_col=item_col,
                                    time_col=time_col, delimiter=delimiter,
                                    block_bytes=block_bytes)
  attributes = None
  item_key_col = item_col if item_key_col is None else item_key_col
  if items is not None:
    if not attribute_cols:
      raise errors.UserError(f"{items}: no --attribute_cols; expected the item table's "
                             f"attribute columns")
    attributes = table.read_items(items, item_key_col=item_key_col,
                                  attribute_cols=_distinct(attribute_cols, "--attribute_cols"),
                                  list_sep=list_sep, delimiter=delimiter,
                                  block_bytes=block_bytes)
  source = {"format": "table", "interactions": str(interactions), "user_col": user_col,
            "item_col": item_col, "time_col": time_col,
            "items": None if items is None else str(items),
            "item_key_col": None if items is None else item_key_col,
            "attribute_cols": None if items is None else list(attribute_cols),
            "list_sep": list_sep, "delimiter": delimiter}
  prepared = build(records, attributes, name=name, options=options, source=source)
  return _finish(prepared, output, log)


def prepare_amazon(reviews: PathLike, meta: PathLike | None = None, *, name: str,
                   output: PathLike | None, rating_above: float = 0.0,
                   attribute_fields: Sequence[str] | None = None, options: Options = Options(),
                   log: Log = print) -> PreparedDataset:
  """Prepares the Amazon review dumps as the S3-Rec authors did (see s3rec_jax.data.sources.amazon).

  Args:
    reviews: the reviews file, e.g. reviews_Beauty_5.json.gz.
    meta: the metadata file, e.g. meta_Beauty.json.gz; None = no attributes.
    name: the dataset name.
    output: the folder to write into; None writes nothing.
    rating_above: reviews rated at most this are dropped (the reference: 0).
    attribute_fields: of `categories` and `brand`, in id order; None = both.
    options: filtering options.
    log: where the summary goes.
  """
  from s3rec_jax.data.sources import amazon  # pylint: disable=g-import-not-at-top
  check_name(name)
  fields = list(amazon.ATTRIBUTE_FIELDS if attribute_fields is None
                else _distinct(attribute_fields, "--attribute_fields"))
  records = amazon.read_reviews(reviews, rating_above=rating_above)
  attributes = None
  if meta is not None:
    attributes = amazon.read_meta(meta, items=set(records.item_names.tolist()),
                                  attribute_fields=fields)
  source = {"format": "amazon", "reviews": str(reviews),
            "meta": None if meta is None else str(meta), "rating_above": rating_above,
            "attribute_fields": fields if meta is not None else None}
  prepared = build(records, attributes, name=name, options=options, source=source)
  # The reference keeps brands and categories in one namespace of strings.
  prepared.stats["reference_attributes"] = len({value for _, value in prepared.attributes})
  prepared.stats["reference_attributes_note"] = (
      "distinct attribute strings across fields: the reference numbers brands and categories "
      "in one namespace, so a brand and a category spelt alike are one attribute there")
  return _finish(prepared, output, log)


def _distinct(names: Sequence[str], flag: str) -> list[str]:
  names = list(names)
  for k, n in enumerate(names):
    if n in names[:k]:
      raise errors.UserError(f"{flag}: {n!r} appears twice; expected each field once")
  return names


# ----------------------------------------------------------------------------
# Command line.


def _field_list(names: Sequence[str] | None) -> list[str] | None:
  """A comma-separated list flag's names, empty ones dropped (None: the flag was not given)."""
  return None if names is None else [part.strip() for part in names if part.strip()]


def _delimiter(text: str | None) -> str | None:
  return None if text is None else {"\\t": "\t", "tab": "\t"}.get(text, text)


def _count(text: str | int) -> int:
  """The value of a count flag; a usage error (naming the flag, by absl) unless an integer >= 0."""
  try:
    value = int(text)
  except (TypeError, ValueError):
    value = -1
  if value < 0:
    raise errors.UsageError(f"{text!r} is not an integer >= 0")
  return value


class _CountParser(flags.IntegerParser):
  """Integers >= 0; anything else is refused with `_count`'s message."""

  def __init__(self):
    super().__init__(lower_bound=0)

  def parse(self, argument):
    return _count(argument)


SOURCES = {
    "atomic": "RecBole .inter (and .item) files",
    "csv": "CSV, TSV or Parquet tables, by extension",
    "amazon": "Amazon reviews and metadata, as the S3-Rec authors prepared them",
}

FLAGS = command.new_flags()

_EVERY = "every source"
_NAME = flags.DEFINE_string("name", None, "dataset name: writes NAME.txt, ... (required)",
                            flag_values=FLAGS, module_name=_EVERY)
_OUTPUT = flags.DEFINE_string("output", None, "folder to write the files into (required)",
                              flag_values=FLAGS, module_name=_EVERY)
_MIN_USER_INTERACTIONS = flags.DEFINE(
    _CountParser(), "min_user_interactions", DEFAULT_MIN_INTERACTIONS,
    "k-core: fewest interactions per user (at least 3 apply; 0 = only those 3)",
    flag_values=FLAGS, serializer=flags.ArgumentSerializer(), module_name=_EVERY)
_MIN_ITEM_INTERACTIONS = flags.DEFINE(
    _CountParser(), "min_item_interactions", DEFAULT_MIN_INTERACTIONS,
    "k-core: fewest interactions per item (0 = off)",
    flag_values=FLAGS, serializer=flags.ArgumentSerializer(), module_name=_EVERY)
_DEDUP = flags.DEFINE_bool("dedup", False,
                           "keep only the earliest interaction of each (user, item)",
                           flag_values=FLAGS, module_name=_EVERY)
_MIN_ATTRIBUTE_COUNT = flags.DEFINE(
    _CountParser(), "min_attribute_count", 0,
    "drop attribute values found on fewer kept items; default 0",
    flag_values=FLAGS, serializer=flags.ArgumentSerializer(), module_name=_EVERY)

_ATOMIC = "atomic source"
_INTER = flags.DEFINE_string("inter", None, "the .inter file (required)", flag_values=FLAGS,
                             module_name=_ATOMIC)
_ITEM = flags.DEFINE_string("item", None, "the .item file (attributes)", flag_values=FLAGS,
                            module_name=_ATOMIC)
_USER_FIELD = flags.DEFINE_string("user_field", "user_id", "the user id field",
                                  flag_values=FLAGS, module_name=_ATOMIC)
_ITEM_FIELD = flags.DEFINE_string("item_field", "item_id", "the item id field",
                                  flag_values=FLAGS, module_name=_ATOMIC)
_TIME_FIELD = flags.DEFINE_string("time_field", None,
                                  "default: timestamp if present, else file order",
                                  flag_values=FLAGS, module_name=_ATOMIC)

_ATTRIBUTE_FIELDS = flags.DEFINE_list(
    "attribute_fields", None,
    "comma-separated fields, in id order: with atomic, .item fields (default: every "
    "token/token_seq field; needs --item); with amazon, categories and/or brand (default: "
    "categories,brand; needs --meta)",
    flag_values=FLAGS, module_name="atomic and amazon sources")

_CSV = "csv source"
_INTERACTIONS = flags.DEFINE_string("interactions", None,
                                    "the interactions table, or a folder of Parquet files "
                                    "(required)",
                                    flag_values=FLAGS, module_name=_CSV)
_USER_COL = flags.DEFINE_string("user_col", None, "its user id column (required)",
                                flag_values=FLAGS, module_name=_CSV)
_ITEM_COL = flags.DEFINE_string("item_col", None, "its item id column (required)",
                                flag_values=FLAGS, module_name=_CSV)
_TIME_COL = flags.DEFINE_string("time_col", None, "default: rows are in time order",
                                flag_values=FLAGS, module_name=_CSV)
_ITEMS = flags.DEFINE_string("items", None, "the item table (attributes)", flag_values=FLAGS,
                             module_name=_CSV)
_ITEM_KEY_COL = flags.DEFINE_string("item_key_col", None,
                                    "its item id column (default: --item_col)",
                                    flag_values=FLAGS, module_name=_CSV)
_ATTRIBUTE_COLS = flags.DEFINE_list("attribute_cols", [],
                                    "comma-separated attribute columns of --items",
                                    flag_values=FLAGS, module_name=_CSV)
_LIST_SEP = flags.DEFINE_string("list_sep", None,
                                "splits attribute cells into several values, e.g. '|'",
                                flag_values=FLAGS, module_name=_CSV)
_DELIMITER = flags.DEFINE_string(
    "delimiter", None, "text delimiter, '\\t' or tab for a tab (default: tab for .tsv/.tab, "
    "else comma)", flag_values=FLAGS, module_name=_CSV)

_AMAZON = "amazon source"
_REVIEWS = flags.DEFINE_string("reviews", None, "e.g. reviews_Beauty_5.json.gz (required)",
                               flag_values=FLAGS, module_name=_AMAZON)
_META = flags.DEFINE_string("meta", None, "e.g. meta_Beauty.json.gz", flag_values=FLAGS,
                            module_name=_AMAZON)
_RATING_ABOVE = flags.DEFINE_float("rating_above", 0.0,
                                   "keep reviews rated above this; default 0.0",
                                   flag_values=FLAGS, module_name=_AMAZON)

# Each source's own flags, its required ones first.
_FLAGS_OF = {
    "atomic": ("inter", "item", "attribute_fields", "user_field", "item_field", "time_field"),
    "csv": ("interactions", "user_col", "item_col", "time_col", "items", "item_key_col",
            "attribute_cols", "list_sep", "delimiter"),
    "amazon": ("reviews", "meta", "rating_above", "attribute_fields"),
}
_REQUIRED = {"atomic": ("inter",), "csv": ("interactions", "user_col", "item_col"),
             "amazon": ("reviews",)}
_COMMON_REQUIRED = ("name", "output")

_USAGE = (f"{PROG} SOURCE --name NAME --output FOLDER [flags]: turns a source dataset into "
          "NAME.txt, NAME_item2attributes.json, NAME_ids.json and NAME_stats.json for "
          "train.py.\n\nsources:\n"
          + "\n".join(f"  {name:<7} {text}" for name, text in SOURCES.items())
          + "\n\nList flags take comma-separated values (--attribute_cols genres,year).")


def _check_usage(words: Sequence[str]) -> str:
  """The source; a usage error for a missing or unknown one, flags it lacks, stray words."""
  if not words:
    raise errors.UsageError("name a source: " + ", ".join(SOURCES))
  source = words[0]
  if source not in SOURCES:
    raise errors.UsageError(f"unknown source {source!r}; expected one of " + ", ".join(SOURCES))
  others = sorted({n for names in _FLAGS_OF.values() for n in names} - set(_FLAGS_OF[source]))
  command.refuse_flags(FLAGS, others, f"with `{PROG} {source}`")
  command.only_words(words, 1, "one SOURCE, then --flags")
  missing = [f"--{n}" for n in (*_REQUIRED[source], *_COMMON_REQUIRED) if FLAGS[n].value is None]
  if missing:
    verb = "is" if len(missing) == 1 else "are"
    raise errors.UsageError(f"{', '.join(missing)} {verb} required with `{PROG} {source}`")
  attribute_fields = _field_list(_ATTRIBUTE_FIELDS.value)
  if source == "atomic" and _ITEM.value is None and attribute_fields is not None:
    raise errors.UsageError("--attribute_fields needs --item")
  if source == "amazon" and _META.value is None and attribute_fields is not None:
    raise errors.UsageError("--attribute_fields needs --meta")
  attribute_cols = _field_list(_ATTRIBUTE_COLS.value)
  if source == "csv" and _ITEMS.value is not None and not attribute_cols:
    raise errors.UsageError("--items needs --attribute_cols")
  if source == "csv" and _ITEMS.value is None and (attribute_cols or _ITEM_KEY_COL.value):
    raise errors.UsageError("--attribute_cols and --item_key_col need --items")
  return source


def _run(words: list[str]) -> int:
  source = _check_usage(words)
  options = Options(min_user_interactions=_MIN_USER_INTERACTIONS.value,
                    min_item_interactions=_MIN_ITEM_INTERACTIONS.value, dedup=_DEDUP.value,
                    min_attribute_count=_MIN_ATTRIBUTE_COUNT.value)
  common = {"name": _NAME.value, "output": _OUTPUT.value, "options": options}
  if source == "atomic":
    prepare_atomic(_INTER.value, _ITEM.value, user_field=_USER_FIELD.value,
                   item_field=_ITEM_FIELD.value, time_field=_TIME_FIELD.value,
                   attribute_fields=_field_list(_ATTRIBUTE_FIELDS.value), **common)
  elif source == "csv":
    prepare_table(_INTERACTIONS.value, user_col=_USER_COL.value, item_col=_ITEM_COL.value,
                  time_col=_TIME_COL.value, items=_ITEMS.value, item_key_col=_ITEM_KEY_COL.value,
                  attribute_cols=_field_list(_ATTRIBUTE_COLS.value) or [],
                  list_sep=_LIST_SEP.value, delimiter=_delimiter(_DELIMITER.value), **common)
  else:
    prepare_amazon(_REVIEWS.value, _META.value, rating_above=_RATING_ABOVE.value,
                   attribute_fields=_field_list(_ATTRIBUTE_FIELDS.value), **common)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command line; returns the exit status (2 for a user error)."""
  return command.run(PROG, FLAGS, _run, argv, doc=_USAGE)


if __name__ == "__main__":
  sys.exit(main())
