"""Errors that are the user's to fix, and how command-line tools report them.

Every error that bad input, a bad config or an unusable checkpoint can cause
derives from `UserError`. Its message already names the file, line, field or
tensor and what was expected, so the tools print that one line (no Python
traceback) and exit with status 2; any other exception is a bug and keeps its
traceback.
"""

from __future__ import annotations

import sys

EXIT_USER_ERROR = 2


class UserError(ValueError):
  """Bad input, config or checkpoint; the message says what and where."""


class UsageError(UserError):
  """A command used wrongly (flags that do not go together, a missing argument)."""


def one_line(message: str) -> str:
  """A message on one line (multi-line details joined with '; ')."""
  return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def report(prog: str, error: BaseException) -> None:
  print(f"{prog}: error: {one_line(str(error))}", file=sys.stderr, flush=True)
