"""What made a result: the code's commit, the CPU and the library versions.

Read once per record; none of it enters results.json, which a resumed run must
reproduce exactly (a resume may run on another machine or a later commit).
"""

from __future__ import annotations

import os
import platform
import subprocess

# The checkout this package runs from (s3rec_jax/core/ -> the checkout), when it is one.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def commit() -> str | None:
  """The short commit of the checkout this package runs from (None outside git)."""
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout.strip() or None
  except (OSError, subprocess.CalledProcessError):
    return None


def cpu_model() -> str:
  """The CPU's model name (machines of one kind differ: print it beside every figure)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine() or "unknown"


def cpu() -> str:
  """The CPU's model name and core count, e.g. 'AMD EPYC 9B14, 2 cores'."""
  return f"{cpu_model()}, {os.cpu_count()} cores"


def libraries() -> dict[str, str]:
  """Versions of the libraries that decide the numbers."""
  import flax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}
