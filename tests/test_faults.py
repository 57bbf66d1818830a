"""Numerical and checkpoint faults: stop with the step and objective named, fall back, never corrupt."""

import glob
import os
import shutil

import jax.numpy as jnp
import pytest

from s3rec_jax.data import dataset as data
from s3rec_jax.model import checkpointing
from s3rec_jax import objectives
from s3rec_jax.training import loop
from s3rec_jax.training import run as run_lib
from test_pipeline import tiny_config


def _partial_batch_config(name):
  """A config whose pre-training epoch ends with a partial batch, plus objective `name`."""
  c = tiny_config(**{"pretrain.epochs": 1, "pretrain.checkpoint_every_steps": 2,
                     "finetune.epochs": 1})
  ds = data.synthetic_dataset(num_users=c.synthetic.num_users, num_items=c.synthetic.num_items,
                              num_attributes=c.synthetic.num_attributes, seed=c.synthetic.seed,
                              num_negatives=None)
  prefixes = len(data.pretrain_prefixes(ds, c.max_seq_length)[0])
  c.pretrain.batch_size = next(b for b in range(64, 4, -4) if prefixes % b)
  c.pretrain.objectives[name] = 1.0
  return c, -(-prefixes // c.pretrain.batch_size) - 1   # the last step's index


@pytest.fixture
def probe():
  """Registers a test objective; `mode` picks a NaN loss or a NaN gradient on the partial batch."""
  registered = []

  def register(name, mode):
    @objectives.register(name, "reference", views=("masked_items",))
    def _probe(inputs):
      partial = jnp.min(inputs.batch["weights"]) < 1.0
      out = inputs.outputs["masked_items"]
      if mode == "loss":
        return jnp.where(partial, jnp.nan, 0.0) + 0.0 * jnp.sum(out)
      # Finite loss, NaN gradient: sqrt at 0 has an infinite derivative.
      return jnp.sqrt(0.0 * jnp.sum(out) + jnp.where(partial, 0.0, 1.0))
    registered.append(name)

  yield register
  for name in registered:
    del objectives.REGISTRY[(name, "reference")]


@pytest.mark.parametrize("mode", ["loss", "gradient"])
def test_non_finite_stops_with_step_and_objective(tmp_path, probe, mode):
  name = f"nan_{mode}"
  probe(name, mode)
  config, last_step = _partial_batch_config(name)
  with pytest.raises(loop.NumericalError) as error:
    run_lib.run(config, str(tmp_path))
  message = str(error.value)
  assert f"epoch 1 step {last_step}" in message and name in message
  assert "mip" not in message.split("objective:")[1]
  assert not os.path.exists(tmp_path / "results.json")
  # The last good (mid-epoch) checkpoint restores, with finite parameters.
  mngr = checkpointing.manager(str(tmp_path / "pretrain_resume"))
  steps = mngr.all_steps()
  assert steps and max(steps) <= last_step
  meta = checkpointing.read_meta(str(tmp_path / "pretrain_resume"), max(steps))
  assert meta["epoch"] == 0 and meta["step"] == max(steps)
  mngr.close()


def _corrupt(step_dir):
  for path in glob.glob(os.path.join(step_dir, "params", "**", "*"), recursive=True):
    if os.path.isfile(path):
      with open(path, "r+b") as f:
        f.truncate(max(os.path.getsize(path) // 3, 1))


ONE_EPOCH = {"pretrain.epochs": 1, "pretrain.checkpoint_every_steps": 1, "finetune.epochs": 1}


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory):
  """(workdir, results) of one finished run of ONE_EPOCH; tests work on copies of it."""
  workdir = tmp_path_factory.mktemp("one_epoch") / "run"
  return workdir, run_lib.run(tiny_config(**ONE_EPOCH), str(workdir))


def _copy_of(run, tmp_path):
  copy = tmp_path / "run"
  shutil.copytree(run[0], copy)
  return copy


def test_corrupt_latest_checkpoint_falls_back(tmp_path, capsys, one_epoch_run):
  # The same run, as if killed at the end of pre-training with its newest checkpoint damaged.
  workdir = _copy_of(one_epoch_run, tmp_path)
  for folder in ("finetune_resume", "finetune_best"):
    shutil.rmtree(workdir / folder)
  os.remove(workdir / "results.json")
  steps = sorted(int(s) for s in os.listdir(workdir / "pretrain_resume") if s.isdigit())
  assert len(steps) == 2
  _corrupt(str(workdir / "pretrain_resume" / str(steps[-1])))
  capsys.readouterr()
  again = run_lib.run(tiny_config(**ONE_EPOCH), str(workdir))
  out = capsys.readouterr().out
  assert "cannot be restored" in out
  assert again["test"] == one_epoch_run[1]["test"]


def test_no_restorable_checkpoint_is_a_clear_error(tmp_path, one_epoch_run):
  workdir = _copy_of(one_epoch_run, tmp_path)
  for step in glob.glob(str(workdir / "pretrain_resume" / "*")):
    _corrupt(step)
  config = tiny_config(**ONE_EPOCH)
  config.pretrain.epochs = 2  # more pre-training wanted: it must resume from a damaged folder
  with pytest.raises(checkpointing.CheckpointError, match="can be restored"):
    run_lib.run(config, str(workdir))


def test_restoring_into_another_model_names_the_tensor(tmp_path, one_epoch_run):
  workdir = _copy_of(one_epoch_run, tmp_path)
  config = tiny_config(**ONE_EPOCH)
  config.model.hidden_size = 8
  config.pretrain.epochs = 2
  with pytest.raises(checkpointing.CheckpointError, match=r"tensor .* has shape .*16.*expects.*8"):
    run_lib.run(config, str(workdir))


def test_non_finite_in_fine_tuning_names_the_phase_step_and_objective(tmp_path):
  """The shared loop's guard in the other phase: a NaN fine-tuning auxiliary term stops the
  run at its first step, naming it (and not the healthy next-item loss)."""
  name = "nan_finetune"

  @objectives.register(name, "reference", last_token_views=("sequence",), phases=("finetune",))
  def _always_nan(inputs):
    return jnp.nan + 0.0 * jnp.sum(inputs.last_token("sequence"))

  try:
    config = tiny_config(**{"pretrain.epochs": 0, "finetune.epochs": 2})
    config.finetune.objectives[name] = 0.5
    with pytest.raises(loop.NumericalError) as error:
      run_lib.run(config, str(tmp_path))
    message = str(error.value)
    assert message.startswith("fine-tuning: non-finite loss or gradient at epoch 1 step 0")
    assert f"objective: {name}" in message and "next_item" not in message.split("objective:")[1]
    assert "finetune_resume" in message and "finetune_best" in message
    assert not os.path.exists(tmp_path / "results.json")
  finally:
    del objectives.REGISTRY[(name, "reference")]
