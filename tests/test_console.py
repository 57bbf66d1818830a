"""core.console: progress bars only on a terminal."""

import io
import os
import pty

from s3rec_jax.core import console


def test_a_file_or_pipe_is_not_a_terminal(tmp_path):
  with open(tmp_path / "log.txt", "w") as f:
    assert not console.is_terminal(f)
  assert not console.is_terminal(io.StringIO())
  closed = open(tmp_path / "closed.txt", "w")
  closed.close()
  assert not console.is_terminal(closed)


def test_a_pseudo_terminal_is_one():
  parent, child = pty.openpty()
  try:
    with os.fdopen(child, "w", closefd=False) as stream:
      assert console.is_terminal(stream)
  finally:
    os.close(parent)
    os.close(child)
