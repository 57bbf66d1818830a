"""In-batch InfoNCE between two views of each sequence, shared by CL4SRec and DuoRec.

For the sequences i of the global batch (G of them; padding excluded) with
representations a_i and b_i of two views, the 2G candidates are
Z = [a_1..a_G, b_1..b_G]. The loss of a_i is

    -log exp(a_i . b_i / tau) / sum_{z in Z, z != a_i, z allowed} exp(a_i . z / tau)

and symmetrically for b_i (its positive is a_i); a sequence's loss is the
mean of its two directions (CL4SRec's and DuoRec's cross-entropy over the 2G
rows, summed per sequence). With `groups` (e.g. each sequence's target item)
candidates of the same group as i, other than its positive, are left out:
they are false negatives (DuoRec). `similarity` "dot" (both papers' code) or
"cosine".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _gather(x, axis_name):
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def info_nce(a: jax.Array, b: jax.Array, weights: jax.Array, *, temperature: float,
             axis_name: str | None, groups: jax.Array | None = None,
             similarity: str = "dot") -> jax.Array:
  """Sum over this device's real sequences of the two-direction InfoNCE (see module doc).

  a, b: [B, H] this device's representations; weights: [B] (0 = padding);
  groups: [B] ints or None. Negatives come from the whole global batch.
  """
  if similarity == "cosine":
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
  elif similarity != "dot":
    raise ValueError(f"similarity must be 'dot' or 'cosine', got {similarity!r}")
  local = a.shape[0]
  all_a, all_b, all_w = (_gather(x, axis_name) for x in (a, b, weights))
  count = all_a.shape[0]
  own = jnp.arange(local)
  if axis_name is not None:
    own = own + jax.lax.axis_index(axis_name) * local
  candidates = jnp.concatenate([all_a, all_b])                       # [2G, H]
  real = jnp.concatenate([all_w, all_w]) > 0
  column = jnp.arange(2 * count)
  if groups is not None:
    all_groups = _gather(groups, axis_name)
    same_group = (jnp.concatenate([all_groups, all_groups])[None, :] == groups[:, None])
  else:
    same_group = jnp.zeros((local, 2 * count), bool)

  def direction(queries, self_column, positive_column):
    logits = queries @ candidates.T / temperature                    # [B, 2G]
    is_positive = column[None, :] == positive_column[:, None]
    allowed = real[None, :] & (column[None, :] != self_column[:, None])
    allowed &= is_positive | ~same_group
    logits = jnp.where(allowed, logits, -jnp.inf)
    positive = jnp.take_along_axis(logits, positive_column[:, None], axis=1)[:, 0]
    return jax.nn.logsumexp(logits, axis=1) - positive

  per_sequence = 0.5 * (direction(a, own, count + own) + direction(b, count + own, own))
  return jnp.sum(jnp.where(weights > 0, per_sequence, 0.0) * weights)
