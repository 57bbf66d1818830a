"""BSARec (Shin et al., AAAI 2024): attention blended with a Fourier inductive-bias branch.

Each layer mixes two branches of its input x [rows, L, H], then the feed-forward block:

  attention: LN(x + dropout(MultiHeadAttention(x)))             (as SASRec's layer)
  filter:    low = irfft(rfft(x) with the frequencies from c//2 + 1 on set to 0)
             LN(x + dropout(low + beta^2 (x - low)))            (beta [H], one per channel)
  out:       y = alpha filter + (1 - alpha) attention;  LN(y + dropout(FFN(y)))

rfft/irfft run over the L positions of the row with the orthonormal norm, as the authors'
code has (torch.fft, norm="ortho"); the low-pass is a fixed linear map of the positions,
applied here as an [L, L] matrix. `beta` starts from N(0, 1) (torch.randn), the rest as
SASRec's layer. The filter sees every position of the row, padding included, so the layer
needs one sequence per row left-padded to max_seq_length and trains on prefixes
(mixes_positions).
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


@settings.declare("bsarec")
class BSARecSettings:
  # The blend: alpha x filter branch + (1 - alpha) x attention branch.
  alpha: float = settings.probability(0.7)
  # The low-pass keeps the lowest c // 2 + 1 frequencies of the row.
  c: int = settings.positive(5)


@functools.lru_cache(maxsize=None)
def low_pass_matrix(length: int, c: int) -> np.ndarray:
  """[L, L] float32 P with P @ x = irfft(rfft(x, ortho) keeping bins < c // 2 + 1, ortho)."""
  spectrum = np.fft.rfft(np.eye(length), axis=0, norm="ortho")
  spectrum[c // 2 + 1:] = 0
  return np.fft.irfft(spectrum, n=length, axis=0, norm="ortho").astype(np.float32)


class BSARecLayer(nn.Module):
  """The attention and filter branches blended, then the feed-forward block (see above)."""
  config: encoder.ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, token_ids: jax.Array, positions: jax.Array,
               deterministic: bool, queries: encoder.Queries = encoder.Queries()) -> jax.Array:
    cfg = self.config
    chosen = cfg.encoder_settings or BSARecSettings()
    attention_seed, attended_seed, filtered_seed, transformed_seed = encoder.dropout_seeds(
        self, 4, deterministic)
    out_ids = encoder.gather_tokens(token_ids, queries)
    own = encoder.gather_tokens(x, queries)
    attended = encoder.SelfAttention(cfg, name="attention")(x, bias, token_ids, positions,
                                                            queries, attention_seed)
    attended = encoder.feature_dropout(attended, attended_seed, cfg.hidden_dropout, out_ids)
    attention_branch = encoder.layer_norm("attention_norm")(own + attended)

    sqrt_beta = self.param("sqrt_beta", nn.initializers.normal(1.0), (x.shape[-1],))
    low = jnp.einsum("ts,bsh->bth", low_pass_matrix(x.shape[1], chosen.c), x,
                     precision=jax.lax.Precision.HIGHEST)
    filtered = encoder.gather_tokens(low + jnp.square(sqrt_beta) * (x - low), queries)
    filtered = encoder.feature_dropout(filtered, filtered_seed, cfg.hidden_dropout, out_ids)
    filter_branch = encoder.layer_norm("filter_norm")(own + filtered)

    y = chosen.alpha * filter_branch + (1.0 - chosen.alpha) * attention_branch
    transformed = encoder.FeedForward(cfg, name="feed_forward")(y)
    transformed = encoder.feature_dropout(transformed, transformed_seed, cfg.hidden_dropout,
                                           out_ids)
    return encoder.layer_norm("feed_forward_norm")(y + transformed)


encoder_registry.register(encoder_registry.EncoderSpec(
    "bsarec", BSARecLayer, mixes_positions=True, settings="bsarec"))
