"""Parameters over the data-parallel mesh: their partition specs, and jit(shard_map) of a body
that takes them first.

Parameters are replicated, but for a sharded item table, split by rows (model.item_table).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.flatten_util
from jax.sharding import PartitionSpec as P

from s3rec_jax.core import parallel
from s3rec_jax.model import item_table as item_table_lib


def psum_flat(tree: Any) -> Any:
  """Sums a pytree over the data axis with a single collective."""
  flat, unravel = jax.flatten_util.ravel_pytree(tree)
  return unravel(jax.lax.psum(flat, parallel.DATA_AXIS))


def param_specs(params: Any, item_table_axis: str | None = None) -> Any:
  """Partition specs of a parameter tree: replicated, but for a sharded item table's rows."""
  def spec(path, _):
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    return P(item_table_axis) if item_table_axis and item_table_lib.is_table_path(name) else P()
  return jax.tree_util.tree_map_with_path(spec, params)


def with_params(body: Callable, mesh, item_table_axis: str | None, arg_specs: tuple,
                 out_specs) -> Callable:
  """jit(shard_map(body)) for body(params, *args): the params' specs come from the
  tree at trace time (a sharded item table split by rows), the args' are given."""
  def run(params, *args):
    # check_vma=False: gradients taken inside the body stay per-device, so the
    # explicit collectives are the only reductions.
    mapped = jax.shard_map(body, mesh=mesh,
                           in_specs=(param_specs(params, item_table_axis), *arg_specs),
                           out_specs=out_specs, check_vma=False)
    return mapped(params, *args)
  return jax.jit(run)
