"""Full ranking by the native CPU kernel (the `fused_cpu` ranking method).

The kernel (kernels/full_ranking_cpu.cc) makes each tile of scores in registers and counts
and merges it there, never storing a score: the ranks and top-k lists of
`evaluation.metrics.full_ranking`'s scan, for one device's block of the catalogue.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from s3rec_jax.ops import kernels
from s3rec_jax.ops import methods


def device_ranking(user_repr: jax.Array, item_table: jax.Array, answer_rows: jax.Array,
                   answers: jax.Array, history: jax.Array, base, *, num_items: int,
                   top_k: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """This device's counts [B] and top-k ids and scores [B, top_k], in float32.

  `item_table` is this device's block, whose row 0 is item id `base`; `answer_rows` [B, H]
  are the answers' rows (gathered from whichever device holds them); `history` [B, Lh] the
  ids to leave out (0-padded). Answer id 0 ranks nothing (the top-k alone).
  """
  (target,) = kernels.load(methods.KERNEL_OF["ranking"])
  user_repr = user_repr.astype(jnp.float32)
  item_table = item_table.astype(jnp.float32)
  batch, width = user_repr.shape[0], max(top_k, 1)
  call = jax.ffi.ffi_call(
      target,
      (jax.ShapeDtypeStruct((batch,), jnp.int32), jax.ShapeDtypeStruct((batch, width), jnp.int32),
       jax.ShapeDtypeStruct((batch, width), jnp.float32)),
      vmap_method="sequential")
  ranks, top_items, top_scores = call(
      user_repr, item_table, answer_rows.astype(jnp.float32), answers, history,
      jnp.reshape(jnp.asarray(base, jnp.int32), (1,)),
      num_items=np.int64(num_items), top_k=np.int64(top_k),
      threads=np.int64(kernels.threads_per_device()))
  return ranks, top_items[:, :top_k], top_scores[:, :top_k]
