"""A folder of named numpy arrays, written atomically and opened by memory map.

The out-of-core form of a dataset: each array is one `.npy` file, opened with
`mmap_mode="r"`, so loading costs no copy, the processes of one host share the
pages, and a dataset is bounded by disk rather than by one process's memory.
`meta.json` lists every array's dtype and shape (a truncated or foreign file is
caught on open) and whatever the writer adds, e.g. the fingerprints of the text
files the arrays were converted from, so that a changed source is noticed.

The folder is written beside its final place and renamed into it, under a lock
on the folder that holds it, which the processes of one host wait on: none sees
half a store, and the work is done once.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import shutil
import tempfile
import threading
from typing import Iterator, Mapping, Union

import numpy as np

from s3rec_jax.core import errors
from s3rec_jax.core import files

PathLike = Union[str, os.PathLike]

FORMAT = "s3rec-array-store"
VERSION = 1
_META = "meta.json"


class StoreError(errors.UserError):
  """A store folder that cannot be read as one (damaged, foreign, or of another version)."""


class MappedArray(np.memmap):
  """A whole array of a store, memory-mapped. It pickles as its file's path (what a worker
  process needs to map the same pages), not as its contents; slices and results of it are
  plain arrays or memmaps that pickle their values."""

  def __reduce__(self):
    if getattr(self, "_whole_file", False):
      return _map, (self.filename,)
    return super().__reduce__()


def _map(path: str) -> "MappedArray":
  array = np.load(path, mmap_mode="r", allow_pickle=False)
  mapped = array.view(MappedArray)
  mapped._whole_file = True   # pylint: disable=protected-access
  return mapped


def fingerprint(path: PathLike) -> dict[str, int]:
  """What identifies a source file's contents cheaply: its size and modification time."""
  st = os.stat(path)
  return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns)}


def write(directory: PathLike, arrays: Mapping[str, np.ndarray],
          meta: Mapping[str, object] | None = None) -> pathlib.Path:
  """Writes `arrays` (name -> array) and `meta` as the store `directory`, replacing it whole."""
  directory = pathlib.Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp",
                                      dir=directory.parent))
  try:
    listing = {}
    for name, array in arrays.items():
      array = np.asarray(array)
      if not name.isidentifier():
        raise ValueError(f"array name {name!r} is not an identifier")
      with open(tmp / f"{name}.npy", "wb") as f:
        np.save(f, array, allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
      listing[name] = {"dtype": array.dtype.str, "shape": list(array.shape)}
    payload = {"format": FORMAT, "version": VERSION, "arrays": listing, **dict(meta or {})}
    with open(tmp / _META, "w") as f:
      json.dump(payload, f, indent=1, sort_keys=True)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o755)   # mkdtemp makes it private
    old = None
    if directory.exists():
      # Move the old store aside first: rename() does not replace a non-empty folder.
      old = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old",
                                          dir=directory.parent))
      os.rmdir(old)
      os.rename(directory, old)
    os.rename(tmp, directory)
    files.fsync_dir(directory.parent)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)   # open memory maps keep their pages
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def read_meta(directory: PathLike) -> dict | None:
  """The store's meta (with its `arrays` listing), or None where there is no readable store."""
  try:
    with open(pathlib.Path(directory) / _META) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
    return None
  return meta


def open_arrays(directory: PathLike) -> tuple[dict[str, np.ndarray], dict]:
  """The store's arrays, memory-mapped read-only, and its meta."""
  directory = pathlib.Path(directory)
  meta = read_meta(directory)
  if meta is None:
    raise StoreError(f"{directory / _META}: missing or not a {FORMAT} version {VERSION} listing; "
                     f"expected a folder written by s3rec_jax (delete it to rebuild it)")
  arrays = {}
  for name, spec in meta["arrays"].items():
    path = directory / f"{name}.npy"
    try:
      array = _map(str(path))
    except (OSError, ValueError) as e:
      raise StoreError(f"{path}: cannot be opened ({e}); expected a .npy array (delete "
                       f"{directory} to rebuild it)") from None
    if array.dtype.str != spec["dtype"] or list(array.shape) != list(spec["shape"]):
      raise StoreError(f"{path}: holds {array.dtype.str} {list(array.shape)}, but {_META} "
                       f"lists {spec['dtype']} {spec['shape']} (delete {directory} to rebuild it)")
    arrays[name] = array
  return arrays, meta


# Folders this thread holds locked, with how many holds each: a lock taken again inside
# its own hold (a load that writes a store under the load's lock) is granted at once, where
# a second flock of the folder would wait on the first forever. Other threads still wait.
_HELD = threading.local()


@contextlib.contextmanager
def lock(directory: PathLike) -> Iterator[None]:
  """Holds an exclusive lock on the folder that holds `directory` (the processes of one host
  wait their turn; no lock file is left behind). Reentrant within a thread."""
  parent = pathlib.Path(directory).parent
  parent.mkdir(parents=True, exist_ok=True)
  key = os.path.realpath(parent)
  held = _HELD.__dict__.setdefault("folders", {})
  if held.get(key):
    held[key] += 1
    try:
      yield
    finally:
      held[key] -= 1
    return
  fd = os.open(parent, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX)
    held[key] = 1
    try:
      yield
    finally:
      del held[key]
  finally:
    os.close(fd)   # releases the lock
