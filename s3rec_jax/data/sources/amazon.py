"""The Amazon review dumps (2014 edition): a reviews file and its metadata file.

Both files hold one record per line, optionally gzip-compressed (`.gz`). The
reviews file (e.g. `reviews_Beauty_5.json.gz`) has JSON objects such as
`{"reviewerID": "A1..", "asin": "B00..", "overall": 5.0, "unixReviewTime":
1391040000, ...}`; the metadata file (e.g. `meta_Beauty.json.gz`) has Python
dict literals (or JSON) such as `{'asin': 'B00..', 'categories': [['Beauty',
'Skin Care', 'Face']], 'brand': 'X', ...}`. Lines are parsed as JSON, else as
Python literals with `ast.literal_eval` (never `eval`).

How the S3-Rec authors prepared Beauty, Sports_and_Outdoors and Toys_and_Games
(their `data/data_process.py`, functions `Amazon`, `get_interaction`,
`filter_Kcore`, `id_map`, `Amazon_meta` and `get_attribute_Amazon`), as read
from that script:

1. Interactions are (reviewerID, asin, unixReviewTime) of the per-category
   5-core reviews file. A review is dropped when its rating `overall` is at
   most 0 (their `rating_score = 0.0`); with star ratings of 1 to 5 that
   drops nothing in practice. Repeated reviews of one item by one user are kept (only
   their LastFM script drops repeats).
2. Each user's reviews are sorted by time with Python's stable sort, so equal
   times keep file order; users stay in order of first appearance.
3. Users and items are filtered to 5-core again, repeatedly, until every user
   and every item has at least 5 interactions (repeats count). Their loop
   drops, per pass, users below the threshold and the interactions of items
   below it; any such order of removals ends at the same largest subset in
   which both thresholds hold, the fixed point computed here.
4. Users are numbered 1.. in order of first appearance, items 1.. in order of
   first appearance walking the users' sequences in that order: the same rule
   as here.
5. Attributes come from the metadata records of kept items (a later record of
   an asin replaces an earlier one): the brand, when the record has the key
   (whatever its value, even an empty string), and every entry of every
   category list except the list's first entry (the dump's top-level
   category, e.g. "Beauty"). Attributes seen fewer than `attribute_core`
   times are dropped, but `attribute_core = 0`, so none is. All of this is
   followed here, the empty brand included.

What differs here, on purpose:

- Brands and categories are two fields, `brand` and `categories`, each with
  its own id range. The reference keeps one namespace of strings, so a brand
  and a category spelt alike share one id there and are two attributes here;
  the stats record `reference_attributes`, the count of distinct strings the
  reference would report.
- Attribute ids are numbered field by field, in order of first appearance
  walking items by dense id (the reference walks the metadata file, brand
  before categories). Items without a metadata record get `[]` (the
  reference leaves them out of the JSON file; the reader treats both alike).
- `--min_attribute_count` counts the items that carry a value; the
  reference's `attribute_core` counted occurrences. Both default to 0.
- `avg_attributes_per_item` in the stats counts distinct attributes over
  all items; the reference averaged its list lengths (a category repeated
  in two category lists counted twice) over the items with metadata.
"""

from __future__ import annotations

import array
import ast
import gzip
import json
import os
import pathlib
import re
from typing import Collection, Iterator, Sequence

import numpy as np

from s3rec_jax.data.dataset import DataError
from s3rec_jax.data.sources import Coder, Interactions, ItemAttributes, object_array
from s3rec_jax.data.sources import delimited

ATTRIBUTE_FIELDS = ("categories", "brand")
# A quick look for the key, to skip metadata of unreviewed items unparsed.
_ASIN_KEY = re.compile(rb"""['"]asin['"]\s*:\s*['"]([^'"]*)['"]""")


def _records(path: pathlib.Path, what: str, skip=None) -> Iterator[tuple[int, dict]]:
  """(line number, record) of every non-blank line; `skip(line)` may pass over a line."""
  opener = gzip.open if path.suffix.lower() == ".gz" else open
  expected = f"one JSON object or Python dict literal per line ({what})"
  try:
    with opener(path, "rb") as f:
      for lineno, line in enumerate(f, start=1):
        if not line.strip() or (skip is not None and skip(line)):
          continue
        try:
          record = json.loads(line)
        except ValueError as json_error:
          record = _literal(line)
          if record is None:
            detail = (f"{json_error.msg} at column {json_error.colno}"
                      if isinstance(json_error, json.JSONDecodeError) else "not UTF-8 text")
            raise DataError(f"{path}:{lineno}: malformed line ({detail}); expected {expected}"
                            ) from None
        if not isinstance(record, dict):
          raise DataError(f"{path}:{lineno}: a {type(record).__name__}, not an object; "
                          f"expected {expected}")
        yield lineno, record
  except (OSError, EOFError) as e:  # e.g. a truncated or non-gzip .gz file
    raise DataError(f"{path}: cannot read ({e}); expected {expected}") from None


def _literal(line: bytes) -> object | None:
  try:
    return ast.literal_eval(line.decode("utf-8").strip())
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError, UnicodeDecodeError):
    return None


def _text(path: pathlib.Path, lineno: int, record: dict, key: str) -> str:
  if key not in record:
    raise DataError(f"{path}:{lineno}: no {key!r} field; expected a non-empty string there")
  value = record[key]
  if not isinstance(value, str) or not value.strip():
    raise DataError(f"{path}:{lineno}: field {key!r} is {value!r}; expected a non-empty string")
  return value


def _number(path: pathlib.Path, lineno: int, record: dict, key: str, integral: bool) -> float:
  expected = "an integer unix time" if integral else "a number"
  if key not in record:
    raise DataError(f"{path}:{lineno}: no {key!r} field; expected {expected} there")
  value = record[key]
  number = None
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    number = value
  elif isinstance(value, str):
    try:
      number = float(value) if not integral else int(value.strip())
    except ValueError:
      number = None
  if number is None or not np.isfinite(number) or (integral and number != int(number)):
    raise DataError(f"{path}:{lineno}: field {key!r} is {value!r}; expected {expected}")
  return int(number) if integral else float(number)


def read_reviews(path: os.PathLike | str, *, rating_above: float = 0.0) -> Interactions:
  """Reads the reviews file; reviews rated at most `rating_above` are filtered out.

  The rating rule is a row filter of the result, so the stats can say what it
  removed.
  """
  what = "Amazon reviews file"
  path = delimited.check_readable(path, what)
  user_coder, item_coder = Coder(), Coder()
  # Typed buffers: 8 bytes a review, not a Python object.
  users, items, times = array.array("q"), array.array("q"), array.array("q")
  ratings = array.array("d")
  for lineno, record in _records(path, what):
    users.append(user_coder(_text(path, lineno, record, "reviewerID")))
    items.append(item_coder(_text(path, lineno, record, "asin")))
    ratings.append(_number(path, lineno, record, "overall", integral=False))
    time = _number(path, lineno, record, "unixReviewTime", integral=True)
    if not -2**63 <= time < 2**63:
      raise DataError(f"{path}:{lineno}: field 'unixReviewTime' is {time!r}; expected an "
                      f"integer unix time within 64 bits")
    times.append(time)
  kept = np.frombuffer(ratings, np.float64) > rating_above
  return Interactions(
      users=np.frombuffer(users, np.int64), user_names=user_coder.names(),
      items=np.frombuffer(items, np.int64), item_names=item_coder.names(),
      times=np.frombuffer(times, np.int64), source=str(path),
      row_filters=((f"overall > {rating_above:g}", kept),))


def read_meta(path: os.PathLike | str, *, items: Collection[str] | None = None,
              attribute_fields: Sequence[str] = ATTRIBUTE_FIELDS) -> ItemAttributes:
  """Reads the metadata file into the fields `categories` and `brand`.

  Args:
    path: the file.
    items: asins to read (others are skipped, most without parsing); None
      reads all.
    attribute_fields: which of `categories` and `brand` to keep, in order.
  """
  what = "Amazon metadata file"
  path = delimited.check_readable(path, what)
  for name in attribute_fields:
    if name not in ATTRIBUTE_FIELDS:
      raise DataError(f"{path}: no attribute field {name!r} (--attribute_fields); expected "
                      f"some of {', '.join(ATTRIBUTE_FIELDS)}")
  wanted = None if items is None else set(items)

  def skip(line: bytes) -> bool:
    if wanted is None:
      return False
    found = _ASIN_KEY.findall(line)
    # Only an unambiguous key is trusted; anything else is parsed in full.
    return len(found) == 1 and found[0].decode("utf-8", "replace") not in wanted

  by_asin: dict[str, tuple[list[str], list[str]]] = {}
  for lineno, record in _records(path, what, skip):
    asin = _text(path, lineno, record, "asin")
    if wanted is not None and asin not in wanted:
      continue
    categories = record.get("categories", [])
    if not isinstance(categories, list) or not all(
        isinstance(c, list) and all(isinstance(v, str) for v in c) for c in categories):
      raise DataError(f"{path}:{lineno}: field 'categories' is {str(categories)[:60]}; "
                      f"expected a list of lists of strings")
    # The first entry of each list is the dump's top-level category.
    category_values = [value for chain in categories for value in chain[1:]]
    brand_values = []
    if "brand" in record:
      if not isinstance(record["brand"], str):
        raise DataError(f"{path}:{lineno}: field 'brand' is {record['brand']!r}; "
                        f"expected a string")
      brand_values.append(record["brand"])
    by_asin[asin] = (category_values, brand_values)  # a later record replaces an earlier one
  values = {"categories": [v for v, _ in by_asin.values()],
            "brand": [v for _, v in by_asin.values()]}
  fields = {}
  for name in attribute_fields:
    rows = [np.full(len(v), r, np.int64) for r, v in enumerate(values[name])]
    fields[name] = (np.concatenate(rows) if rows else np.zeros(0, np.int64),
                    object_array(v for cell in values[name] for v in cell))
  return ItemAttributes(item_names=object_array(by_asin), fields=fields, source=str(path))
