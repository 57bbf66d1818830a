"""Jitted evaluation of a split under either protocol, and the metric early stopping watches."""

from __future__ import annotations

import jax
import numpy as np

from s3rec_jax.core import parallel
from s3rec_jax.data import dataset as data_lib
from s3rec_jax.data import input_pipeline
from s3rec_jax.evaluation import metrics as metrics_lib
from s3rec_jax.evaluation import steps as eval_steps
from s3rec_jax.model import encoder_registry
from s3rec_jax.ops import methods


class Evaluator:
  """Jitted evaluation of one split under one protocol, users sharded over the mesh.

  A split's batches are the same in every pass (only the parameters change),
  so they are built and placed on the devices once and kept, unless they
  would take more than `cache_bytes` of (this process's share of the) memory.
  """

  def __init__(self, config, ds, splits, mcfg, mesh, protocol: str,
               cache_bytes: int = 256 * 2**20):
    ec = config.eval
    splits = data_lib.first_users(splits, ec.get("max_users", 0))
    self.config, self.ds, self.splits, self.mesh, self.protocol = config, ds, splits, mesh, protocol
    ranking = ec.get("ranking", "scan")
    self.step = eval_steps.make_eval_step(mcfg, protocol, mesh, num_items=ds.max_item,
                                           chunk_size=ec.chunk_size, ranking=ranking)
    self.fingerprints = eval_steps.make_table_fingerprints(
        mesh, ec.chunk_size, mcfg.item_table_axis,
        needed=not (protocol == "full" and ranking == methods.FUSED_CPU))
    self.cache_bytes, self.cached = cache_bytes, {}
    self.shards = input_pipeline.Shards(*parallel.local_shards(mesh))
    # One batch shape for validation and test: the step compiles once.
    self.shape = input_pipeline.eval_shape(splits, ("valid", "test"), ec.batch_size,
                                           encoder_registry.packs(config), self.shards)

  def batches(self, split: str):
    """The split's batches, placed on the mesh (kept after the first pass if small enough)."""
    if split in self.cached:
      yield from self.cached[split]
      return
    kept, size = [], 0
    for batch in input_pipeline.prefetch(input_pipeline.eval_batches(
        self.ds, self.splits, split, self.protocol, self.config.eval.batch_size,
        encoder_registry.packs(self.config), self.shards, self.shape)):
      size += sum(v.nbytes for v in batch.values())
      placed = parallel.shard_batch(batch, self.mesh)
      if kept is not None and size <= self.cache_bytes:
        kept.append(placed)
      else:
        kept = None
      yield placed
    if kept is not None:
      self.cached[split] = kept

  def __call__(self, params, split: str) -> dict[str, float]:
    fingerprints = self.fingerprints(params)
    dispatched = []
    for batch in self.batches(split):
      dispatched.append(self.step(params, batch, fingerprints))
      parallel.bound_in_flight(dispatched)
    # The batches' sums are added on the host (float64) at the end: adding them
    # on the devices dispatched a small computation per metric and batch.
    per_batch = jax.device_get(dispatched)
    values = metrics_lib.finalize(
        {name: sum(np.float64(sums[name]) for sums in per_batch) for name in per_batch[0]})
    return {name: values[name] for name in eval_steps.metric_names(self.protocol)}


def early_stopping_metric(protocol: str) -> str:
  return "MRR" if protocol == "sampled" else "NDCG@20"
