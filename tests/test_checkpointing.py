"""The hand-off: pre-training checkpoint -> fine-tuning parameters, and its failure modes."""

import os

import jax
import jax.flatten_util
import numpy as np
import optax
import pytest

from s3rec_jax.core import parallel
from s3rec_jax.model import checkpointing
from s3rec_jax.model import encoder as model
from s3rec_jax.training import steps as train_steps

PRE = model.ModelConfig(item_size=12, attribute_size=5, hidden_size=16, num_layers=1, num_heads=2,
                        max_len=6, head_names=("aap", "mip", "map", "sp"))
FINE = model.ModelConfig(item_size=12, attribute_size=5, hidden_size=16, num_layers=1, num_heads=2,
                         max_len=6)


def _state(mesh, fill: bool):
  """A training state on `mesh`; with `fill`, Adam's moments hold distinct non-zero values."""
  params = model.init_params(PRE, jax.random.key(0))
  state = train_steps.create_state(params, optax.adam(1e-3), mesh)
  if fill:
    size = jax.flatten_util.ravel_pytree(params)[0].size
    def filled(x):
      values = np.zeros(x.shape, np.float32)
      values[:size] = np.arange(1, size + 1)
      return jax.device_put(values, x.sharding)
    state = state.replace(opt_state=jax.tree_util.tree_map(
        lambda x: filled(x) if x.ndim else x, state.opt_state))
  return state


@pytest.fixture
def saved(tmp_path):
  """Two checkpoints of a state on 4 devices (flat optimiser vectors padded to a multiple of 4)."""
  state = _state(parallel.make_mesh(), fill=True)
  mngr = checkpointing.manager(str(tmp_path / "pretrain"))
  for step in (5, 10):
    checkpointing.save(mngr, step, state.params, {"epoch": step}, opt_state=state.opt_state)
  mngr.close()
  return tmp_path / "pretrain", state.params, state.opt_state


def test_restored_encoder_equals_saved_and_heads_stay_behind(saved):
  path, pre_params, _ = saved
  repl = parallel.replicated(parallel.make_mesh())
  fresh = model.init_params(FINE, jax.random.key(1))
  restored, root, step, kept = checkpointing.restore_encoder(str(path), fresh, repl)
  assert (root, step, kept) == (str(path), 10, [])                     # a manager root: its latest step
  assert "heads" not in restored
  for group in model.ENCODER_PARAM_GROUPS:
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored[group], pre_params[group])
  # A step folder picks that step.
  _, _, step, _ = checkpointing.restore_encoder(str(path / "5"), fresh, repl)
  assert step == 5


def test_a_partial_restore_carries_what_the_checkpoint_has(saved):
  """A bsarec model from a sasrec checkpoint: attention, feed-forward and embeddings carried,
  the filter branch fresh; without `partial` its absence is an error naming it."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from s3rec_jax.core import settings  # pylint: disable=g-import-not-at-top
  path, pre_params, _ = saved
  repl = parallel.replicated(parallel.make_mesh())
  cfg = dataclasses.replace(FINE, encoder="bsarec", encoder_settings=settings.bind("bsarec", {}))
  fresh = model.init_params(cfg, jax.random.key(1))
  with pytest.raises(checkpointing.CheckpointError, match="filter_norm.*is missing.*init_partial=True"):
    checkpointing.restore_encoder(str(path), fresh, repl)
  restored, _, _, kept = checkpointing.restore_encoder(str(path), fresh, repl, partial=True)
  layer = "encoder/layer_0/"
  assert kept == [layer + "filter_norm/bias", layer + "filter_norm/scale", layer + "sqrt_beta"]
  mine, theirs = restored["encoder"]["layer_0"], pre_params["encoder"]["layer_0"]
  np.testing.assert_array_equal(mine["sqrt_beta"], fresh["encoder"]["layer_0"]["sqrt_beta"])
  for name in ("attention", "attention_norm", "feed_forward", "feed_forward_norm"):
    jax.tree_util.tree_map(np.testing.assert_array_equal, mine[name], theirs[name])
  np.testing.assert_array_equal(restored["item_embeddings"]["embedding"],
                                pre_params["item_embeddings"]["embedding"])


def test_missing_checkpoint_fails_loudly(tmp_path):
  repl = parallel.replicated(parallel.make_mesh())
  fresh = model.init_params(FINE, jax.random.key(1))
  with pytest.raises(checkpointing.CheckpointError, match="does not exist"):
    checkpointing.restore_encoder(str(tmp_path / "nowhere"), fresh, repl)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(checkpointing.CheckpointError, match="no complete checkpoint"):
    checkpointing.restore_encoder(str(tmp_path / "empty"), fresh, repl)


def test_mismatched_model_names_the_tensor(saved):
  path, _, _ = saved
  repl = parallel.replicated(parallel.make_mesh())
  other = model.ModelConfig(item_size=13, attribute_size=5, hidden_size=16, num_layers=1,
                            num_heads=2, max_len=6)
  with pytest.raises(checkpointing.CheckpointError, match=r"item_embeddings.*\(12, 16\).*\(13, 16\)"):
    checkpointing.restore_encoder(str(path), model.init_params(other, jax.random.key(0)), repl)


def test_full_restore_is_exact(saved):
  path, params, opt_state = saved
  mesh = parallel.make_mesh()
  target = _state(mesh, fill=False)
  mngr = checkpointing.manager(str(path))
  got_params, got_opt, meta = checkpointing.restore_full(
      mngr, 10, target.params, target.opt_state, parallel.replicated(mesh))
  mngr.close()
  assert meta == {"epoch": 10}
  jax.tree_util.tree_map(np.testing.assert_array_equal, got_params, params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got_opt, opt_state)
  assert got_opt[0].mu.sharding.spec == opt_state[0].mu.sharding.spec


@pytest.mark.parametrize("devices", [1, 3])
def test_full_restore_on_another_device_count(saved, devices):
  """Resuming on another number of devices re-pads the sharded flat optimiser vectors."""
  path, params, opt_state = saved
  mesh = parallel.make_mesh(jax.devices()[:devices])
  target = _state(mesh, fill=False)
  size = jax.flatten_util.ravel_pytree(params)[0].size
  assert target.opt_state[0].mu.shape[0] == train_steps.padded_size(size, devices)
  mngr = checkpointing.manager(str(path))
  _, got_opt, _ = checkpointing.restore_full(mngr, 10, target.params, target.opt_state,
                                             parallel.replicated(mesh))
  mngr.close()
  for got, want in ((got_opt[0].mu, opt_state[0].mu), (got_opt[0].nu, opt_state[0].nu)):
    assert got.shape == target.opt_state[0].mu.shape
    assert got.sharding == target.opt_state[0].mu.sharding
    np.testing.assert_array_equal(np.asarray(got)[:size], np.asarray(want)[:size])
    assert not np.any(np.asarray(got)[size:])
  assert int(got_opt[0].count) == int(opt_state[0].count)


def test_several_processes_synchronise_through_the_runtime_with_barriers_per_manager(tmp_path):
  one = checkpointing.multiprocessing_options(str(tmp_path / "a"), 1)
  assert one.active_processes is None and not one.barrier_sync_key_prefix
  a = checkpointing.multiprocessing_options(str(tmp_path / "a"), 2)
  again = checkpointing.multiprocessing_options(str(tmp_path / "a"), 2)
  b = checkpointing.multiprocessing_options(str(tmp_path / "b"), 2)
  # Named processes: orbax's barriers go through the distributed runtime, not device
  # collectives (which a commit thread would run beside the training steps' own).
  assert a.active_processes == {0, 1}
  # One name per folder, the same in every process, different between a phase's managers.
  assert a.barrier_sync_key_prefix == again.barrier_sync_key_prefix != b.barrier_sync_key_prefix
  assert checkpointing.multiprocessing_options("gs://bucket/run/x", 4).active_processes == {0, 1, 2, 3}
