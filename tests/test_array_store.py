"""data/array_store.py: named arrays written atomically, mapped back, pickled by path."""

import json
import os
import pickle
import threading

import numpy as np
import pytest

from s3rec_jax.data import array_store


def _arrays():
  return {"items": np.arange(10, dtype=np.int32), "table": np.ones((3, 4), np.int64) * 7,
          "empty": np.zeros((0, 5), np.float32)}


def test_round_trip_is_memory_mapped_and_keeps_meta(tmp_path):
  array_store.write(tmp_path / "s", _arrays(), {"key": {"x": 1}})
  arrays, meta = array_store.open_arrays(tmp_path / "s")
  assert meta["key"] == {"x": 1} and set(meta["arrays"]) == {"items", "table", "empty"}
  for name, expected in _arrays().items():
    assert isinstance(arrays[name], np.memmap) and arrays[name].dtype == expected.dtype
    np.testing.assert_array_equal(arrays[name], expected)
  with pytest.raises(ValueError):
    arrays["items"][0] = 1   # read-only


def test_a_whole_array_pickles_as_its_path_a_slice_as_its_values(tmp_path):
  big = {"big": np.arange(1 << 20, dtype=np.int64)}
  array_store.write(tmp_path / "s", big)
  mapped = array_store.open_arrays(tmp_path / "s")[0]["big"]
  data = pickle.dumps(mapped)
  assert len(data) < 1000   # a path, not 8 MiB
  np.testing.assert_array_equal(pickle.loads(data), big["big"])
  part = pickle.loads(pickle.dumps(mapped[5:9]))
  np.testing.assert_array_equal(part, [5, 6, 7, 8])


def test_rewrite_replaces_whole_and_leaves_no_temporaries(tmp_path):
  array_store.write(tmp_path / "s", _arrays())
  old = array_store.open_arrays(tmp_path / "s")[0]["items"]
  array_store.write(tmp_path / "s", {"items": np.full(4, 3, np.int32)})
  arrays, meta = array_store.open_arrays(tmp_path / "s")
  assert set(arrays) == {"items"} and arrays["items"].tolist() == [3, 3, 3, 3]
  assert old.tolist() == list(range(10))   # an open map keeps the pages it had
  assert sorted(os.listdir(tmp_path)) == ["s"]


def test_a_failed_write_leaves_nothing(tmp_path):
  with pytest.raises(ValueError, match="not an identifier"):
    array_store.write(tmp_path / "s", {"ok": np.zeros(2), "bad name": np.zeros(2)})
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("damage, message", [
    ("truncate", "items.npy: cannot be opened .* to rebuild it"),
    ("meta", "meta.json: missing"),
])
def test_a_damaged_store_is_one_clear_error(tmp_path, damage, message):
  array_store.write(tmp_path / "s", _arrays())
  if damage == "truncate":
    path = tmp_path / "s" / "items.npy"
    path.write_bytes(path.read_bytes()[:-8])
  else:
    (tmp_path / "s" / "meta.json").write_text(json.dumps({"format": "other"}))
  with pytest.raises(array_store.StoreError, match=message):
    array_store.open_arrays(tmp_path / "s")
  assert (array_store.read_meta(tmp_path / "s") is None) == (damage == "meta")


def test_lock_lets_one_holder_in_at_a_time(tmp_path):
  order = []

  def hold(name):
    with array_store.lock(tmp_path / "s"):
      order.append(f"{name} in")
      threading.Event().wait(0.05)
      order.append(f"{name} out")

  threads = [threading.Thread(target=hold, args=(n,)) for n in "ab"]
  for t in threads:
    t.start()
  for t in threads:
    t.join()
  assert order[0][0] == order[1][0] and order[2][0] == order[3][0]
  assert os.listdir(tmp_path) == []   # no lock file left behind


def test_a_lock_is_granted_again_inside_its_own_hold(tmp_path):
  # A load writes its stores under its own lock on the same folder: no wait on itself.
  with array_store.lock(tmp_path / "a"):
    with array_store.lock(tmp_path / "b"):
      pass
    with array_store.lock(tmp_path / "a"):
      pass
  other = threading.Thread(target=lambda: array_store.lock(tmp_path / "a").__enter__())
  other.start()
  other.join(timeout=10)
  assert not other.is_alive()   # released: another thread gets it
