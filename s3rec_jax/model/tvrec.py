"""TV-Rec (NeurIPS 2025): time-variant convolution filters from a learned spectral basis.

Each layer filters the positions of its input x [rows, L, H] with a filter of its own at
every position t, then the feed-forward block:

  h = c B_re / |B|      c [P, M] (P = L + K - 1), B [M, K + 1] complex; |B| per basis row
  y_t = sum_k h[t, k] x_pad[(t - k) mod P]      x_pad: x followed by K - 1 zero positions
  out = LN(x + dropout(y));  LN(out + dropout(FFN(out)))

The authors' code computes y through the graph Fourier transform of the directed cycle of
P nodes (its eigenvectors and the powers of its eigenvalues); since that cycle's k-th power
is the shift by k, the product is exactly the sum above, whose real part needs only B's
real part (its imaginary part enters through |B| and the penalty). The sum is applied here
as one [L, L] matrix per layer. Position t sees items t, t - 1, ..., and through the wrap
of the cycle position 0 also sees position L - 1 (tap K): the newest position never sees
past itself. c and B start from N(0, 1e-3) as torch.randn * 1e-3; the rest as SASRec's
layer. No position embeddings (the filters are time-variant), padding zeroed before every
layer, one sequence per row left-padded to max_seq_length, trained on prefixes. The newest
position reads no padding, so a short prefix may run on its row's last columns alone
(trims_padding; finetune.trim_padding).

The regulariser (the `encoder_penalty` objective, weighted by its objective weight): for
the real and the imaginary part of B, rows scaled to unit length, sum((B B^T - I)^2).
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from s3rec_jax.core import settings
from s3rec_jax.model import encoder
from s3rec_jax.model import encoder_registry

INIT_STD = 1e-3
NORM_EPSILON = 1e-12   # torch.nn.functional.normalize's


@settings.declare("tvrec")
class TVRecSettings:
  # M: basis vectors every position's filter is combined from.
  basis_size: int = settings.positive(8)
  # K: the filter order; a position's filter has K + 1 taps (the authors fix K = 50).
  order: int = settings.positive(50)


@functools.lru_cache(maxsize=None)
def tap_places(length: int, order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(t, k, s) int32: tap k of position t reads position s = (t - k) mod P of the row,
  P = length + order - 1, for every s < length (the others are the zero padding)."""
  period = length + order - 1
  t, k = np.meshgrid(np.arange(length), np.arange(order + 1), indexing="ij")
  s = (t - k) % period
  keep = s < length
  return t[keep].astype(np.int32), k[keep].astype(np.int32), s[keep].astype(np.int32)


def filter_matrix(coefficients: jax.Array, basis: jax.Array, length: int) -> jax.Array:
  """[L, L] W with y = W @ x: coefficients c [P, M], basis [M, K + 1, 2] (real, imaginary)."""
  order = basis.shape[1] - 1
  norm = jnp.sqrt(jnp.sum(jnp.square(basis), axis=(1, 2)))[:, None]               # [M, 1]
  taps = jnp.dot(coefficients[:length], basis[..., 0] / norm,
                 precision=jax.lax.Precision.HIGHEST)                              # [L, K + 1]
  t, k, s = tap_places(length, order)
  return jnp.zeros((length, length), taps.dtype).at[t, s].add(taps[t, k])


def basis_orthogonality(layer_params: dict, _settings=None) -> jax.Array:
  """sum((B B^T - I)^2) over the real and the imaginary part of the layer's basis, its rows
  scaled to unit length."""
  total = 0.0
  for part in (0, 1):
    rows = layer_params["basis"][..., part]                                        # [M, K + 1]
    rows = rows / jnp.maximum(jnp.linalg.norm(rows, axis=1, keepdims=True), NORM_EPSILON)
    gram = jnp.dot(rows, rows.T, precision=jax.lax.Precision.HIGHEST)
    total = total + jnp.sum(jnp.square(gram - jnp.eye(rows.shape[0], dtype=rows.dtype)))
  return total


class TVRecLayer(nn.Module):
  """The time-variant filter, then the feed-forward block (see above)."""
  config: encoder.ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, token_ids: jax.Array, positions: jax.Array,
               deterministic: bool, queries: encoder.Queries = encoder.Queries()) -> jax.Array:
    del bias, positions   # no attention; the filters know the positions
    cfg = self.config
    chosen = cfg.encoder_settings or TVRecSettings()
    length = x.shape[1]
    if length > cfg.max_len:
      raise ValueError(f"tvrec filters rows of at most max_seq_length={cfg.max_len} "
                       f"positions; got {length}")
    filtered_seed, transformed_seed = encoder.dropout_seeds(self, 2, deterministic)
    period = cfg.max_len + chosen.order - 1
    coefficients = self.param("coefficients", nn.initializers.normal(INIT_STD),
                              (period, chosen.basis_size))
    basis = self.param("basis", nn.initializers.normal(INIT_STD),
                       (chosen.basis_size, chosen.order + 1, 2))
    # A row narrower than max_len is a left-padded row's last `length` columns
    # (finetune.trim_padding): the columns cut were zero, so its block of the matrix is exact.
    matrix = filter_matrix(coefficients, basis, cfg.max_len)[cfg.max_len - length:,
                                                             cfg.max_len - length:]
    y = jnp.einsum("ts,bsh->bth", matrix, x, precision=jax.lax.Precision.HIGHEST)
    out_ids = encoder.gather_tokens(token_ids, queries)
    filtered = encoder.feature_dropout(encoder.gather_tokens(y, queries), filtered_seed,
                                       cfg.hidden_dropout, out_ids)
    y = encoder.layer_norm("filter_norm")(encoder.gather_tokens(x, queries) + filtered)
    transformed = encoder.FeedForward(cfg, name="feed_forward")(y)
    transformed = encoder.feature_dropout(transformed, transformed_seed, cfg.hidden_dropout,
                                           out_ids)
    return encoder.layer_norm("feed_forward_norm")(y + transformed)


encoder_registry.register(encoder_registry.EncoderSpec(
    "tvrec", TVRecLayer, mixes_positions=True, settings="tvrec", position_embeddings=False,
    zero_padding=True, penalty=basis_orthogonality, trims_padding=True))
