"""What the command-line tools print: the project's own lines, not the libraries' chatter."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

# Orbax reports its own option handling (read-only managers, items a restore
# did not ask for) as warnings on every successful restore; our code reports
# the checkpoint problems a user can act on itself.
_QUIET_BELOW_ERROR = ("orbax",)


class _LibraryWarningFilter(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.ERROR:
      return True
    path = (record.pathname or "").replace("\\", "/")
    return not any(f"/{name}/" in path for name in _QUIET_BELOW_ERROR)


_FILTER = _LibraryWarningFilter()


def quiet_library_logging() -> None:
  """Absl/Python logging at WARNING and up, without orbax's routine warnings."""
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  absl_logging.set_verbosity(absl_logging.WARNING)
  for logger in (logging.getLogger("absl"), logging.getLogger()):
    if _FILTER not in logger.filters:
      logger.addFilter(_FILTER)
  for handler in logging.getLogger().handlers + logging.getLogger("absl").handlers:
    if _FILTER not in handler.filters:
      handler.addFilter(_FILTER)


def is_terminal(stream: TextIO | None = None) -> bool:
  """Whether `stream` (default stderr) is a terminal: progress bars go there and nowhere else,
  so a log file gets whole lines and no carriage returns."""
  stream = sys.stderr if stream is None else stream
  try:
    return stream.isatty()
  except (AttributeError, ValueError):   # a closed or stream-like object
    return False
