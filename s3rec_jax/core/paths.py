"""Paths of workdirs, checkpoints and data folders: local, or object-store URLs kept as they are.

A path with a scheme (gs://bucket/run, s3://...) goes through etils.epath, which reaches the
store where its filesystem backend is installed; orbax checkpoints take such URLs directly.
A local path is made absolute (orbax needs that), with `~` expanded.
"""

from __future__ import annotations

import os
import re

from etils import epath

_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def is_url(path: str | os.PathLike) -> bool:
  return bool(_URL.match(os.fspath(path)))


def absolute(path: str | os.PathLike) -> str:
  """A URL unchanged; a local path absolute, with `~` expanded."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
  """os.path.join for local paths; '/'-joined for URLs."""
  if is_url(path):
    return "/".join([path.rstrip("/"), *(p.strip("/") for p in parts)])
  return os.path.join(path, *parts)


def makedirs(path: str) -> None:
  epath.Path(absolute(path)).mkdir(parents=True, exist_ok=True)


def exists(path: str) -> bool:
  return epath.Path(absolute(path)).exists()


def read_text(path: str) -> str:
  return epath.Path(absolute(path)).read_text()
