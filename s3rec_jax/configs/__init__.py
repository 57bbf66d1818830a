"""The packaged configs: `s3rec-train --config=NAME` finds s3rec_jax/configs/NAME.py.

Each is a Python file with get_config() returning an ml_collections.ConfigDict; default.py
holds every field with its meaning, the others override a few.
"""

from __future__ import annotations

import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def names() -> tuple[str, ...]:
  """The packaged config names (file names without .py)."""
  return tuple(sorted(f[:-3] for f in os.listdir(_HERE)
                      if f.endswith(".py") and not f.startswith("_")))


def path_of(name: str) -> str | None:
  """The packaged config file called `name`, or None."""
  return os.path.join(_HERE, f"{name}.py") if name in names() else None
