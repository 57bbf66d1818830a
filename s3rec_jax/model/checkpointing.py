"""Orbax checkpoints: pre-training states, the hand-off into fine-tuning, best fine-tuning state.

A checkpoint directory is an orbax `CheckpointManager` root whose steps hold
three items: `params`, `opt_state` (absent in imported checkpoints) and
`meta` (JSON: epoch, sizes, what produced it). Orbax writes each step into a
temporary folder and renames it when complete, so a killed run never leaves a
half-written step behind. Paths are made absolute (orbax requires it).
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from s3rec_jax.core import errors
from s3rec_jax.core import paths
from s3rec_jax.model import encoder as model_lib
from s3rec_jax.model import item_table


class CheckpointError(errors.UserError):
  """A checkpoint that does not exist or does not fit the model."""


def _abs(path: str) -> str:
  return paths.absolute(path)


def multiprocessing_options(directory: str, processes: int) -> ocp.options.MultiprocessingOptions:
  """How a manager of `directory` synchronises `processes` processes.

  orbax's default barrier is a collective over every device; an asynchronous save's commit
  thread would run it while the training thread runs the steps' collectives, in an order
  that differs between processes (a hang). Naming the processes makes orbax use the
  distributed runtime's barrier, safe from any thread. Barrier names are per manager (the
  same in every process): a phase saves through two managers, and one's main-thread barrier
  must not meet the other's commit-thread barrier of the same name ("Barrier ... is
  already ongoing", seen in the two-process run).
  """
  if processes == 1:
    return ocp.options.MultiprocessingOptions()
  return ocp.options.MultiprocessingOptions(
      active_processes=set(range(processes)),
      barrier_sync_key_prefix="ckpt" + hashlib.sha1(_abs(directory).encode()).hexdigest()[:12])


def manager(directory: str, *, max_to_keep: int | None = None, read_only: bool = False,
            asynchronous: bool = False) -> ocp.CheckpointManager:
  """An orbax manager of `directory`. `asynchronous`: `save` returns once the arrays are
  copied to host memory and writes them in the background (training goes on meanwhile);
  the manager's restores, `wait` and `close` wait for it."""
  multiprocessing = multiprocessing_options(directory, jax.process_count())
  create = not read_only
  if multiprocessing.active_processes is not None and create:
    paths.makedirs(directory)   # orbax wants the folder made when the processes are named
    create = False
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, read_only=read_only, create=create,
      enable_async_checkpointing=asynchronous, multiprocessing_options=multiprocessing)
  return ocp.CheckpointManager(_abs(directory), options=options, item_handlers={
      "params": ocp.StandardCheckpointHandler(),
      "opt_state": ocp.StandardCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, params: Any, meta: dict,
         opt_state: Any = None, metrics: dict | None = None, wait: bool = True) -> None:
  """Saves a step; `wait=False` returns as soon as an asynchronous manager has the arrays."""
  items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
  if opt_state is not None:
    items["opt_state"] = ocp.args.StandardSave(opt_state)
  mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
  if wait:
    mngr.wait_until_finished()


def save_pretrained(directory: str, step: int, params: Any, metadata: dict) -> str:
  """Writes parameters (e.g. imported ones) as a pre-training checkpoint; returns its path."""
  mngr = manager(directory)
  save(mngr, step, params, dict(metadata, step=step))
  mngr.close()
  return os.path.join(_abs(directory), str(step))


def resolve(path: str) -> tuple[str, int]:
  """(manager root, step) of `path`: either a manager root (latest step) or a step folder in one."""
  path = _abs(path)
  if not os.path.isdir(path):
    raise CheckpointError(f"checkpoint {path} does not exist")
  base = os.path.basename(path.rstrip("/"))
  if base.isdigit() and os.path.isdir(os.path.join(path, "params")):
    return os.path.dirname(path), int(base)
  steps = [int(d) for d in os.listdir(path)
           if d.isdigit() and os.path.isdir(os.path.join(path, d, "params"))]
  if not steps:
    raise CheckpointError(f"checkpoint {path} holds no complete checkpoint step")
  return path, max(steps)


def read_meta(root: str, step: int) -> dict:
  mngr = manager(root, read_only=True)
  try:
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  finally:
    mngr.close()


def _path_name(path) -> str:
  """A leaf's path, spelt the same for a namedtuple field and for the dict key orbax saves it as."""
  parts = []
  for entry in path:
    for attr in ("name", "key", "idx"):
      if hasattr(entry, attr):
        parts.append(str(getattr(entry, attr)))
        break
  return "/".join(parts)


def _saved_shapes(saved: Any) -> dict[str, tuple]:
  return {_path_name(k): tuple(v.shape) for k, v in jax.tree_util.tree_leaves_with_path(saved)}


def _replicated_like(sharding):
  mesh = getattr(sharding, "mesh", None)
  return sharding if mesh is None else NamedSharding(mesh, PartitionSpec())


def _restore_targets(saved: Any, target: Any, where: str, sharding=None, *,
                     item_size: int | None = None, optimiser: bool = False) -> tuple[Any, list]:
  """Abstract restore targets for `target`'s leaves, and the leaves to refit once restored.

  Each leaf is restored with `sharding`, or with its own when that is None.
  Two kinds of leaf may be saved with another length and are restored at the
  saved one, replicated, then refitted (`_refit`):
  - the optimiser's flat vectors, zero-padded to a multiple of the device
    count (train_steps.create_state), when a run resumes on another count;
  - with `item_size` given, the item table (and a sharded table's optimiser
    moments), whose rows past item_size are padding (s3rec_jax.model.item_table):
    a table sharded over N devices has item_size rounded up to N rows.
  Any other difference is a CheckpointError naming the tensor.
  """
  shapes = _saved_shapes(saved)
  what = "optimiser tensor" if optimiser else "tensor"
  leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
  abstract, refit = [], []
  for i, (path, leaf) in enumerate(leaves):
    name = _path_name(path)
    found = shapes.get(name)
    own = sharding if sharding is not None else leaf.sharding
    if found is None:
      hint = (" (a run started with another model.item_table layout? resume it with that one)"
              if optimiser else " (a checkpoint of another encoder? config.finetune.init_partial"
              "=True starts the tensors it lacks fresh)")
      raise CheckpointError(f"{where}: {what} {jax.tree_util.keystr(path)} is missing from the "
                            f"checkpoint{hint}")
    shape = tuple(leaf.shape)
    padded_vector = optimiser and len(found) == 1 and leaf.ndim == 1
    padded_table = (item_size is not None and item_table.is_table_path(name)
                    and len(found) == 2 and leaf.ndim == 2 and found[1] == shape[1]
                    and min(found[0], shape[0]) >= item_size)
    if found == shape:
      abstract.append(jax.ShapeDtypeStruct(shape, leaf.dtype, sharding=own))
    elif padded_vector or padded_table:
      abstract.append(jax.ShapeDtypeStruct(found, leaf.dtype, sharding=_replicated_like(own)))
      refit.append((i, shape, own, padded_vector))
    elif optimiser:
      raise CheckpointError(f"{where}: {what} {jax.tree_util.keystr(path)} has shape "
                            f"{found} in the checkpoint but {shape} is expected")
    else:
      raise CheckpointError(
          f"{where}: {what} {jax.tree_util.keystr(path)} has shape {found} in the "
          f"checkpoint but the model expects {shape} (a checkpoint of another "
          "dataset or model size?)")
  return jax.tree_util.tree_unflatten(treedef, abstract), refit


def _refit(restored: Any, refit: list, where: str) -> Any:
  """Cuts or zero-pads the leaves `_restore_targets` restored at their saved length.

  A flat optimiser vector must hold only zeros past the model's length; an
  item table's rows past item_size are padding and may be dropped."""
  leaves, treedef = jax.tree_util.tree_flatten(restored)
  for i, shape, sharding, must_be_zero_past in refit:
    saved = np.asarray(leaves[i])
    size = min(saved.shape[0], shape[0])
    if must_be_zero_past and np.any(saved[size:]):
      raise CheckpointError(f"{where}: the optimiser state holds {saved.size} values but the "
                            f"model has at most {shape[0]} (a checkpoint of another model?)")
    fitted = np.zeros(shape, saved.dtype)
    fitted[:size] = saved[:size]
    leaves[i] = jax.device_put(fitted, sharding)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def _present(tree: dict, names: set) -> tuple[dict, list[str]]:
  """(the subtree of the nested dict `tree` whose leaves' names are in `names`, the names of
  the others)."""
  flat = traverse_util.flatten_dict(tree, sep="/")
  return (traverse_util.unflatten_dict({k: v for k, v in flat.items() if k in names}, sep="/"),
          [k for k in flat if k not in names])


def _merged(base: dict, update: dict) -> dict:
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(base),
                                       **traverse_util.flatten_dict(update)})


def restore_encoder(path: str, params: Any, sharding=None, *, item_size: int | None = None,
                    partial: bool = False) -> tuple[Any, str, int, list[str]]:
  """Loads the embeddings and encoder of a pre-training checkpoint into `params`.

  The heads of the checkpoint are not carried. Leaves are placed with
  `sharding` (None: each with its own). With `item_size`, an item table saved
  with other padding rows is refitted. With `partial`, the tensors the checkpoint lacks
  (another encoder's own, say bsarec's filter branch over a sasrec checkpoint) keep their
  values in `params`; without it they are an error. Returns (params, root, step, the names
  of the tensors kept from `params`).
  """
  root, step = resolve(path)
  mngr = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers={"params": ocp.PyTreeCheckpointHandler()})
  where = f"checkpoint {root}/{step}"
  kept = []
  try:
    saved_meta = mngr.item_metadata(step)["params"]
    target = model_lib.encoder_params(params)
    if partial:
      target, kept = _present(target, set(_saved_shapes(saved_meta)))
    abstract, refit = _restore_targets(saved_meta, target, where, sharding, item_size=item_size)
    restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.PyTreeRestore(
        item=abstract,
        restore_args=jax.tree_util.tree_map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding),
                                            abstract),
        partial_restore=True)))["params"]
  finally:
    mngr.close()
  return _merged(params, _refit(restored, refit, where)), root, step, kept


def restore_full(mngr: ocp.CheckpointManager, step: int, params: Any, opt_state: Any,
                 sharding=None, *, item_size: int | None = None) -> tuple[Any, Any, dict]:
  """Restores params (placed with `sharding`, None: like `params`), optimiser state and
  meta of `step`.

  `opt_state` is a tree of placed arrays: each leaf is restored with its own
  sharding. A checkpoint of another model or dataset is a CheckpointError
  naming the tensor.
  """
  mngr.wait_until_finished()   # a pending asynchronous save of this manager
  where = f"checkpoint {mngr.directory}/{step}"
  saved = mngr.item_metadata(step)
  params_target, params_refit = _restore_targets(saved["params"], params, where, sharding,
                                                 item_size=item_size)
  opt_target, opt_refit = _restore_targets(saved["opt_state"], opt_state, where,
                                           item_size=item_size, optimiser=True)
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(params_target),
      opt_state=ocp.args.StandardRestore(opt_target),
      meta=ocp.args.JsonRestore()))
  return (_refit(restored["params"], params_refit, where),
          _refit(restored["opt_state"], opt_refit, where), restored["meta"])


def restore_latest_good(mngr: ocp.CheckpointManager, params: Any, opt_state: Any, sharding,
                        warn, *, item_size: int | None = None
                        ) -> tuple[int, Any, Any, dict] | None:
  """The newest checkpoint that restores, falling back over damaged ones with a warning.

  Returns None when the manager has no checkpoint; raises CheckpointError when
  it has some but none restores. A model mismatch is raised at once (an older
  checkpoint would not fit either).
  """
  steps = sorted(mngr.all_steps(), reverse=True)
  if not steps:
    return None
  failures = []
  for step in steps:
    try:
      return (step, *restore_full(mngr, step, params, opt_state, sharding, item_size=item_size))
    except CheckpointError:
      raise
    except Exception as e:  # damaged files surface as many different errors
      failures.append(f"{step}: {type(e).__name__}: {str(e)[:200]}")
      warn(f"WARNING: checkpoint {mngr.directory}/{step} cannot be restored "
           f"({type(e).__name__}); trying an older one")
  raise CheckpointError(f"no checkpoint in {mngr.directory} can be restored:\n  "
                        + "\n  ".join(failures))


def restore_params(mngr: ocp.CheckpointManager, step: int, params: Any, sharding=None, *,
                   item_size: int | None = None) -> Any:
  """The parameters of `step`, shaped and placed like `params` (with `sharding` if given);
  with `item_size`, an item table saved with other padding rows is refitted."""
  mngr.wait_until_finished()   # a pending asynchronous save of this manager
  where = f"checkpoint {mngr.directory}/{step}"
  target, refit = _restore_targets(mngr.item_metadata(step)["params"], params, where, sharding,
                                   item_size=item_size)
  restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.StandardRestore(target)))
  return _refit(restored["params"], refit, where)
