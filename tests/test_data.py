"""Tests for s3rec_jax.data.dataset: parsing, validation, negatives and splits."""

import os
import pathlib

import numpy as np
import pytest

from s3rec_jax.data import dataset as data

# Three users; user 10 is long enough that max_len=3 cuts every split.
SEQS = "10 1 2 3 4 5 6 7\n20 3 4 5\n30 2 5 6 8\n"
ATTRS = '{"1": [3, 1, 3], "2": [], "5": [2], "9": [7, 7]}'


def _files(root: pathlib.Path) -> set[str]:
  return {str(p.relative_to(root)) for p in root.rglob("*")}


def _write(directory: pathlib.Path, name: str = "T", seqs: str = SEQS, attrs: str = ATTRS,
           sample: str | None = None) -> pathlib.Path:
  directory.mkdir(parents=True, exist_ok=True)
  (directory / f"{name}.txt").write_text(seqs)
  (directory / f"{name}_item2attributes.json").write_text(attrs)
  if sample is not None:
    (directory / f"{name}_sample.txt").write_text(sample)
  return directory


def _no_log(message):
  # The one line a first load may say: where the memory-mapped form of the files went.
  if not message.startswith("converted "):
    raise AssertionError(f"unexpected log: {message}")


@pytest.fixture
def small(tmp_path):
  return data.load_dataset(_write(tmp_path), "T", need_samples=False, log=_no_log)


# ----------------------------------------------------------------------------
# Reading and splits on a hand-made file.


def test_read_sequences(tmp_path):
  user_ids, offsets, items = data.read_sequences(_write(tmp_path) / "T.txt")
  np.testing.assert_array_equal(user_ids, [10, 20, 30])
  np.testing.assert_array_equal(offsets, [0, 7, 10, 14])
  np.testing.assert_array_equal(items, [1, 2, 3, 4, 5, 6, 7, 3, 4, 5, 2, 5, 6, 8])
  assert user_ids.dtype == np.int64 and offsets.dtype == np.int64 and items.dtype == np.int32


def test_trailing_newlines_and_crlf_are_fine(tmp_path):
  path = tmp_path / "x.txt"
  path.write_text("1 1 2 3\r\n2 4 5 6")  # no final newline, CRLF
  np.testing.assert_array_equal(data.read_sequences(path)[2], [1, 2, 3, 4, 5, 6])
  path.write_text("1 1 2 3\n2 4 5 6\n\n")
  np.testing.assert_array_equal(data.read_sequences(path)[0], [1, 2])


def test_dataset_properties(small):
  assert small.num_users == 3
  assert small.max_item == 8 and small.item_size == 10 and small.mask_id == 9
  assert small.max_attr == 7 and small.attribute_size == 8
  np.testing.assert_array_equal(small.lengths(), [7, 3, 4])
  np.testing.assert_array_equal(small.sequence(2), [2, 5, 6, 8])
  assert small.sample_negatives is None
  with pytest.raises(ValueError):
    small.items[0] = 99  # shared arrays are read-only


def test_finetune_splits_exact(small):
  sp = data.finetune_splits(small, max_len=3)
  expected = {
      "train_inputs": [[2, 3, 4], [0, 0, 0], [0, 0, 2]],
      "train_targets": [[3, 4, 5], [0, 0, 0], [0, 0, 5]],
      "valid_inputs": [[3, 4, 5], [0, 0, 3], [0, 2, 5]],
      "valid_answers": [6, 4, 6],
      "test_inputs": [[4, 5, 6], [0, 3, 4], [2, 5, 6]],
      "test_answers": [7, 5, 8],
      "valid_history": [[1, 2, 3, 4, 5, 0], [3, 0, 0, 0, 0, 0], [2, 5, 0, 0, 0, 0]],
      "test_history": [[1, 2, 3, 4, 5, 6], [3, 4, 0, 0, 0, 0], [2, 5, 6, 0, 0, 0]],
  }
  assert set(sp) == set(expected)
  for key, value in expected.items():
    assert sp[key].dtype == np.int32, key
    np.testing.assert_array_equal(sp[key], value, err_msg=key)


def test_pretrain_prefixes_exact(small):
  starts, ends = data.pretrain_prefixes(small, max_len=3)
  # t = s[-5:-2]: user 10 -> [3, 4, 5] at items[2:5]; user 20 -> [3]; user 30 -> [2, 5].
  np.testing.assert_array_equal(starts, [2, 2, 2, 7, 10, 10])
  np.testing.assert_array_equal(ends, [3, 4, 5, 8, 11, 12])


def _reference_splits(seqs, max_len):
  """Per-user Python version of the reference's list slicing."""

  def cut(x):
    x = list(x)[-max_len:]
    return [0] * (max_len - len(x)) + x

  out = {k: [] for k in ("train_inputs", "train_targets", "valid_inputs", "test_inputs")}
  prefixes = []
  for s in seqs:
    out["train_inputs"].append(cut(s[:-3]))
    out["train_targets"].append(cut(s[1:-2]))
    out["valid_inputs"].append(cut(s[:-2]))
    out["test_inputs"].append(cut(s[:-1]))
    t = s[-(max_len + 2):-2]
    prefixes.extend(list(t[:k]) for k in range(1, len(t) + 1))
  return out, prefixes


@pytest.mark.parametrize("max_len", [1, 4, 50])
def test_splits_match_python_reference(max_len):
  ds = data.synthetic_dataset(num_users=40, num_items=60, min_len=3, max_len=12, seed=3,
                              num_negatives=None)
  seqs = [ds.sequence(u).tolist() for u in range(ds.num_users)]
  expected, prefixes = _reference_splits(seqs, max_len)
  sp = data.finetune_splits(ds, max_len)
  for key, value in expected.items():
    np.testing.assert_array_equal(sp[key], value, err_msg=key)
  np.testing.assert_array_equal(sp["valid_answers"], [s[-2] for s in seqs])
  np.testing.assert_array_equal(sp["test_answers"], [s[-1] for s in seqs])
  for u, s in enumerate(seqs):
    assert sp["test_history"][u, :len(s) - 1].tolist() == s[:-1]
    assert not sp["test_history"][u, len(s) - 1:].any()
    assert sp["valid_history"][u, :len(s) - 2].tolist() == s[:-2]
    assert not sp["valid_history"][u, len(s) - 2:].any()
  starts, ends = data.pretrain_prefixes(ds, max_len)
  assert [ds.items[a:b].tolist() for a, b in zip(starts, ends)] == prefixes


def test_left_pad_matches_python_reference():
  rng = np.random.default_rng(0)
  items = rng.integers(1, 100, size=200).astype(np.int32)
  offsets = np.array([0, 200])
  starts = rng.integers(0, 200, size=300)
  ends = np.minimum(starts + rng.integers(0, 15, size=300), 200)
  for length in (1, 5, 20):
    got = data.left_pad(offsets, items, starts, ends, length)
    for i, (a, b) in enumerate(zip(starts, ends)):
      row = items[a:b].tolist()[-length:]
      assert got[i].tolist() == [0] * (length - len(row)) + row
    assert got.dtype == np.int32 and got.shape == (300, length)
  assert data.left_pad(offsets, items, starts[:0], ends[:0], 4).shape == (0, 4)


# ----------------------------------------------------------------------------
# Attributes.


def test_attributes_dedup_sort_pad(tmp_path):
  path = tmp_path / "a.json"
  path.write_text(ATTRS)
  attr_ids, max_attr = data.read_item_attributes(path, max_item=8)
  # Item 9 is above max_item: dropped from the table, but its 7 still counts.
  assert max_attr == 7
  expected = np.zeros((10, 2), np.int32)
  expected[1] = [1, 3]
  expected[5] = [2, 0]
  np.testing.assert_array_equal(attr_ids, expected)
  assert attr_ids.dtype == np.int32


def test_attributes_empty_json_gives_one_zero_column(tmp_path):
  path = tmp_path / "a.json"
  path.write_text("{}")
  attr_ids, max_attr = data.read_item_attributes(path, max_item=3)
  assert max_attr == 0 and attr_ids.shape == (5, 1) and not attr_ids.any()


# ----------------------------------------------------------------------------
# Bad input: a DataError naming file and line/key, and nothing written.

SEQS_WIDE = SEQS + "40 9 10 11\n"  # 11 items occur, so 3 negatives always fit
GOOD_SAMPLE = "10 9 10 11\n20 1 2 6\n30 1 3 4\n40 1 2 3\n"

BAD_CASES = [
    # (file to corrupt, content, substrings the message must contain)
    ("T.txt", "10 1 2 3\n20 4 5 x\n", ["T.txt:2", "malformed", "'x'"]),
    ("T.txt", "10 1 2 3\n20 4 5.0 6\n", ["T.txt:2", "not an integer"]),
    ("T.txt", "10 1 2 3\n20 4 0 6\n", ["T.txt:2", "non-positive"]),
    ("T.txt", "10 1 2 3\n-20 4 5 6\n", ["T.txt:2", "non-positive"]),
    ("T.txt", "10 1 2 3\n0 4 5 6\n", ["T.txt:2", "non-positive"]),
    ("T.txt", "10 1 2 3\n20 4 5 6\n10 7 8 9\n", ["T.txt:3", "duplicate user id 10", "line 1"]),
    ("T.txt", "10 1 2 3\n20 4 5 6\n30 1 2\n", ["T.txt:3", "has 2 items", "at least 3"]),
    ("T.txt", "10 1 2 3\n20\n", ["T.txt:2", "has 0 items"]),
    ("T.txt", "10 1 2 3\n\n20 4 5 6\n", ["T.txt:2", "blank line"]),
    ("T.txt", "10 1 2 3\n   \n20 4 5 6\n", ["T.txt:2", "blank line"]),
    ("T.txt", "", ["T.txt:1", "no users"]),
    ("T_item2attributes.json", "[1, 2]", ["T_item2attributes.json", "top level", "object"]),
    ("T_item2attributes.json", '{"1": [1], "x": [2]}', ["T_item2attributes.json", "'x'"]),
    ("T_item2attributes.json", '{"0": [1]}', ["T_item2attributes.json", "'0'"]),
    ("T_item2attributes.json", '{"-3": [1]}', ["T_item2attributes.json", "'-3'"]),
    ("T_item2attributes.json", '{"2": 5}', ["T_item2attributes.json", "'2'", "list"]),
    ("T_item2attributes.json", '{"2": ["a"]}', ["T_item2attributes.json", "'2'"]),
    ("T_item2attributes.json", '{"2": [1, 0]}', ["T_item2attributes.json", "'2'", "positive"]),
    ("T_item2attributes.json", '{"2": [true]}', ["T_item2attributes.json", "'2'"]),
    ("T_item2attributes.json", '{"2": [1.5]}', ["T_item2attributes.json", "'2'"]),
    ("T_item2attributes.json", '{"2": [1], "2": [3]}', ["T_item2attributes.json", "'2'", "twice"]),
    ("T_item2attributes.json", '{"1": [1],\n "2": [', ["T_item2attributes.json", "line 2"]),
    ("T_sample.txt", GOOD_SAMPLE + "50 1 2 3\n",
     ["T_sample.txt:5", "user 50", "not in the dataset"]),
    ("T_sample.txt", "10 9 10 11\n30 1 3 4\n40 1 2 3\n", ["T_sample.txt", "user 20",
                                                          "line 2 of the sequence"]),
    ("T_sample.txt", "10 9 10 11\n20 1 2\n30 1 3 4\n",
     ["T_sample.txt:2", "2 negatives", "expected 3"]),
    ("T_sample.txt", "10 9 10 11\n20 1 2 6\n30 1 0 4\n", ["T_sample.txt:3", "non-positive"]),
    ("T_sample.txt", "10 9 10 11\n20 1 2 6\n30 1 -3 4\n", ["T_sample.txt:3", "non-positive"]),
    ("T_sample.txt", "10 9 10 11\n20 1 b 6\n30 1 3 4\n", ["T_sample.txt:2", "malformed"]),
    ("T_sample.txt", "10 9 10 11\n20 1 2 6\n20 1 2 6\n",
     ["T_sample.txt:3", "duplicate user id 20"]),
    ("T_sample.txt", "10 9 10 11\n20 1 2 60\n30 1 3 4\n", ["T_sample.txt:2", "60", "out of range"]),
]


@pytest.mark.parametrize("target,content,needles", BAD_CASES)
def test_bad_input_raises_and_writes_nothing(tmp_path, target, content, needles):
  directory = _write(tmp_path / "d", seqs=SEQS_WIDE, sample=GOOD_SAMPLE)
  (directory / target).write_text(content)
  before = _files(tmp_path)
  with pytest.raises(data.DataError) as info:
    data.load_dataset(directory, "T", sample_dir=tmp_path / "s", num_negatives=3, log=_no_log)
  for needle in needles:
    assert needle in str(info.value)
  assert _files(tmp_path) == before


@pytest.mark.parametrize("missing", ["T.txt", "T_item2attributes.json"])
def test_missing_file_raises_naming_path(tmp_path, missing):
  directory = _write(tmp_path / "d")
  (directory / missing).unlink()
  before = _files(tmp_path)
  with pytest.raises(data.DataError, match=str(directory / missing)):
    data.load_dataset(directory, "T", sample_dir=tmp_path / "s", num_negatives=3, log=_no_log)
  assert _files(tmp_path) == before


def test_good_sample_file_is_read_and_aligned(tmp_path):
  # Rows in a different order than the data: they are realigned to user_ids.
  sample = "30 1 3 4\n40 1 2 3\n10 9 10 11\n20 1 2 6\n"
  ds = data.load_dataset(_write(tmp_path, seqs=SEQS_WIDE, sample=sample), "T", num_negatives=3,
                         log=_no_log)
  np.testing.assert_array_equal(ds.sample_negatives,
                                [[9, 10, 11], [1, 2, 6], [1, 3, 4], [1, 2, 3]])


# ----------------------------------------------------------------------------
# Generated negatives.


def test_generated_negatives_are_valid_and_seeded():
  ds = data.synthetic_dataset(num_users=60, num_items=150, min_len=3, max_len=40, seed=1,
                              num_negatives=None)
  neg = data.generate_sample_negatives(ds, 99, np.random.default_rng(7))
  assert neg.shape == (60, 99) and neg.dtype == np.int32
  occurring = set(ds.items.tolist())
  for u in range(ds.num_users):
    row = set(neg[u].tolist())
    assert len(row) == 99
    assert not row & set(ds.sequence(u).tolist())
    assert row <= occurring
  again = data.generate_sample_negatives((ds.offsets, ds.items), 99, np.random.default_rng(7))
  np.testing.assert_array_equal(neg, again)
  other = data.generate_sample_negatives(ds, 99, np.random.default_rng(8))
  assert not np.array_equal(neg, other)


def test_generated_negatives_are_uniform():
  # 3000 users who all saw items {1, 2}, one more who saw 3..6. Negatives of
  # size 2 from {3, 4, 5, 6}: each item should be picked half of the time.
  items = np.concatenate([np.tile([1, 2], 3000), np.arange(3, 7)]).astype(np.int32)
  offsets = np.concatenate([np.arange(0, 6001, 2), [6004]])
  neg = data.generate_sample_negatives((offsets, items), 2, np.random.default_rng(0))[:3000]
  assert set(np.unique(neg).tolist()) == {3, 4, 5, 6}
  freq = np.bincount(neg.ravel(), minlength=7)[3:] / 3000
  np.testing.assert_allclose(freq, 0.5, atol=0.04)
  assert (neg[:, 0] != neg[:, 1]).all()


def test_too_few_candidates_raises():
  offsets = np.array([0, 3, 6])
  items = np.array([1, 2, 3, 3, 4, 5], np.int32)
  with pytest.raises(data.DataError, match="cannot draw 3 negatives"):
    data.generate_sample_negatives((offsets, items), 3, np.random.default_rng(0))


def test_write_read_round_trip_and_atomic(tmp_path):
  user_ids = np.array([5, 3, 9])
  neg = np.array([[1, 2], [3, 4], [5, 6]], np.int32)
  path = tmp_path / "X_sample.txt"
  data.write_sample_negatives(path, user_ids, neg)
  assert _files(tmp_path) == {"X_sample.txt"}
  assert path.read_text() == "5 1 2\n3 3 4\n9 5 6\n"
  np.testing.assert_array_equal(data.read_sample_negatives(path, [9, 5, 3], 2), neg[[2, 0, 1]])


def test_failed_write_leaves_old_file_and_no_temp(tmp_path, monkeypatch):
  path = tmp_path / "X_sample.txt"
  path.write_text("old\n")

  def broken_fsync(fd):
    raise OSError("disk full")

  monkeypatch.setattr(os, "fsync", broken_fsync)
  with pytest.raises(OSError, match="disk full"):
    data.write_sample_negatives(path, np.array([1]), np.array([[2, 3]]))
  assert _files(tmp_path) == {"X_sample.txt"}
  assert path.read_text() == "old\n"


def test_load_generates_into_data_dir_then_reads_back(tmp_path):
  directory = _write(tmp_path / "d", seqs=SEQS_WIDE)
  logs = []
  ds = data.load_dataset(directory, "T", num_negatives=3, sample_seed=4, log=logs.append)
  assert len(logs) == 1
  assert "generated" in logs[0] and "seed 4" in logs[0]
  assert str(directory / "T_sample.txt") in logs[0]
  assert _files(tmp_path / "d") == {"T.txt", "T_item2attributes.json", "T_sample.txt"}
  again = data.load_dataset(directory, "T", num_negatives=3, log=_no_log)
  np.testing.assert_array_equal(ds.sample_negatives, again.sample_negatives)
  expected = data.generate_sample_negatives(ds, 3, np.random.default_rng(4))
  np.testing.assert_array_equal(ds.sample_negatives, expected)


@pytest.fixture
def read_only_dir(tmp_path):
  directory = _write(tmp_path / "ro", seqs=SEQS_WIDE)
  directory.chmod(0o555)
  yield directory
  directory.chmod(0o755)


def test_load_read_only_data_dir_writes_to_sample_dir(tmp_path, read_only_dir):
  logs = []
  sample_dir = tmp_path / "samples"
  ds = data.load_dataset(read_only_dir, "T", sample_dir=sample_dir, num_negatives=3,
                         log=logs.append)
  assert _files(read_only_dir) == {"T.txt", "T_item2attributes.json"}
  assert _files(sample_dir) == {"T_sample.txt"}
  assert str(sample_dir / "T_sample.txt") in logs[0] and "seed 12345" in logs[0]
  # The next load finds it in sample_dir and generates nothing.
  again = data.load_dataset(read_only_dir, "T", sample_dir=sample_dir, num_negatives=3,
                            log=_no_log)
  np.testing.assert_array_equal(ds.sample_negatives, again.sample_negatives)


def test_load_read_only_without_sample_dir_keeps_in_memory(tmp_path, read_only_dir):
  logs = []
  before = _files(tmp_path)
  ds = data.load_dataset(read_only_dir, "T", num_negatives=3, log=logs.append)
  assert ds.sample_negatives.shape == (4, 3)
  assert "memory" in logs[0]
  assert _files(tmp_path) == before


def test_need_samples_false_touches_nothing(tmp_path):
  directory = _write(tmp_path / "d")
  ds = data.load_dataset(directory, "T", sample_dir=tmp_path / "s", log=_no_log,
                         need_samples=False)
  assert ds.sample_negatives is None
  assert _files(tmp_path) == {"d", "d/T.txt", "d/T_item2attributes.json"}


# ----------------------------------------------------------------------------
# Real data.


def test_lastfm_counts(shared_data_dir):
  ds = data.load_dataset(shared_data_dir, "LastFM", log=_no_log)
  assert ds.num_users == 1090 and ds.max_item == 3646 and ds.items.size == 52551
  assert ds.max_attr == 388
  assert len(data.pretrain_prefixes(ds, 50)[0]) == 25726
  first = (shared_data_dir / "LastFM_sample.txt").read_text().split("\n", 1)[0].split()
  assert ds.user_ids[0] == int(first[0])
  np.testing.assert_array_equal(ds.sample_negatives[0], [int(x) for x in first[1:]])
  assert ds.sample_negatives.shape == (1090, 99)


def test_beauty_counts(shared_data_dir):
  ds = data.load_dataset(shared_data_dir, "Beauty", need_samples=False, log=_no_log)
  assert ds.num_users == 22363 and ds.max_item == 12101 and ds.items.size == 198502
  assert ds.max_attr == 637
  assert len(data.pretrain_prefixes(ds, 50)[0]) == 150258


# ----------------------------------------------------------------------------
# Synthetic data.


def test_synthetic_is_deterministic():
  a, b = data.synthetic_dataset(seed=5), data.synthetic_dataset(seed=5)
  for field in ("user_ids", "offsets", "items", "attr_ids", "sample_negatives"):
    np.testing.assert_array_equal(getattr(a, field), getattr(b, field), err_msg=field)
  c = data.synthetic_dataset(seed=6)
  assert not np.array_equal(a.items, c.items)


def test_synthetic_is_valid():
  ds = data.synthetic_dataset()
  assert ds.name == "synthetic" and ds.num_users == 500
  lengths = ds.lengths()
  assert lengths.min() >= 5 and lengths.max() <= 30
  assert ds.items.min() >= 1 and ds.max_item == 300
  assert np.unique(ds.items).size == 300  # every item occurs
  assert ds.attr_ids.shape[0] == ds.item_size and ds.attr_ids.max() <= ds.max_attr <= 30
  assert not ds.attr_ids[0].any() and not ds.attr_ids[ds.mask_id].any()
  assert (ds.attr_ids[1:-1] > 0).any(axis=1).all()  # every item has an attribute
  assert ds.sample_negatives.shape == (500, 99)
  for u in range(0, 500, 50):
    assert not set(ds.sample_negatives[u].tolist()) & set(ds.sequence(u).tolist())


def test_synthetic_is_structured():
  ds = data.synthetic_dataset()
  same_user = np.repeat(np.arange(ds.num_users), ds.lengths())
  keep = same_user[1:] == same_user[:-1]
  prev, nxt = ds.items[:-1][keep], ds.items[1:][keep]
  counts = np.zeros((ds.item_size, ds.item_size))
  np.add.at(counts, (prev, nxt), 1)
  # Predicting the most frequent successor is right far more often than chance.
  accuracy = counts.max(axis=1).sum() / counts.sum()
  assert accuracy > 20 / ds.max_item
  # Consecutive items share attributes far more often than random item pairs.
  def share(a, b):
    rows_a, rows_b = ds.attr_ids[a], ds.attr_ids[b]
    hit = (rows_a[:, :, None] == rows_b[:, None, :]) & (rows_a[:, :, None] > 0)
    return hit.any(axis=(1, 2)).mean()
  rng = np.random.default_rng(0)
  shuffled = rng.permutation(nxt)
  assert share(prev, nxt) > share(prev, shuffled) + 0.3


def test_long_tail_synthetic_has_what_s3rec_is_for():
  ds = data.synthetic_long_tail_dataset(num_users=600, num_items=500, num_categories=10,
                                        num_attributes=30, seed=4)
  assert ds.max_item == 500 and ds.num_users == 600 and ds.max_attr <= 30
  again = data.synthetic_long_tail_dataset(num_users=600, num_items=500, num_categories=10,
                                           num_attributes=30, seed=4)
  np.testing.assert_array_equal(ds.items, again.items)
  lengths = ds.lengths()
  assert lengths.min() >= 4 and lengths.max() <= 8            # short histories
  counts = np.bincount(ds.items, minlength=ds.item_size)[1:ds.max_item + 1]
  assert counts.min() >= 1                                     # every item occurs
  assert np.mean(counts <= 3) > 0.3                            # a long tail of rare items
  assert counts.max() > 20 * np.median(counts)                 # and a popular head
  # Exactly one category (attribute 1..10) per item; the next item's category
  # follows the current one's far more often than its item id does.
  category = np.array([row[(row > 0) & (row <= 10)] for row in ds.attr_ids[1:ds.max_item + 1]])
  assert category.shape == (500, 1)
  category = np.concatenate([[0], category[:, 0]])
  same_user = np.repeat(np.arange(ds.num_users), lengths)
  keep = same_user[1:] == same_user[:-1]
  prev, nxt = ds.items[:-1][keep], ds.items[1:][keep]
  pairs = np.zeros((11, 11))
  np.add.at(pairs, (category[prev], category[nxt]), 1)
  assert pairs.max(axis=1).sum() / pairs.sum() > 0.8           # categories: nearly determined
  items = np.zeros((ds.item_size, ds.item_size))
  np.add.at(items, (prev, nxt), 1)
  assert items.max(axis=1).sum() / items.sum() < 0.5           # item ids: far from it


def test_long_tail_synthetic_rejects_bad_sizes():
  with pytest.raises(ValueError, match="num_attributes > num_categories"):
    data.synthetic_long_tail_dataset(num_categories=30, num_attributes=30)
  with pytest.raises(ValueError, match="min_len"):
    data.synthetic_long_tail_dataset(min_len=2)


# ----------------------------------------------------------------------------
# Dense ids (what train.py requires).


def test_dense_ids_are_required_only_when_asked(tmp_path):
  sparse = "1 1 2 3\n2 2 3 5000\n"
  root = _write(tmp_path / "items", seqs=sparse, attrs="{}")
  ds = data.load_dataset(root, "T", need_samples=False, log=_no_log)   # the reader accepts them
  assert ds.max_item == 5000
  before = _files(tmp_path)
  with pytest.raises(data.DataError, match=r"T\.txt:2: item id 5000 but only 4 distinct items.*"
                     r"5,002 rows.*s3rec-prepare"):
    # Refused before any negatives are drawn or written.
    data.load_dataset(root, "T", need_samples=True, require_dense_ids=True, log=_no_log)
  assert _files(tmp_path) == before


def test_sparse_attribute_ids_are_refused(tmp_path):
  root = _write(tmp_path, attrs='{"1": [1], "2": [3000]}')
  with pytest.raises(data.DataError, match=r"T_item2attributes\.json: attribute id 3000 but only "
                     r"2 distinct attributes"):
    data.load_dataset(root, "T", need_samples=False, require_dense_ids=True, log=_no_log)
  # A few unused ids are fine (the shipped datasets use every id; small gaps are harmless).
  root = _write(tmp_path / "gaps", attrs='{"1": [1], "2": [900]}')
  assert data.load_dataset(root, "T", need_samples=False, require_dense_ids=True,
                           log=_no_log).max_attr == 900


# ----------------------------------------------------------------------------
# Reading a block at a time; the memory-mapped form kept beside the text.


def _random_sequence_text(rng, users=300):
  lines = []
  for u in range(users):
    items = rng.integers(1, 500, size=int(rng.integers(3, 40)))
    lines.append(" ".join(map(str, [u + 1, *items])) + rng.choice(["", " ", "\r"]))
  return "\n".join(lines) + "\n\n"


@pytest.mark.parametrize("block_bytes", [1, 7, 100, 4096])
def test_reading_in_blocks_gives_the_same_arrays(tmp_path, monkeypatch, block_bytes):
  path = tmp_path / "T.txt"
  path.write_text(_random_sequence_text(np.random.default_rng(0)))
  whole = data.read_sequences(path)
  monkeypatch.setattr(data, "BLOCK_BYTES", block_bytes)
  for got, expected in zip(data.read_sequences(path), whole):
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == expected.dtype


@pytest.mark.parametrize("bad_line, needle", [
    ("7 1 2 x", "malformed"), ("7 1 2", "has 2 items"), ("", "blank line"),
    ("7 1 2 0", "non-positive id 0"), ("7 1 2 2147483647", "item id 2147483647 too large"),
    ("99999999999999999999 1 2 3", "user id 99999999999999999999 too large"),
])
def test_a_bad_line_in_a_late_block_names_its_line_in_the_file(tmp_path, monkeypatch, bad_line,
                                                               needle):
  lines = _random_sequence_text(np.random.default_rng(1), users=200).splitlines()[:200]
  lines.insert(150, bad_line)
  path = tmp_path / "T.txt"
  path.write_text("\n".join(lines) + "\n")
  monkeypatch.setattr(data, "BLOCK_BYTES", 64)
  with pytest.raises(data.DataError, match=f"T.txt:151: .*{needle}"):
    data.read_sequences(path)


def test_cache_keeps_mapped_arrays_beside_the_data_and_reuses_them(tmp_path):
  directory = _write(tmp_path / "d", seqs=SEQS_WIDE, sample=GOOD_SAMPLE)
  logs = []
  first = data.load_dataset(directory, "T", num_negatives=3, log=logs.append, cache=True)
  assert sorted(line.split(" to ")[0] for line in logs) == [
      "converted T.txt, T_item2attributes.json", "converted T_sample.txt, T.txt"]
  assert {"T.arrays", "T_sample.arrays"} <= set(os.listdir(directory))
  assert isinstance(first.items, np.memmap) and isinstance(first.sample_negatives, np.memmap)
  plain = data.load_dataset(directory, "T", num_negatives=3, log=_no_log)
  again = data.load_dataset(directory, "T", num_negatives=3, log=_no_log, cache=True)
  for ds in (first, again):
    for field in ("user_ids", "offsets", "items", "attr_ids", "sample_negatives"):
      np.testing.assert_array_equal(getattr(ds, field), getattr(plain, field))
    assert (ds.max_item, ds.max_attr) == (plain.max_item, plain.max_attr)
    np.testing.assert_array_equal(ds.sequence_keys, plain.sequence_keys)
  # A changed text file is converted again.
  (directory / "T.txt").write_text(SEQS_WIDE.replace("20 3 4 5", "20 3 4 5 9"))
  logs.clear()
  changed = data.load_dataset(directory, "T", num_negatives=3, log=logs.append, cache=True)
  assert changed.num_interactions == plain.num_interactions + 1 and len(logs) == 2


def test_cache_goes_to_sample_dir_when_the_data_is_read_only(tmp_path, read_only_dir):
  (read_only_dir.parent / "w").mkdir()
  ds = data.load_dataset(read_only_dir, "T", sample_dir=tmp_path / "w", num_negatives=3,
                         log=lambda _: None, cache=True)
  assert "T.arrays" in os.listdir(tmp_path / "w") and "T.arrays" not in os.listdir(read_only_dir)
  assert ds.num_users == 4


def test_in_sequence_answers_for_every_user_row(small):
  rows = np.repeat(np.arange(small.num_users), 9)[:, None]
  items = np.tile(np.arange(1, 10), small.num_users)[:, None]
  expected = [[int(i) in small.sequence(int(u)).tolist()] for u, i in zip(rows[:, 0], items[:, 0])]
  np.testing.assert_array_equal(small.in_sequence(rows, items), expected)


def test_first_users_keeps_the_first_rows_of_every_split(small):
  splits = data.finetune_splits(small, max_len=3)
  head = data.first_users(splits, 2)
  assert data.first_users(splits, 0) is splits
  for name, value in splits.items():
    assert len(head[name]) == 2
    np.testing.assert_array_equal(np.asarray(head[name]), np.asarray(value)[:2])


def test_prefix_ranges_find_every_prefix_from_its_index(tmp_path):
  path = tmp_path / "T.txt"
  path.write_text(_random_sequence_text(np.random.default_rng(2), users=50))
  user_ids, offsets, items = data.read_sequences(path)
  ds = data.Dataset(name="T", user_ids=user_ids, offsets=offsets, items=items,
                    max_item=int(items.max()), max_attr=0,
                    attr_ids=np.zeros((int(items.max()) + 2, 1), np.int32), sample_negatives=None)
  max_len = 8
  expected = []   # (start, end) in order: users in file order, prefixes by length
  for u in range(ds.num_users):
    lo, hi = int(offsets[u]), int(offsets[u + 1]) - 2
    first = max(lo, hi - max_len)
    expected += [(first, end) for end in range(first + 1, hi + 1)]
  prefixes = data.PrefixRanges(ds, max_len)
  assert len(prefixes) == len(expected)
  ids = np.random.default_rng(0).permutation(len(expected))
  starts, ends = prefixes.ranges(ids)
  assert list(zip(starts.tolist(), ends.tolist())) == [expected[i] for i in ids]
  np.testing.assert_array_equal(prefixes.lengths(ids), ends - starts)
  assert prefixes.mean_length() == pytest.approx(np.mean([e - s for s, e in expected]))


def test_processes_loading_at_once_parse_and_draw_the_negatives_once(tmp_path):
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  directory = _write(tmp_path / "d", seqs=SEQS_WIDE)
  code = ("import sys; from s3rec_jax.data import dataset as d; "
          "read = d.read_sequences; "
          "d.read_sequences = lambda *a: (print('parsed', flush=True), read(*a))[1]; "
          "ds = d.load_dataset(sys.argv[1], 'T', num_negatives=3, cache=True); "
          "print('sum', int(ds.sample_negatives.sum()))")
  procs = [subprocess.Popen([sys.executable, "-c", code, str(directory)], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
  outputs = [p.communicate(timeout=120) for p in procs]
  assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
  generated = sum(out.count("generated 3 sampled negatives") for out, _ in outputs)
  assert generated == 1, [out for out, _ in outputs]
  assert len({out.splitlines()[-1] for out, _ in outputs}) == 1   # the same negatives
  # One process parsed the text files; the others mapped its arrays.
  assert sum(out.count("parsed") for out, _ in outputs) == 1, [out for out, _ in outputs]
