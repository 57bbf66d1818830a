"""The shared blocks of the encoder layers in float64 numpy, for the layer tests."""

import math

import numpy as np
from scipy.special import erf


def layer_norm(p, x):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-12) * p["scale"] + p["bias"]


def dense(p, x):
  return x @ p["kernel"] + p["bias"]


def feed_forward_block(p, y):
  """LN(y + FFN(y)) with the exact (erf) GELU, the tail every layer shares."""
  f = p["feed_forward"]
  hidden = dense(f["dense_1"], y)
  hidden = 0.5 * hidden * (1 + erf(hidden / math.sqrt(2)))
  return layer_norm(p["feed_forward_norm"], y + dense(f["dense_2"], hidden))
