"""Property-based fuzzing of the file readers in s3rec_jax.data.dataset.

Malformed files must raise DataError and nothing else (no ValueError from
int(), UnicodeDecodeError, RecursionError, OverflowError, ...), the message
must name the file, and nothing may be written. Valid random files must load
and round-trip their ids.

Every input is judged by a small independent oracle that re-derives the file
formats, so a mutation that happens to leave a file valid is checked as a
valid file rather than skipped. Run with `pytest -s` to see how many malformed
inputs were tried.
"""

import collections
import contextlib
import functools
import json
import os
import pathlib
import random
import re
import sys
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from s3rec_jax.data import dataset as s3data

INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
MAX_ITEM = INT32_MAX - 1  # mask_id = max_item + 1 must fit in int32
MAX_ATTR = INT32_MAX
# int() refuses longer digit strings (CVE-2020-10735; 0 = no limit, and Pythons
# before the fix have none); such tokens are malformed.
INT_DIGITS = getattr(sys, "get_int_max_str_digits", lambda: 0)() or 10**9

TRIED = collections.Counter()  # malformed inputs that raised DataError, per reader
VALID = collections.Counter()  # inputs the oracle judged valid, per reader


def _fuzz_settings(max_examples):
  return settings(max_examples=max_examples, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def _summary():
  yield
  print(f"\n[test_data_fuzz] malformed inputs tried: {sum(TRIED.values())} {dict(TRIED)}; "
        f"valid inputs round-tripped: {sum(VALID.values())} {dict(VALID)}")


# ----------------------------------------------------------------------------
# Oracles: the file formats, re-derived independently of s3rec_jax.data.dataset.

_WS = b" \t\r\x0b\x0c"  # ASCII whitespace other than the line break
_WS_RUN = re.compile(rb"[ \t\r\x0b\x0c]+")
_DIGITS = re.compile(rb"[0-9]+")
_ITEM_KEY = re.compile(r"[1-9][0-9]*")


def _oracle_rows(blob):
  """Lines of positive integers; None if any line is something else."""
  lines = blob.split(b"\n")
  while lines and not lines[-1].strip(_WS):
    lines.pop()
  rows = []
  for line in lines:
    tokens = [t for t in _WS_RUN.split(line) if t]
    if not tokens or not all(_DIGITS.fullmatch(t) and len(t) <= INT_DIGITS for t in tokens):
      return None
    row = [int(t) for t in tokens]
    if min(row) <= 0:
      return None
    rows.append(row)
  return rows


def _oracle_sequences(blob):
  """The rows of a valid NAME.txt, else None."""
  rows = _oracle_rows(blob)
  if not rows:
    return None
  if any(len(r) < 4 or r[0] > INT64_MAX or max(r[1:]) > MAX_ITEM for r in rows):
    return None
  users = [r[0] for r in rows]
  return rows if len(set(users)) == len(users) else None


def _oracle_samples(blob, user_ids, num_negatives, limit):
  """The negatives of a valid NAME_sample.txt aligned to user_ids, else None."""
  rows = _oracle_rows(blob)
  if rows is None:
    return None
  if any(len(r) != num_negatives + 1 or r[0] > INT64_MAX or max(r[1:], default=0) > limit
         for r in rows):
    return None
  users = [r[0] for r in rows]
  if len(set(users)) != len(users) or set(users) != set(int(u) for u in user_ids):
    return None
  by_user = {r[0]: r[1:] for r in rows}
  return [by_user[int(u)] for u in user_ids]


def _oracle_attributes(blob, max_item):
  """({item <= max_item: sorted unique attrs}, max_attr) of a valid JSON file, else None."""
  try:
    doc = json.loads(blob, object_pairs_hook=lambda pairs: ("object", pairs))
  except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError included
    return None
  if type(doc) is not tuple:  # arrays decode to lists, objects to tuples
    return None
  table, max_attr, seen = {}, 0, set()
  for key, value in doc[1]:
    if not _ITEM_KEY.fullmatch(key) or len(key) > 10 or key in seen or int(key) > MAX_ITEM:
      return None
    if type(value) is not list or not all(type(a) is int and 1 <= a <= MAX_ATTR for a in value):
      return None
    seen.add(key)
    max_attr = max([max_attr, *value])
    if int(key) <= max_item:
      table[int(key)] = sorted(set(value))
  return table, max_attr


def _check_attr_table(attr_ids, expected, max_item):
  width = max([1] + [len(v) for v in expected.values()])
  want = np.zeros((max_item + 2, width), np.int32)
  for item, attrs in expected.items():
    want[item, :len(attrs)] = attrs
  assert attr_ids.dtype == np.int32
  np.testing.assert_array_equal(attr_ids, want)


def _check_sequences(result, rows):
  user_ids, offsets, items = result
  assert user_ids.dtype == np.int64 and offsets.dtype == np.int64 and items.dtype == np.int32
  assert user_ids.tolist() == [r[0] for r in rows]
  assert offsets.tolist() == np.cumsum([0] + [len(r) - 1 for r in rows]).tolist()
  assert items.tolist() == [i for r in rows for i in r[1:]]


# ----------------------------------------------------------------------------
# Helpers.


# A RAM disk where there is one: creating and removing thousands of directories
# on a real disk costs milliseconds each.
_TMP_BASE = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@contextlib.contextmanager
def _tmpdir():
  with tempfile.TemporaryDirectory(prefix="s3rec_fuzz_", dir=_TMP_BASE) as d:
    yield pathlib.Path(d)


def _snapshot(root):
  """Every path under root with its bytes (None for directories)."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames:
      out[os.path.relpath(os.path.join(dirpath, name), root)] = None
    for name in filenames:
      path = os.path.join(dirpath, name)
      out[os.path.relpath(path, root)] = pathlib.Path(path).read_bytes()
  return out


def _expect_data_error(call, path, root, kind):
  """call() must raise DataError naming `path` and leave `root` untouched."""
  before = _snapshot(root)
  # Any other exception type propagates and fails the property.
  with pytest.raises(s3data.DataError) as info:
    call()
  assert str(path) in str(info.value), f"message does not name {path}: {info.value}"
  assert _snapshot(root) == before, "a failed load wrote or changed files"
  TRIED[kind] += 1
  return info.value


def _no_log(message):
  raise AssertionError(f"unexpected log: {message}")


def _b(n):
  return str(n).encode()


# ----------------------------------------------------------------------------
# Strategies: whitespace-separated integer files.

GOOD_SEPS = [b" ", b" ", b" ", b"  ", b"\t", b" \t ", b"\x0b", b"\x0c", b"\r"]
BAD_SEP = st.sampled_from([b",", b";", b"|", b"\x00", b"\x1c", b"\x1f", b"\x85", b"\xa0",
                           "\u00a0".encode(), "\u3000".encode(), "\u2028".encode(), b"\\t"])
LEADS = [b"", b"", b"", b" ", b"\t", b"\x0c"]
EOLS = [b"\n", b"\n", b"\r\n"]
ZEROS = [b"", b"", b"", b"", b"", b"", b"0", b"000"]  # leading zeros are fine

# Past int()'s digit limit, and just within it.
LONG_TOKEN = st.sampled_from([b"9" * 5000, b"-" + b"9" * 5000, b"+" + b"9" * 5000,
                              b"0" * 5000 + b"7", b"1" * (INT_DIGITS + 1), b"1" * INT_DIGITS])
BAD_TOKEN = st.one_of(
    st.integers(-10**25, 0).map(_b),
    st.sampled_from([MAX_ITEM + 1, INT32_MAX, 2**31, INT64_MAX + 1, 2**64, 10**30]).map(_b),
    st.integers(2**31, 10**40).map(_b),
    st.sampled_from([
        b"+5", b"-0", b"1.0", b"1e3", b"0x1f", b"1_000", b"NaN", b"inf", b"--1", b"+",
        "\u0661\u0662".encode(), "\u00b2".encode(), "\u00bd".encode(), "\uff11".encode(),
        b"\x00", b"1\x00", b"\xff", b"\xc3", b"\xef\xbb\xbf1",
    ]),
    LONG_TOKEN,
    st.text(min_size=1, max_size=4).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.binary(min_size=1, max_size=4),
)


@functools.lru_cache(maxsize=None)  # one strategy object per argument: hypothesis caches by it
def _item_ids(max_item):
  return st.one_of(st.integers(1, min(max_item, 30)), st.integers(1, max_item))


@functools.lru_cache(maxsize=None)
def _user_ids(max_user=INT64_MAX):
  return st.one_of(st.integers(1, 1000), st.integers(1, max_user))


@st.composite
def sequence_rows(draw, max_item=MAX_ITEM, max_user=INT64_MAX, max_users=5):
  users = draw(st.lists(_user_ids(max_user), min_size=1, max_size=max_users, unique=True))
  return [[u] + draw(st.lists(_item_ids(max_item), min_size=3, max_size=6)) for u in users]


def _cosmetics(draw):
  """A seeded RNG for layout choices that never change validity (one draw, fast)."""
  return random.Random(draw(st.integers(0, 2**32 - 1)))


def _tokens(draw, rows):
  rnd = _cosmetics(draw)
  return [[rnd.choice(ZEROS) + _b(n) for n in row] for row in rows]


def _render(draw, token_rows):
  """Joins token rows with random (valid) whitespace into file bytes."""
  rnd = _cosmetics(draw)
  eol = rnd.choice(EOLS)
  lines = []
  for row in token_rows:
    line = rnd.choice(LEADS)
    for k, token in enumerate(row):
      line += (rnd.choice(GOOD_SEPS) if k else b"") + token
    lines.append(line + rnd.choice(LEADS))
  tail = rnd.choice([b"", eol, eol, eol + eol, eol + b" \t" + eol])
  return eol.join(lines) + (tail if lines else b"")


_TOKEN_OPS = ["token", "long_token", "insert_token", "shorten", "dup_row", "blank", "user_only",
              "bad_sep", "drop_row", "empty"]
_BYTE_OPS = ["insert_bytes", "flip_byte", "truncate", "random", "utf16", "bom", "cr_only", "nul",
             "non_utf8"]


def _corrupt_tokens(draw, rows, op):
  """Applies one token-level corruption to rows (lists of bytes tokens) in place."""
  i = draw(st.integers(0, len(rows) - 1)) if rows else 0
  if op in ("token", "long_token") and rows and rows[i]:
    rows[i][draw(st.integers(0, len(rows[i]) - 1))] = draw(
        BAD_TOKEN if op == "token" else LONG_TOKEN)
  elif op == "insert_token" and rows:
    rows[i].insert(draw(st.integers(0, len(rows[i]))), draw(BAD_TOKEN))
  elif op == "shorten" and rows:
    rows[i] = rows[i][:draw(st.integers(0, max(0, len(rows[i]) - 1)))]
  elif op == "dup_row" and rows:
    rows.insert(draw(st.integers(0, len(rows))), list(rows[i]))
  elif op == "blank":
    rows.insert(draw(st.integers(0, len(rows))), [])
  elif op == "user_only":
    rows.insert(draw(st.integers(0, len(rows))), [_b(draw(_user_ids()))])
  elif op == "bad_sep" and rows and len(rows[i]) >= 2:
    j = draw(st.integers(0, len(rows[i]) - 2))
    rows[i][j:j + 2] = [rows[i][j] + draw(BAD_SEP) + rows[i][j + 1]]
  elif op == "drop_row" and rows:
    del rows[i]
  elif op == "empty":
    rows.clear()
  else:  # the op does not apply to this shape: fall back to a bad token
    rows.append([draw(BAD_TOKEN)])


def _corrupt_bytes(draw, blob, op):
  """Applies one byte-level corruption to a rendered file."""
  pos = draw(st.integers(0, len(blob)))
  if op == "insert_bytes":
    return blob[:pos] + draw(st.binary(min_size=1, max_size=4)) + blob[pos:]
  if op == "flip_byte" and blob:
    pos = min(pos, len(blob) - 1)
    return blob[:pos] + bytes([draw(st.integers(0, 255))]) + blob[pos + 1:]
  if op == "truncate":
    return blob[:pos]
  if op == "random":
    return draw(st.binary(max_size=80))
  if op == "utf16":
    return blob.decode("latin-1").encode(draw(st.sampled_from(["utf-16", "utf-32", "utf-16-be"])))
  if op == "bom":
    return b"\xef\xbb\xbf" + blob
  if op == "cr_only":
    return blob.replace(b"\n", b"\r")
  if op == "nul":
    return blob[:pos] + b"\x00" + blob[pos:]
  # "non_utf8", or flip_byte on an empty file.
  return blob[:pos] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xe9t\xe9"])) \
      + blob[pos:]


@st.composite
def corrupt_int_file(draw, int_rows, extra_ops=None, op=None):
  """File bytes: int_rows with exactly one corruption (`op`, else a random one).

  `extra_ops` maps more op names to functions (draw, int_rows) -> int_rows that
  corrupt the integers themselves (used for sample files).
  """
  op = op or draw(st.sampled_from(_TOKEN_OPS + _BYTE_OPS + sorted(extra_ops or {})))
  note(f"corruption: {op}")
  if extra_ops and op in extra_ops:
    return _render(draw, _tokens(draw, extra_ops[op](draw, [list(r) for r in int_rows])))
  rows = _tokens(draw, int_rows)
  if op in _TOKEN_OPS:
    _corrupt_tokens(draw, rows, op)
    return _render(draw, rows)
  return _corrupt_bytes(draw, _render(draw, rows), op)


STRANGER = _user_ids() | st.integers(INT64_MAX + 1, 10**25)


@functools.lru_cache(maxsize=None)
def _out_of_range(max_item):
  return st.one_of(st.sampled_from([0, max_item + 1, MAX_ITEM + 1, 2**31, 2**63, 2**64]),
                   st.integers(max_item + 1, 10**20))


def _sample_ops(user_ids, max_item):
  """Sample-file corruptions on the integers: users and widths and ranges."""
  known = set(int(u) for u in user_ids)
  out_of_range = _out_of_range(max_item)

  def stranger(draw):
    user = draw(STRANGER)
    while user in known:
      user += 1
    return user

  def width(draw, rows):
    delta = draw(st.sampled_from([-1, 1, 2]))
    picked = draw(st.sets(st.integers(0, len(rows) - 1), min_size=1)) if rows else set()
    for i in picked:
      rows[i] = rows[i][:len(rows[i]) + delta] if delta < 0 else rows[i] + [1] * delta
    return rows

  def unknown_user(draw, rows):
    if rows:
      rows[draw(st.integers(0, len(rows) - 1))][0] = stranger(draw)
    return rows

  def extra_user(draw, rows):
    width_ = len(rows[0]) if rows else 1
    rows.insert(draw(st.integers(0, len(rows))), [stranger(draw)] + [1] * (width_ - 1))
    return rows

  def missing_user(draw, rows):
    if rows:
      del rows[draw(st.integers(0, len(rows) - 1))]
    return rows

  def dup_user(draw, rows):
    if rows:
      rows.insert(draw(st.integers(0, len(rows))), list(rows[draw(st.integers(0, len(rows) - 1))]))
    return rows

  def bad_negative(draw, rows):
    candidates = [(i, j) for i, r in enumerate(rows) for j in range(1, len(r))]
    if candidates:
      i, j = draw(st.sampled_from(candidates))
      rows[i][j] = draw(out_of_range)
    return rows

  return {"width": width, "unknown_user": unknown_user, "extra_user": extra_user,
          "missing_user": missing_user, "dup_user": dup_user, "bad_negative": bad_negative}


@st.composite
def sample_rows(draw, user_ids, num_negatives, max_item):
  rows = [[int(u)] + draw(st.lists(_item_ids(max_item), min_size=num_negatives,
                                   max_size=num_negatives)) for u in user_ids]
  return draw(st.permutations(rows))


# ----------------------------------------------------------------------------
# Strategies: the item-attribute JSON file.

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=5),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4),
                                                                       children, max_size=4),
    max_leaves=12)
LONG_DIGITS = st.sampled_from(["1" * 5000, "9" * (INT_DIGITS + 1), "1" * INT_DIGITS])
BAD_KEY = st.one_of(
    st.sampled_from(["", "0", "00", "01", "-1", "+1", " 1", "1 ", "1.0", "1e3", "0x1", "1_0",
                     "\u0661", "\uff11", "\u00b2", "0" * 5000 + "1", str(MAX_ITEM + 1),
                     str(INT32_MAX), str(2**31), str(2**64), "9" * 30, "\ud800", "1\n", "NaN"]),
    LONG_DIGITS,
    st.text(max_size=5))
BAD_ATTR = st.one_of(
    st.sampled_from([
        "0", "-1", "-0", str(MAX_ATTR + 1), str(2**63), str(2**64), "1.0", "1e2", "1E400",
        "-1e400", "0.5", "true", "false", "null", '"1"', "[]", "{}", "[1]", '{"1": 1}', "NaN",
        "Infinity", "-Infinity", '"\\ud800"']),
    LONG_DIGITS, LONG_DIGITS.map(lambda digits: "-" + digits))


def _attr_values():
  return st.lists(st.one_of(st.integers(1, 40), st.integers(1, MAX_ATTR)), max_size=5)


@st.composite
def attribute_pairs(draw, max_item):
  """(key, value text) pairs of a valid file; some items above max_item."""
  items = draw(st.lists(st.one_of(st.integers(1, max_item + 5), st.integers(1, MAX_ITEM)),
                        max_size=6, unique=True))
  return [(str(i), json.dumps(draw(_attr_values()))) for i in items]


def _render_json(draw, pairs):
  """A JSON object from (key, value text) pairs, with random layout."""
  sep = draw(st.sampled_from([", ", ",", ",\n  ", " ,\t"]))
  colon = draw(st.sampled_from([": ", ":", " : "]))
  body = sep.join(json.dumps(k) + colon + v for k, v in pairs)
  text = draw(st.sampled_from(["{", "{\n", " {"])) + body + draw(st.sampled_from(["}", "\n}\n"]))
  return text.encode("utf-8", "surrogatepass")


_JSON_OPS = ["whole_value", "value", "bad_attr", "long_number", "bad_key", "dup_key", "truncate",
             "insert_bytes", "flip_byte", "random", "deep", "non_utf8", "top"]


@st.composite
def corrupt_json_file(draw, pairs, op=None):
  """JSON file bytes from valid pairs with exactly one corruption (`op`, else a random one)."""
  pairs = list(pairs)
  op = op or draw(st.sampled_from(_JSON_OPS))
  note(f"corruption: {op}")
  i = draw(st.integers(0, len(pairs))) if pairs else 0
  if op == "whole_value":
    return json.dumps(draw(JSON_VALUES)).encode()
  if op == "value" and pairs:
    pairs[min(i, len(pairs) - 1)] = (pairs[min(i, len(pairs) - 1)][0],
                                     json.dumps(draw(JSON_VALUES)))
  elif op == "bad_attr":
    attrs = [json.dumps(a) for a in draw(_attr_values())]
    attrs.insert(draw(st.integers(0, len(attrs))), draw(BAD_ATTR))
    pairs.insert(i, (str(draw(st.integers(1, 50))), "[" + ", ".join(attrs) + "]"))
  elif op == "long_number":
    digits = draw(LONG_DIGITS)
    pairs.insert(i, (digits, "[1]") if draw(st.booleans()) else ("1", f"[{digits}]"))
  elif op == "bad_key":
    pairs.insert(i, (draw(BAD_KEY), json.dumps(draw(_attr_values()))))
  elif op == "dup_key" and pairs:
    pairs.insert(i, (pairs[draw(st.integers(0, len(pairs) - 1))][0], "[1]"))
  elif op == "deep":
    opener = draw(st.sampled_from(['{"1": ', '[{"a": ', "["]))
    closer = {"[": "]", '{"1": ': "}", '[{"a": ': "}]"}[opener]
    if draw(st.booleans()):  # the whole file, maybe unclosed
      n = draw(st.sampled_from([1000, 3000, 100_000]))
      return (opener * n + "1" + (closer * n if draw(st.booleans()) else "")).encode()
    # Around the recursion limit: some of these parse but are too deep to print back.
    n = draw(st.sampled_from([600, 400, 800, 1000, 100]))
    used = {k for k, _ in pairs}
    free = next(str(k) for k in range(1, len(pairs) + 2) if str(k) not in used)
    pairs.insert(i, (free, opener * n + "1" + closer * n))
  elif op == "top":
    return draw(st.sampled_from([b"", b" ", b"\n", b"[]", b"null", b"1", b'"1"', b"true", b"[{}]",
                                 b"{}{}", b'{"1": [1]} x', b"\xef\xbb\xbf", b"{", b"}", b"{,}",
                                 b'{"1": [1],}', b"{'1': [1]}", b'{"1": [1 2]}', b"\x00"]))
  blob = _render_json(draw, pairs)
  if op in ("truncate", "insert_bytes", "flip_byte", "random", "non_utf8") or op in (
      "value", "dup_key") and not pairs:
    blob = _corrupt_bytes(draw, blob, op if op in _BYTE_OPS else "non_utf8")
  return blob


# ----------------------------------------------------------------------------
# Malformed inputs: DataError naming the file, nothing written.


# Each corruption gets its own examples: sampled_from would spend most of them
# on the first few.
_SAMPLE_OPS = sorted(_sample_ops([], 1))


@pytest.mark.parametrize("op", _TOKEN_OPS + _BYTE_OPS)
@_fuzz_settings(20)
@given(draw_from=st.data())
def test_malformed_sequences_raise_data_error(op, draw_from):
  rows = draw_from.draw(st.one_of(sequence_rows(), sequence_rows(max_item=50, max_user=50)),
                        label="valid rows")
  blob = draw_from.draw(corrupt_int_file(rows, op=op), label="NAME.txt")
  with _tmpdir() as root:
    path = root / "Fuzz.txt"
    path.write_bytes(blob)
    rows = _oracle_sequences(blob)
    if rows is None:
      _expect_data_error(lambda: s3data.read_sequences(path), path, root, "sequences")
    else:
      _check_sequences(s3data.read_sequences(path), rows)
      VALID["sequences"] += 1


@pytest.mark.parametrize("op", _JSON_OPS)
@_fuzz_settings(30)
@given(draw_from=st.data())
def test_malformed_attributes_raise_data_error(op, draw_from):
  max_item = draw_from.draw(st.integers(1, 60), label="max_item")
  pairs = draw_from.draw(attribute_pairs(max_item), label="valid pairs")
  blob = draw_from.draw(corrupt_json_file(pairs, op=op), label="NAME_item2attributes.json")
  with _tmpdir() as root:
    path = root / "Fuzz_item2attributes.json"
    path.write_bytes(blob)
    expected = _oracle_attributes(blob, max_item)
    if expected is None:
      _expect_data_error(lambda: s3data.read_item_attributes(path, max_item), path, root,
                         "attributes")
    else:
      attr_ids, max_attr = s3data.read_item_attributes(path, max_item)
      _check_attr_table(attr_ids, expected[0], max_item)
      assert max_attr == expected[1]
      VALID["attributes"] += 1


@pytest.mark.parametrize("op", _TOKEN_OPS + _BYTE_OPS + _SAMPLE_OPS)
@_fuzz_settings(14)
@given(draw_from=st.data())
def test_malformed_samples_raise_data_error(op, draw_from):
  rows = draw_from.draw(sequence_rows(max_item=40), label="dataset")
  user_ids = np.array([r[0] for r in rows], np.int64)
  num_negatives = draw_from.draw(st.integers(0, 4), label="num_negatives")
  max_item = draw_from.draw(st.one_of(st.none(), st.integers(1, 40)), label="max_item")
  limit = MAX_ITEM if max_item is None else max_item
  good = draw_from.draw(sample_rows(user_ids, num_negatives, min(limit, 40)), label="valid rows")
  blob = draw_from.draw(corrupt_int_file(good, _sample_ops(user_ids, limit), op=op),
                        label="NAME_sample.txt")
  with _tmpdir() as root:
    path = root / "Fuzz_sample.txt"
    path.write_bytes(blob)
    expected = _oracle_samples(blob, user_ids, num_negatives, limit)

    def read():
      return s3data.read_sample_negatives(path, user_ids, num_negatives, max_item=max_item)

    if expected is None:
      _expect_data_error(read, path, root, "samples")
    else:
      negatives = read()
      assert negatives.dtype == np.int32 and negatives.shape == (len(rows), num_negatives)
      assert negatives.tolist() == expected
      VALID["samples"] += 1


_TARGETS = ["txt", "json", "sample", "txt_dir", "json_dir", "sample_dir", "txt_missing",
            "json_missing"]


@pytest.mark.parametrize("target", _TARGETS)
@_fuzz_settings(30)
@given(draw_from=st.data())
def test_load_dataset_with_one_corrupted_file(target, draw_from):
  name = draw_from.draw(st.sampled_from(["T", "Beauty", "my data", "d\u00e9j\u00e0"]), label="name")
  num_negatives = 2
  seqs = draw_from.draw(sequence_rows(max_item=30, max_user=10**6), label="sequences")
  max_item = max(i for r in seqs for i in r[1:])
  user_ids = [r[0] for r in seqs]
  attrs = draw_from.draw(attribute_pairs(max_item), label="attributes")
  sample = draw_from.draw(sample_rows(user_ids, num_negatives, max_item), label="samples")
  files = {"txt": _render(draw_from.draw, _tokens(draw_from.draw, seqs)),
           "json": _render_json(draw_from.draw, attrs),
           "sample": _render(draw_from.draw, _tokens(draw_from.draw, sample))}
  if target == "txt":
    files["txt"] = draw_from.draw(corrupt_int_file(seqs))
  elif target == "json":
    files["json"] = draw_from.draw(corrupt_json_file(attrs))
  elif target == "sample":
    files["sample"] = draw_from.draw(corrupt_int_file(sample, _sample_ops(user_ids, max_item)))
  file_names = {"txt": f"{name}.txt", "json": f"{name}_item2attributes.json",
                "sample": f"{name}_sample.txt"}
  with _tmpdir() as root:
    directory = root / "data"
    directory.mkdir()
    for key, blob in files.items():
      if target == f"{key}_dir":
        (directory / file_names[key]).mkdir()
      elif target != f"{key}_missing":
        (directory / file_names[key]).write_bytes(blob)

    def load():
      return s3data.load_dataset(directory, name, sample_dir=root / "samples",
                                 num_negatives=num_negatives, log=_no_log)

    # The files are checked in order; the first bad one must be named.
    bad = None
    got_rows = got_attrs = got_sample = real_max_item = None
    if target in ("txt_dir", "txt_missing") or (
        got_rows := _oracle_sequences(files["txt"])) is None:
      bad = "txt"
    else:
      real_max_item = max(i for r in got_rows for i in r[1:])
      if target in ("json_dir", "json_missing") or (
          got_attrs := _oracle_attributes(files["json"], real_max_item)) is None:
        bad = "json"
      elif target == "sample_dir" or (got_sample := _oracle_samples(
          files["sample"], [r[0] for r in got_rows], num_negatives, real_max_item)) is None:
        bad = "sample"
    if bad is not None:
      _expect_data_error(load, directory / file_names[bad], root, f"load_dataset:{bad}")
      return
    before = _snapshot(root)
    ds = load()
    assert _snapshot(root) == before
    _check_sequences((ds.user_ids, ds.offsets, ds.items), got_rows)
    assert ds.max_item == real_max_item
    _check_attr_table(ds.attr_ids, got_attrs[0], real_max_item)
    assert ds.max_attr == got_attrs[1]
    assert ds.sample_negatives.tolist() == got_sample
    VALID["load_dataset"] += 1


@_fuzz_settings(30)
@given(seqs=sequence_rows(max_item=6, max_user=10**6), num_negatives=st.integers(4, 10))
def test_load_dataset_too_few_items_for_negatives(seqs, num_negatives):
  # No sample file, and some user has fewer than num_negatives unseen items.
  with _tmpdir() as root:
    (root / "T.txt").write_bytes(b"".join(b" ".join(_b(n) for n in r) + b"\n" for r in seqs))
    (root / "T_item2attributes.json").write_bytes(b"{}")
    items = set(i for r in seqs for i in r[1:])
    room = min(len(items - set(r[1:])) for r in seqs)
    if room >= num_negatives:
      return
    _expect_data_error(
        lambda: s3data.load_dataset(root, "T", sample_dir=root / "s", num_negatives=num_negatives,
                                    log=_no_log), root / "T.txt", root, "load_dataset:negatives")


# ----------------------------------------------------------------------------
# Valid inputs: load and round-trip.


@_fuzz_settings(100)
@given(st.data())
def test_valid_sequences_round_trip(draw_from):
  rows = draw_from.draw(sequence_rows(max_users=8), label="rows")
  blob = _render(draw_from.draw, _tokens(draw_from.draw, rows))
  assert _oracle_sequences(blob) == rows
  with _tmpdir() as root:
    path = root / "Fuzz.txt"
    path.write_bytes(blob)
    before = _snapshot(root)
    _check_sequences(s3data.read_sequences(path), rows)
    assert _snapshot(root) == before
  VALID["sequences"] += 1


@_fuzz_settings(100)
@given(st.data())
def test_valid_attributes_round_trip(draw_from):
  max_item = draw_from.draw(st.integers(1, 60), label="max_item")
  pairs = draw_from.draw(attribute_pairs(max_item), label="pairs")
  blob = _render_json(draw_from.draw, pairs)
  expected = {int(k): sorted(set(json.loads(v))) for k, v in pairs if int(k) <= max_item}
  max_attr = max([0] + [a for _, v in pairs for a in json.loads(v)])
  assert _oracle_attributes(blob, max_item) == (expected, max_attr)
  with _tmpdir() as root:
    path = root / "Fuzz_item2attributes.json"
    path.write_bytes(blob)
    attr_ids, got_max_attr = s3data.read_item_attributes(path, max_item)
  _check_attr_table(attr_ids, expected, max_item)
  assert got_max_attr == max_attr
  VALID["attributes"] += 1


@_fuzz_settings(100)
@given(st.data())
def test_valid_samples_round_trip(draw_from):
  rows = draw_from.draw(sequence_rows(max_item=40, max_users=8), label="dataset")
  user_ids = np.array([r[0] for r in rows], np.int64)
  num_negatives = draw_from.draw(st.integers(0, 5), label="num_negatives")
  max_item = draw_from.draw(st.one_of(st.none(), st.integers(1, 40)), label="max_item")
  sample = draw_from.draw(sample_rows(user_ids, num_negatives, max_item or MAX_ITEM))
  blob = _render(draw_from.draw, _tokens(draw_from.draw, sample))
  by_user = {r[0]: r[1:] for r in sample}
  with _tmpdir() as root:
    path = root / "Fuzz_sample.txt"
    path.write_bytes(blob)
    negatives = s3data.read_sample_negatives(path, user_ids, num_negatives, max_item=max_item)
  assert negatives.dtype == np.int32
  assert negatives.tolist() == [by_user[int(u)] for u in user_ids]
  VALID["samples"] += 1


@_fuzz_settings(60)
@given(st.data())
def test_valid_dataset_round_trips(draw_from):
  seqs = draw_from.draw(sequence_rows(max_item=200, max_users=8), label="sequences")
  max_item = max(i for r in seqs for i in r[1:])
  attrs = draw_from.draw(attribute_pairs(max_item), label="attributes")
  num_negatives = draw_from.draw(st.integers(0, 4), label="num_negatives")
  sample = draw_from.draw(sample_rows([r[0] for r in seqs], num_negatives, max_item))
  need_samples = draw_from.draw(st.booleans(), label="need_samples")
  with _tmpdir() as root:
    (root / "D.txt").write_bytes(_render(draw_from.draw, _tokens(draw_from.draw, seqs)))
    (root / "D_item2attributes.json").write_bytes(_render_json(draw_from.draw, attrs))
    (root / "D_sample.txt").write_bytes(_render(draw_from.draw, _tokens(draw_from.draw, sample)))
    before = _snapshot(root)
    ds = s3data.load_dataset(root, "D", num_negatives=num_negatives, need_samples=need_samples,
                             log=_no_log)
    assert _snapshot(root) == before
  _check_sequences((ds.user_ids, ds.offsets, ds.items), seqs)
  assert ds.max_item == max_item
  expected = {int(k): sorted(set(json.loads(v))) for k, v in attrs if int(k) <= max_item}
  _check_attr_table(ds.attr_ids, expected, max_item)
  assert ds.max_attr == max([0] + [a for _, v in attrs for a in json.loads(v)])
  if need_samples:
    by_user = {r[0]: r[1:] for r in sample}
    assert ds.sample_negatives.tolist() == [by_user[r[0]] for r in seqs]
  else:
    assert ds.sample_negatives is None
  VALID["load_dataset"] += 1
