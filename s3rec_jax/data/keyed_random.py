"""Counter-based random numbers for host batches: every draw is a pure function of its key.

A draw is keyed by (seed, stream, epoch, sequence, position, draw number), hashed with the
splitmix64 finaliser. No generator state is carried from one draw to the next, so any process
or worker can build any sequence of any batch, in any order or any layout, and get the same
numbers: a batch is the same whatever the number of devices, processes or workers.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0 ** -53


def _mix(x: np.ndarray) -> np.ndarray:
  """splitmix64's finaliser: a bijection of uint64 whose output bits all depend on the input."""
  x = x ^ (x >> np.uint64(30))
  x = x * _M1
  x = x ^ (x >> np.uint64(27))
  x = x * _M2
  return x ^ (x >> np.uint64(31))


def key(*parts: int) -> np.uint64:
  """A key from integers (seed, stream, epoch, ...)."""
  with np.errstate(over="ignore"):
    h = np.uint64(0)
    for part in parts:
      h = _mix(h + np.uint64(int(part) & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + _GOLDEN)
  return h


def _hash(base: np.uint64, counters: tuple) -> np.ndarray:
  with np.errstate(over="ignore"):
    h = np.asarray(base, np.uint64)
    for counter in counters:
      c = np.asarray(counter).astype(np.int64).astype(np.uint64)
      h = _mix(h + c * _GOLDEN + _GOLDEN)
  return h


def uniform(base: np.uint64, *counters) -> np.ndarray:
  """Floats in [0, 1), one per element of the broadcast counters (53 random bits each)."""
  return (_hash(base, counters) >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def integers(base: np.uint64, low, high, *counters) -> np.ndarray:
  """Integers in [low, high] (inclusive; broadcast with the counters), uniform to 2**-53."""
  low = np.asarray(low, np.int64)
  span = np.asarray(high, np.int64) - low + 1
  return low + np.minimum((uniform(base, *counters) * span).astype(np.int64), span - 1)
