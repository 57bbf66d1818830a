"""Jitted pre-training and fine-tuning steps over a data-parallel mesh.

The steps are pure: (state, batch, tables, key) -> (state, metrics). Each is
`jax.jit` of a `shard_map` over the mesh's 'data' axis: the batch is sharded
(every device holds its own packed shard, see input_pipeline.Shards), the
parameters and tables are replicated, and the optimiser state is sharded
(ZeRO-1, see `_reduce_and_update`). With a sharded item table
(model.item_table, s3rec_jax.model.item_table) the table and its optimiser state
are split by rows instead. Every device computes the loss terms and
gradients of its shard; the flat gradient is reduce-scattered over devices and
the loss terms are summed, so losses are sums (or means over the global target
count) over the GLOBAL batch whatever the number of devices or processes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax
import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from s3rec_jax.core import parallel
from s3rec_jax.model import encoder as model_lib
from s3rec_jax.model import item_table as item_table_lib
from s3rec_jax.model import sharding
from s3rec_jax import objectives as objectives_lib
from s3rec_jax.objectives import views as views_lib
from s3rec_jax.ops import catalogue_softmax

AXIS = parallel.DATA_AXIS


@flax.struct.dataclass
class TrainState:
  """Parameters as a tree, replicated (what the model and checkpoints read); the
  optimiser state over the flat parameter vector, zero-padded to a multiple of
  the device count and sharded over the data axis (see `_reduce_and_update`).

  With the item table sharded, the table is split by rows and `opt_state` is
  {"flat": the state over the other parameters' flat vector, "item_table": the
  table's own state, split by rows like it}.
  """
  step: jax.Array
  params: Any
  opt_state: Any


def _state_specs(state: TrainState, item_table_axis: str | None) -> TrainState:
  """Partition specs of a state: vectors of the optimiser state sharded (and the sharded
  item table's moments by rows), the rest replicated but for a sharded item table."""
  return TrainState(step=P(), params=sharding.param_specs(state.params, item_table_axis),
                    opt_state=jax.tree_util.tree_map(_opt_state_spec, state.opt_state))


def _opt_state_spec(leaf) -> P:
  """Vectors of the optimiser state (Adam's moments) are sharded, and a sharded item
  table's [rows, H] moments by rows; scalars (Adam's count) are not."""
  return P(AXIS) if leaf.ndim else P()


def _training_step(body: Callable, mesh, batch_first_specs: tuple,
                   item_table_axis: str | None = None) -> Callable:
  """jit(shard_map(body)) for body(state, batch, *replicated) -> (state, metrics).

  The state's specs come from its structure at trace time; it is donated.
  """
  def run(state, *args):
    specs = _state_specs(state, item_table_axis)
    mapped = jax.shard_map(body, mesh=mesh, in_specs=(specs, *batch_first_specs),
                           out_specs=(specs, P()), check_vma=False)
    return mapped(state, *args)
  return jax.jit(run, donate_argnums=(0,))


def make_optimizer(learning_rate: float, b1: float, b2: float,
                   weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam as the reference: torch-style L2 (added to the gradient) when weight_decay > 0."""
  adam = optax.adam(learning_rate, b1=b1, b2=b2, eps=1e-8)
  if weight_decay:
    return optax.chain(optax.add_decayed_weights(weight_decay), adam)
  return adam


def padded_size(size: int, num_shards: int) -> int:
  return -(-size // num_shards) * num_shards


def _split_table(params: Any) -> tuple[Any, Any]:
  """(the item table, the other parameters)."""
  group = item_table_lib.PARAM_GROUP
  return params[group][item_table_lib.PARAM_NAME], {k: v for k, v in params.items() if k != group}


def _join_table(table: Any, rest: Any) -> Any:
  return {**rest, item_table_lib.PARAM_GROUP: {item_table_lib.PARAM_NAME: table}}


def _flat_opt_state(params: Any, tx: optax.GradientTransformation, num_shards: int) -> Any:
  """The optimiser state of the flat parameter vector, zero-padded to `num_shards` slices."""
  flat = np.asarray(jax.device_get(jax.flatten_util.ravel_pytree(params)[0]))
  padded = np.zeros(padded_size(flat.size, num_shards), flat.dtype)
  padded[:flat.size] = flat
  return jax.device_get(tx.init(padded))


def _put(x, mesh, spec):
  return jax.device_put(x if isinstance(x, jax.Array) else np.asarray(x), NamedSharding(mesh, spec))


def place_params(params: Any, mesh, item_table_axis: str | None = None) -> Any:
  """Parameters onto `mesh`: replicated, but for a sharded item table's rows."""
  return jax.tree_util.tree_map(lambda x, spec: _put(x, mesh, spec), params,
                                sharding.param_specs(params, item_table_axis))


def create_state(params: Any, tx: optax.GradientTransformation, mesh,
                 item_table_axis: str | None = None) -> TrainState:
  """A fresh state placed on `mesh`: parameters replicated, optimiser state sharded; with
  `item_table_axis`, the item table and its optimiser state split by rows (the table's
  rows must divide over the mesh: model.ModelConfig.item_rows)."""
  put = lambda x, spec: _put(x, mesh, spec)
  placed = place_params(params, mesh, item_table_axis)
  place_state = lambda tree: jax.tree_util.tree_map(lambda x: put(x, _opt_state_spec(x)), tree)
  if item_table_axis:
    table, rest = _split_table(placed)
    # The table's state is made where it lives: no device holds all of it.
    shardings = jax.tree_util.tree_map(lambda x: NamedSharding(mesh, _opt_state_spec(x)),
                                       jax.eval_shape(tx.init, table))
    opt_state = {"flat": place_state(_flat_opt_state(rest, tx, mesh.size)),
                 item_table_lib.OPT_STATE_KEY: jax.jit(tx.init, out_shardings=shardings)(table)}
  else:
    opt_state = place_state(_flat_opt_state(params, tx, mesh.size))
  return TrainState(step=put(np.zeros((), np.int32), P()), params=placed, opt_state=opt_state)


@jax.jit
def step_key(base_key: jax.Array, epoch: int, step: int) -> jax.Array:
  """The PRNG key of one step, derived from (seed, epoch, step) only.

  Jitted: two op-by-op fold_ins, dispatched from the host every step, were a
  visible share of a small model's step on a CPU host.
  """
  return jax.random.fold_in(jax.random.fold_in(base_key, epoch), step)


def _reduce_and_update(state: TrainState, grads: Any, scalars: dict,
                       tx: optax.GradientTransformation,
                       item_table_axis: str | None = None) -> tuple[TrainState, dict]:
  """Sums gradients and `scalars` over the data axis and applies one optimiser update.

  ZeRO-1: the flat gradient is reduce-scattered, so each device receives the
  global sum of its 1/N slice of the vector; it runs Adam on that slice of the
  parameters and of the (sharded) optimiser state, and the slices of the update
  are all-gathered and added to the replicated parameters. Adam is elementwise, so this is
  the arithmetic of one update of the whole vector, at 1/N of the optimiser's
  work and memory per device; on a CPU host, whose devices share the cores,
  the replicated update was a large share of a small model's step.

  A sharded item table stays out of the flat vector: each device's block
  gradient is already the global one (s3rec_jax.model.item_table), so the device
  updates its block with its block of the table's optimiser state, locally.

  The update is skipped when any scalar or the gradient is not finite: the
  state stays at the last good step, so the host can stop the run with the
  step and objective named while everything saved stays usable.
  """
  if item_table_axis:
    table, params = _split_table(state.params)
    table_grad, grads = _split_table(grads)
    flat_state = state.opt_state["flat"]
    table_state = state.opt_state[item_table_lib.OPT_STATE_KEY]
    table_sq = jnp.sum(jnp.square(table_grad))
  else:
    params, flat_state, table_sq = state.params, state.opt_state, 0.0
  flat_params, unravel = jax.flatten_util.ravel_pytree(params)
  flat_grads, _ = jax.flatten_util.ravel_pytree(grads)
  size = flat_params.size
  num_shards = jax.lax.axis_size(AXIS)
  padded = padded_size(size, num_shards)
  local = padded // num_shards
  pad = lambda x: jnp.pad(x, (0, padded - size))
  grad_slice = jax.lax.psum_scatter(pad(flat_grads), AXIS, tiled=True)
  param_slice = jax.lax.dynamic_slice_in_dim(pad(flat_params),
                                             jax.lax.axis_index(AXIS) * local, local)
  scalars, grad_sq = sharding.psum_flat((scalars, jnp.sum(jnp.square(grad_slice)) + table_sq))
  grad_norm = jnp.sqrt(grad_sq)
  finite = jnp.isfinite(grad_norm)
  for value in scalars.values():
    finite &= jnp.isfinite(value)
  keep = lambda new, old: jnp.where(finite, new, old)
  # Adam reads no parameters (XLA drops `param_slice` then); weight decay does.
  updates, new_flat_state = tx.update(grad_slice, flat_state, param_slice)
  # The updates are all-gathered and added leaf by leaf: the same sums as
  # adding them to the flat slice, without re-assembling the parameter vector.
  all_updates = jax.lax.all_gather(jnp.where(finite, updates, 0.0), AXIS, tiled=True)
  params = jax.tree_util.tree_map(jnp.add, params, unravel(all_updates[:size]))
  opt_state = jax.tree_util.tree_map(keep, new_flat_state, flat_state)
  if item_table_axis:
    table_updates, new_table_state = tx.update(table_grad, table_state, table)
    params = _join_table(table + jnp.where(finite, table_updates, 0.0), params)
    opt_state = {"flat": opt_state, item_table_lib.OPT_STATE_KEY: jax.tree_util.tree_map(
        keep, new_table_state, table_state)}
  new = state.replace(step=state.step + finite.astype(state.step.dtype), params=params,
                      opt_state=opt_state)
  return new, dict(scalars, grad_norm=grad_norm, finite=finite)


# --- the objectives' loss, for both phases -----------------------------------

PHASES = objectives_lib.PHASES


def _phase_keys(key: jax.Array, phase: str) -> tuple[jax.Array, jax.Array]:
  """(dropout key, objectives' key) of a step. Fine-tuning encodes with the step's key
  itself, as it always has, so runs of the default losses keep their random streams."""
  if phase == "finetune":
    return key, jax.random.fold_in(key, 1)
  dropout_key, objective_key = jax.random.split(key)
  return dropout_key, objective_key


def phase_batch(batch: dict, phase: str) -> dict:
  """The batch with `sequence`, the phase's item sequence: pre-training's prefixes
  (`items`) or fine-tuning's inputs."""
  if "sequence" in batch:
    return batch
  return dict(batch, sequence=batch["items"] if phase == "pretrain" else batch["inputs"])


def objective_losses(params: Any, batch: dict, tables: dict, key: jax.Array, *,
                     model_config: model_lib.ModelConfig, objectives: Sequence,
                     options: objectives_lib.ObjectiveOptions, phase: str,
                     train: bool = True) -> dict[str, jax.Array]:
  """Each objective's loss (a sum over this device's batch); all views in ONE encoder pass.

  The views the objectives read (batch arrays, or built on device by
  s3rec_jax.objectives.views) are stacked along the row axis (inside the per-device body,
  so no data moves between devices): first those some objective reads at
  every token, then those read only at each sequence's newest token, for
  which the last layer computes just that token. Pre-training encodes
  bidirectionally, fine-tuning causally.
  """
  batch = phase_batch(batch, phase)
  full_views, last_views = objectives_lib.views_of(objectives, options)
  names = full_views + last_views
  dropout_key, objective_key = _phase_keys(key, phase)
  view_key = jax.random.fold_in(objective_key, 0x5EED)
  built = {name: views_lib.build(name, batch, view_key, options) for name in names}
  stack = lambda field: jnp.stack([getattr(built[n], field) for n in names])   # [V, R, L]
  ids = stack("ids")
  v, r, l = ids.shape
  # Each view of a token is a distinct token for dropout.
  token_ids = batch["token_ids"][None] * v + jnp.arange(v)[:, None, None]
  queries = None
  if last_views:
    newest = (jnp.stack([built[n].last_index for n in last_views])
              + (jnp.arange(len(last_views)) * r * l)[:, None])
    queries = model_lib.Queries(dense_rows=len(full_views) * r, index=newest.reshape(-1))
  out = model_lib.encode(model_config, params, ids.reshape(v * r, l), causal=phase == "finetune",
                         dropout_key=dropout_key if train else None,
                         segment_ids=stack("segment_ids").reshape(v * r, l),
                         positions=stack("positions").reshape(v * r, l),
                         token_ids=token_ids.reshape(v * r, l), queries=queries)
  hidden = out.shape[-1]
  dense = out[:len(full_views) * r * l].reshape(len(full_views), r, l, hidden)
  newest_out = out[len(full_views) * r * l:].reshape(
      len(last_views), batch["last_index"].shape[0], hidden)
  inputs = objectives_lib.ObjectiveInputs(
      outputs={name: dense[i] for i, name in enumerate(full_views)}, params=params, batch=batch,
      tables=tables, key=objective_key, options=options,
      last_outputs={name: newest_out[i] for i, name in enumerate(last_views)},
      layouts={n: built[n] for n in names if views_lib.is_built_on_device(n)})
  return objectives_lib.losses_of(objectives, inputs)


def pretrain_loss(params: Any, batch: dict, tables: dict, key: jax.Array, *,
                  model_config: model_lib.ModelConfig, objectives: Sequence,
                  options: objectives_lib.ObjectiveOptions, train: bool = True):
  """(joint pre-training loss: the weighted sum of the objectives' sums, each loss by name)."""
  losses = objective_losses(params, batch, tables, key, model_config=model_config,
                            objectives=objectives, options=options, phase="pretrain", train=train)
  return objectives_lib.weighted_total(objectives, losses), losses


def mean_divisors(batch: dict | tuple, axis_name: str | None = AXIS) -> dict[str, jax.Array]:
  """Fine-tuning's divisors: the GLOBAL numbers of target positions and of sequences
  (devices hold different numbers of each), over every group of a batch of groups."""
  groups = batch if isinstance(batch, tuple) else (batch,)
  counts = {"targets": sum(jnp.sum((g["targets"] > 0).astype(jnp.float32)) for g in groups),
            "sequences": sum(jnp.sum(objectives_lib.sequence_weights(g).astype(jnp.float32))
                             for g in groups)}
  if axis_name is not None:
    counts = jax.lax.psum(counts, axis_name)
  return {k: jnp.maximum(jax.lax.stop_gradient(v), 1.0) for k, v in counts.items()}


def micro_batch_sum(fn: Callable, batch: dict | tuple, micro_batches: int) -> Any:
  """The sum over a device's micro-batches of fn(micro_batch) (any pytree of arrays).

  A tuple is a batch of groups of rows of different widths (finetune.trim_padding): each
  group is split into micro-batches alike, and the groups' sums are added.

  A device's batch holds `micro_batches` equal micro-batches one after
  another, along every array's leading axis (see input_pipeline.Shards).
  They run one at a time in a `lax.scan`, so only one micro-batch's
  activations are alive at once: on a CPU host a step whose working set stays
  small runs much faster per sequence (see `parallel.auto_micro_batches`).
  Losses and gradients are sums over sequences, so the result is the
  whole batch's up to float summation order.
  """
  if isinstance(batch, tuple):
    sums = [micro_batch_sum(fn, group, micro_batches) for group in batch]
    return jax.tree_util.tree_map(lambda *parts: sum(parts), *sums)
  if micro_batches == 1:
    return fn(batch)
  micro = jax.tree_util.tree_map(lambda x: x.reshape((micro_batches, -1) + x.shape[1:]), batch)
  first = jax.tree_util.tree_map(lambda x: x[0], micro)
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(fn, first))

  def body(total, one):
    return jax.tree_util.tree_map(jnp.add, total, fn(one)), None

  total, _ = jax.lax.scan(body, zeros, micro)
  return total


def _step_options(model_config, options):
  """The objectives' options inside a step: the batch split over the data axis, the item
  table too when the model's is sharded, and the model's compute dtype."""
  return dataclasses.replace(options, axis_name=AXIS,
                             item_table_axis=model_config.item_table_axis,
                             compute_dtype=model_config.compute_dtype)


def make_train_step(model_config, objectives, options, tx, mesh, *, phase: str,
                    micro_batches: int = 1) -> Callable:
  """The jitted step (state, batch, tables, key) -> (state, metrics) of either phase.

  Pre-training sums the objectives' losses with their weights (the
  reference's reduction) and reports the sums; fine-tuning divides each by
  its global count (`Objective.mean_over`) and reports the means. Batches
  hold `micro_batches` micro-batches per device.
  """
  if phase not in PHASES:
    raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
  options = _step_options(model_config, options)
  objectives_lib.check_micro_batches(objectives, micro_batches)

  def step(state: TrainState, batch: dict, tables: dict, key: jax.Array):
    divisors = mean_divisors(batch) if phase == "finetune" else None

    def grads_and_scalars(micro):
      def loss_fn(params):
        losses = objective_losses(params, micro, tables, key, model_config=model_config,
                                  objectives=objectives, options=options, phase=phase)
        if divisors is not None:
          losses = {o.name: losses[o.name] / divisors[o.mean_over] for o, _ in objectives}
        return objectives_lib.weighted_total(objectives, losses), losses
      (total, losses), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
      return grads, dict(losses, loss=total, sequences=jnp.sum(micro["weights"]))
    grads, scalars = micro_batch_sum(grads_and_scalars, batch, micro_batches)
    return _reduce_and_update(state, grads, scalars, tx, model_config.item_table_axis)

  return _training_step(step, mesh, (P(AXIS), P(), P()), model_config.item_table_axis)


def make_pretrain_step(model_config, objectives, options, tx, mesh,
                       micro_batches: int = 1) -> Callable:
  """The jitted pre-training step; batches hold `micro_batches` micro-batches per device."""
  return make_train_step(model_config, objectives, options, tx, mesh, phase="pretrain",
                         micro_batches=micro_batches)


def default_finetune_objectives(form: str = "bce"):
  return objectives_lib.resolve({"next_item": 1.0}, {"next_item": form}, phase="finetune")


def make_finetune_step(model_config, tx, mesh, objectives=None, options=None) -> Callable:
  """The jitted fine-tuning step (default: the reference's bce next-item loss alone)."""
  objectives = objectives or default_finetune_objectives()
  options = options or objectives_lib.ObjectiveOptions(mask_id=model_config.item_size - 1,
                                                       num_items=model_config.item_size - 2)
  return make_train_step(model_config, objectives, options, tx, mesh, phase="finetune")


def make_objective_diagnosis(model_config, objectives, options, mesh,
                             micro_batches: int = 1, phase: str = "pretrain") -> Callable:
  """(params, batch, tables, key) -> {objective: (loss, gradient norm)}, each on its own.

  Run only after a non-finite step, to name the objective that caused it.
  """
  options = _step_options(model_config, options)

  def diagnose(params, batch, tables, key):
    out = {}
    for objective, weight in objectives:
      def loss_and_grads(micro, objective=objective, weight=weight):
        def loss_fn(p):
          losses = objective_losses(p, micro, tables, key, model_config=model_config,
                                    objectives=((objective, weight),), options=options,
                                    phase=phase)
          return weight * losses[objective.name]
        return jax.value_and_grad(loss_fn)(params)
      loss, grads = micro_batch_sum(loss_and_grads, batch, micro_batches)
      table_sq = 0.0
      if model_config.item_table_axis:
        # A sharded table's block gradient is already global (see _reduce_and_update).
        table_grad, grads = _split_table(grads)
        table_sq = jax.lax.psum(jnp.sum(jnp.square(table_grad)), AXIS)
      loss, grads = sharding.psum_flat((loss, grads))
      out[objective.name] = (loss, jnp.sqrt(jnp.square(optax.tree.norm(grads)) + table_sq))
    return out

  return sharding.with_params(diagnose, mesh, model_config.item_table_axis, (P(AXIS), P(), P()),
                              out_specs=P())


def finetune_loss(params: Any, batch: dict, key: jax.Array | None, *,
                  model_config: model_lib.ModelConfig, form: str = "bce",
                  chunk_size: int = catalogue_softmax.DEFAULT_CHUNK_SIZE) -> jax.Array:
  """Mean over the target positions of the next-item loss (one device's view, no mesh)."""
  options = objectives_lib.ObjectiveOptions(
      mask_id=model_config.item_size - 1, num_items=model_config.item_size - 2,
      settings=objectives_lib.settings_tuple({"next_item": {"chunk_size": chunk_size}}))
  objectives = default_finetune_objectives(form)
  batch = dict(batch)
  batch.setdefault("weights", jnp.ones((batch["inputs"].shape[0],), jnp.float32))
  if "segment_ids" not in batch:   # one left-padded sequence per row
    rows, length = batch["inputs"].shape
    max_len = model_config.max_len   # what model.encode assumes without a layout
    batch["segment_ids"] = (batch["inputs"] > 0).astype(jnp.int32)
    batch["positions"] = jnp.broadcast_to(jnp.arange(max_len - length, max_len), (rows, length))
    batch["token_ids"] = jnp.arange(rows)[:, None] * max_len + batch["positions"]
    batch["last_index"] = jnp.arange(rows) * length + length - 1
  losses = objective_losses(params, batch, {}, key if key is not None else jax.random.key(0),
                            model_config=model_config, objectives=objectives, options=options,
                            phase="finetune", train=key is not None)
  return losses["next_item"] / mean_divisors(batch, axis_name=None)["targets"]


# --- evaluation --------------------------------------------------------------


