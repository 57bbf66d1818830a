"""The jitted evaluation step: users' ranks under the sampled or full protocol, as metric sums.

Users are sharded over the mesh's data axis; the item table is replicated, or split by rows
(each device ranks every user against its block, then keeps its own users' ranks).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from s3rec_jax.core import parallel
from s3rec_jax.evaluation import metrics as metrics_lib
from s3rec_jax.model import encoder as model_lib
from s3rec_jax.model import item_table as item_table_lib
from s3rec_jax.model import sharding

AXIS = parallel.DATA_AXIS


def metric_names(protocol: str) -> tuple[str, ...]:
  if protocol == "sampled":
    return metrics_lib.SAMPLED_METRICS
  if protocol == "full":
    return metrics_lib.FULL_METRICS
  raise ValueError(f"unknown evaluation protocol {protocol!r}; valid protocols: sampled, full")


def make_eval_step(model_config, protocol: str, mesh, *, num_items: int,
                   chunk_size: int, ranking: str = "scan") -> Callable:
  """(params, batch, fingerprints) -> per-metric sums over the batch's real users (and 'count').

  `fingerprints` is `metrics.table_fingerprints` of the item table, computed
  once per pass (see `make_table_fingerprints`).
  """
  names = metric_names(protocol)

  axis = model_config.item_table_axis

  def step(params: Any, batch: dict, fingerprints: jax.Array):
    # Only each user's newest token is scored: the last layer computes just that one.
    user = model_lib.encode(model_config, params, batch["inputs"], causal=True,
                            segment_ids=batch["segment_ids"], positions=batch["positions"],
                            queries=model_lib.Queries(0, batch["last_index"]))  # [B_local, H]
    table = model_lib.item_table(params)       # all of it, or this device's block
    if protocol == "sampled":
      candidates = batch["candidates"]
      if axis is not None:
        # Each user's candidate rows and fingerprints, laid out as a table of
        # its own: sampled_scores then looks up rows 0..B*C-1 in order.
        rows = item_table_lib.lookup(table, candidates, axis).reshape(-1, table.shape[1])
        fingerprints = item_table_lib.lookup(fingerprints, candidates, axis).reshape(-1, 2)
        table, candidates = rows, jnp.arange(rows.shape[0]).reshape(candidates.shape)
      ranks = metrics_lib.rank_of_first(
          metrics_lib.sampled_scores(user, table, candidates, fingerprints))
    elif axis is None:
      ranks, _, _ = metrics_lib.full_ranking(user, table, batch["answers"], batch["history"],
                                             num_items=num_items, chunk_size=chunk_size,
                                             top_k=0, fingerprints=fingerprints, method=ranking)
    else:
      # Every device ranks every device's users against its block; each keeps its own.
      gather = lambda x: jax.lax.all_gather(x, AXIS, tiled=True)
      ranks, _, _ = metrics_lib.full_ranking(
          gather(user), table, gather(batch["answers"]), gather(batch["history"]),
          num_items=num_items, chunk_size=chunk_size, top_k=0, fingerprints=fingerprints,
          axis_name=axis, method=ranking)
      ranks = jax.lax.dynamic_slice_in_dim(ranks, jax.lax.axis_index(AXIS) * user.shape[0],
                                           user.shape[0])
    return sharding.psum_flat(metrics_lib.metric_sums(ranks, batch["weights"], names))

  return sharding.with_params(step, mesh, axis, (P(AXIS), P(axis) if axis else P()), out_specs=P())


def make_table_fingerprints(mesh, chunk_size: int, item_table_axis: str | None = None,
                            needed: bool = True) -> Callable:
  """params -> fingerprints of the item table's rows, replicated over the mesh (split by
  rows like the table when it is sharded). `needed=False` (the fused_cpu full ranking ties
  bit-identical rows by itself): zeros of the same shape, without hashing the table."""
  def fingerprints(params):
    table = model_lib.item_table(params)
    if not needed:
      return jnp.zeros((table.shape[0], 2), jnp.uint32)
    return metrics_lib.table_fingerprints(table, chunk_size)

  if item_table_axis is None:
    return jax.jit(fingerprints, out_shardings=parallel.replicated(mesh))
  return sharding.with_params(fingerprints, mesh, item_table_axis, (), out_specs=P(item_table_axis))
