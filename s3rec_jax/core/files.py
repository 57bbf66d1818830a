"""Writing files so that readers never see half of one."""

from __future__ import annotations

import io
import json
import os
import tempfile
from typing import Any

from etils import epath

from s3rec_jax.core import paths


def write_bytes_atomic(path: str, data: bytes) -> None:
  """Writes through a temp file in the same folder, fsync and a rename. An object-store URL
  (gs://...) is written as one object, which the store replaces whole."""
  if paths.is_url(path):
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp makes it private
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def fsync_dir(directory) -> None:
  """Makes renames into `directory` durable (where the platform can open folders)."""
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:
    pass
  finally:
    os.close(fd)


def write_text_atomic(path: str, text: str) -> None:
  write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str, payload: Any) -> None:
  write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")


def save_figure_atomic(fig, path: str, dpi: int = 110) -> None:
  """A matplotlib figure as a PNG, written atomically."""
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png", dpi=dpi)
  write_bytes_atomic(path, buffer.getvalue())
