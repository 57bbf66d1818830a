"""The hand-off: pre-training checkpoint -> fine-tuning parameters, and its failure modes."""

import os

import jax
import numpy as np
import optax
import pytest

from s3rec_jax import checkpointing
from s3rec_jax import model
from s3rec_jax import parallel

PRE = model.ModelConfig(item_size=12, attribute_size=5, hidden_size=16, num_layers=1, num_heads=2,
                        max_len=6, head_names=("aap", "mip", "map", "sp"))
FINE = model.ModelConfig(item_size=12, attribute_size=5, hidden_size=16, num_layers=1, num_heads=2,
                         max_len=6)


@pytest.fixture
def saved(tmp_path):
  params = model.init_params(PRE, jax.random.key(0))
  opt_state = optax.adam(1e-3).init(params)
  mngr = checkpointing.manager(str(tmp_path / "pretrain"))
  for step in (5, 10):
    checkpointing.save(mngr, step, params, {"epoch": step}, opt_state=opt_state)
  mngr.close()
  return tmp_path / "pretrain", params


def test_restored_encoder_equals_saved_and_heads_stay_behind(saved):
  path, pre_params = saved
  repl = parallel.replicated(parallel.make_mesh())
  fresh = model.init_params(FINE, jax.random.key(1))
  restored, root, step = checkpointing.restore_encoder(str(path), fresh, repl)
  assert (root, step) == (str(path), 10)                     # a manager root: its latest step
  assert "heads" not in restored
  for group in model.ENCODER_PARAM_GROUPS:
    jax.tree_util.tree_map(np.testing.assert_array_equal, restored[group], pre_params[group])
  # A step folder picks that step.
  _, _, step = checkpointing.restore_encoder(str(path / "5"), fresh, repl)
  assert step == 5


def test_missing_checkpoint_fails_loudly(tmp_path):
  repl = parallel.replicated(parallel.make_mesh())
  fresh = model.init_params(FINE, jax.random.key(1))
  with pytest.raises(checkpointing.CheckpointError, match="does not exist"):
    checkpointing.restore_encoder(str(tmp_path / "nowhere"), fresh, repl)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(checkpointing.CheckpointError, match="no complete checkpoint"):
    checkpointing.restore_encoder(str(tmp_path / "empty"), fresh, repl)


def test_mismatched_model_names_the_tensor(saved):
  path, _ = saved
  repl = parallel.replicated(parallel.make_mesh())
  other = model.ModelConfig(item_size=13, attribute_size=5, hidden_size=16, num_layers=1,
                            num_heads=2, max_len=6)
  with pytest.raises(checkpointing.CheckpointError, match=r"item_embeddings.*\(12, 16\).*\(13, 16\)"):
    checkpointing.restore_encoder(str(path), model.init_params(other, jax.random.key(0)), repl)


def test_full_restore_is_exact(saved):
  path, params = saved
  repl = parallel.replicated(parallel.make_mesh())
  opt_state = optax.adam(1e-3).init(params)
  mngr = checkpointing.manager(str(path))
  got_params, got_opt, meta = checkpointing.restore_full(mngr, 10, params, opt_state, repl)
  mngr.close()
  assert meta == {"epoch": 10}
  jax.tree_util.tree_map(np.testing.assert_array_equal, got_params, params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, got_opt, opt_state)
