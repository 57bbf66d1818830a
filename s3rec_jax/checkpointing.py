"""Orbax checkpoints: pre-training states, the hand-off into fine-tuning, best fine-tuning state.

A checkpoint directory is an orbax `CheckpointManager` root whose steps hold
three items: `params`, `opt_state` (absent in imported checkpoints) and
`meta` (JSON: epoch, sizes, what produced it). Orbax writes each step into a
temporary folder and renames it when complete, so a killed run never leaves a
half-written step behind. Paths are made absolute (orbax requires it).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from s3rec_jax import errors
from s3rec_jax import model as model_lib


class CheckpointError(errors.UserError):
  """A checkpoint that does not exist or does not fit the model."""


def _abs(path: str) -> str:
  return os.path.abspath(os.path.expanduser(path))


def manager(directory: str, *, max_to_keep: int | None = None,
            read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, read_only=read_only, create=not read_only,
      enable_async_checkpointing=False)
  return ocp.CheckpointManager(_abs(directory), options=options, item_handlers={
      "params": ocp.StandardCheckpointHandler(),
      "opt_state": ocp.StandardCheckpointHandler(),
      "meta": ocp.JsonCheckpointHandler()})


def save(mngr: ocp.CheckpointManager, step: int, params: Any, meta: dict,
         opt_state: Any = None, metrics: dict | None = None) -> None:
  items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
  if opt_state is not None:
    items["opt_state"] = ocp.args.StandardSave(opt_state)
  mngr.save(step, args=ocp.args.Composite(**items), metrics=metrics, force=True)
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


def _abstract(tree: Any, sharding) -> Any:
  return jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


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


def _check_shapes(saved: Any, target: Any, where: str) -> None:
  """Every target leaf must exist in `saved` with the same shape; names the first that does not."""
  shapes = _saved_shapes(saved)
  for path, leaf in jax.tree_util.tree_leaves_with_path(target):
    name = _path_name(path)
    if name not in shapes:
      raise CheckpointError(f"{where}: tensor {jax.tree_util.keystr(path)} is missing from the "
                            "checkpoint")
    if shapes[name] != tuple(leaf.shape):
      raise CheckpointError(
          f"{where}: tensor {jax.tree_util.keystr(path)} has shape {shapes[name]} in the "
          f"checkpoint but the model expects {tuple(leaf.shape)} (a checkpoint of another "
          "dataset or model size?)")


def restore_encoder(path: str, params: Any, sharding) -> tuple[Any, str, int]:
  """Loads the embeddings and encoder of a pre-training checkpoint into `params`.

  The heads of the checkpoint are not carried. Returns (params, root, step).
  """
  root, step = resolve(path)
  mngr = ocp.CheckpointManager(root, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers={"params": ocp.PyTreeCheckpointHandler()})
  try:
    saved_meta = mngr.item_metadata(step)["params"]
    target = model_lib.encoder_params(params)
    _check_shapes(saved_meta, target, f"checkpoint {root}/{step}")
    restored = mngr.restore(step, args=ocp.args.Composite(params=ocp.args.PyTreeRestore(
        item=_abstract(target, sharding),
        restore_args=jax.tree_util.tree_map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), target),
        partial_restore=True)))["params"]
  finally:
    mngr.close()
  merged = dict(params)
  merged.update(restored)
  return merged, root, step


def _flat_vector_targets(saved: Any, target: Any, where: str) -> tuple[Any, list]:
  """Restore targets for an optimiser state whose leaves carry their own shardings.

  The optimiser state is over the flat parameter vector zero-padded to a
  multiple of the device count (train_steps.create_state), so a run resumed on
  another number of devices finds its vectors saved with another padding:
  those are restored at the saved length, replicated, and re-padded by
  `_refit`. Returns (abstract targets, [(index, target leaf)] to re-pad).
  """
  shapes = _saved_shapes(saved)
  leaves, treedef = jax.tree_util.tree_flatten_with_path(target)
  abstract, refit = [], []
  for i, (path, leaf) in enumerate(leaves):
    found = shapes.get(_path_name(path))
    if found is None:
      raise CheckpointError(f"{where}: optimiser tensor {jax.tree_util.keystr(path)} is missing "
                            "from the checkpoint")
    if found == tuple(leaf.shape):
      abstract.append(jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding))
    elif len(found) == 1 and leaf.ndim == 1:
      replicated = NamedSharding(leaf.sharding.mesh, PartitionSpec())
      abstract.append(jax.ShapeDtypeStruct(found, leaf.dtype, sharding=replicated))
      refit.append((i, leaf))
    else:
      raise CheckpointError(f"{where}: optimiser tensor {jax.tree_util.keystr(path)} has shape "
                            f"{found} in the checkpoint but {tuple(leaf.shape)} is expected")
  return jax.tree_util.tree_unflatten(treedef, abstract), refit


def _refit(restored: Any, refit: list, where: str) -> Any:
  """Re-pads the flat vectors `_flat_vector_targets` restored at their saved length."""
  leaves, treedef = jax.tree_util.tree_flatten(restored)
  for i, target in refit:
    saved = np.asarray(leaves[i])
    size = min(saved.size, target.shape[0])
    if np.any(saved[size:]):
      raise CheckpointError(f"{where}: the optimiser state holds {saved.size} values but the "
                            f"model has at most {target.shape[0]} (a checkpoint of another model?)")
    fitted = np.zeros(target.shape, saved.dtype)
    fitted[:size] = saved[:size]
    leaves[i] = jax.device_put(fitted, target.sharding)
  return jax.tree_util.tree_unflatten(treedef, leaves)


def restore_full(mngr: ocp.CheckpointManager, step: int, params: Any, opt_state: Any,
                 sharding) -> tuple[Any, Any, dict]:
  """Restores params (placed with `sharding`), optimiser state and meta of `step`.

  `opt_state` is a tree of placed arrays: each leaf is restored with its own
  sharding. A checkpoint of another model or dataset is a CheckpointError
  naming the tensor.
  """
  where = f"checkpoint {mngr.directory}/{step}"
  saved = mngr.item_metadata(step)
  _check_shapes(saved["params"], params, where)
  opt_target, refit = _flat_vector_targets(saved["opt_state"], opt_state, where)
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(_abstract(params, sharding)),
      opt_state=ocp.args.StandardRestore(opt_target),
      meta=ocp.args.JsonRestore()))
  return (restored["params"], _refit(restored["opt_state"], refit, where), restored["meta"])


def restore_latest_good(mngr: ocp.CheckpointManager, params: Any, opt_state: Any, sharding,
                        warn) -> tuple[int, Any, Any, dict] | None:
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
      return (step, *restore_full(mngr, step, params, opt_state, sharding))
    except CheckpointError:
      raise
    except Exception as e:  # damaged files surface as many different errors
      failures.append(f"{step}: {type(e).__name__}: {str(e)[:200]}")
      warn(f"WARNING: checkpoint {mngr.directory}/{step} cannot be restored "
           f"({type(e).__name__}); trying an older one")
  raise CheckpointError(f"no checkpoint in {mngr.directory} can be restored:\n  "
                        + "\n  ".join(failures))


def restore_params(mngr: ocp.CheckpointManager, step: int, params: Any, sharding) -> Any:
  restored = mngr.restore(step, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(_abstract(params, sharding))))
  return restored["params"]
