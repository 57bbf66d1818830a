"""training/loop: max_steps cuts a phase where it says, and syncs bound what is kept."""

import jax
import jax.numpy as jnp
import numpy as np

from s3rec_jax.core import parallel
from s3rec_jax.model import checkpointing
from s3rec_jax.training import loop
from s3rec_jax.training import steps as train_steps


class _Record(loop.Action):

  def __init__(self):
    self.ends, self.syncs = [], []

  def after_sync(self, phase, global_step, window):
    self.syncs.append(global_step)

  def after_epoch(self, phase, end):
    self.ends.append((end.epoch, end.global_step))
    return False


def _run(tmp_path, *, epochs, steps, max_steps=0, sync_every=0):
  mesh = parallel.make_mesh(jax.devices()[:1])
  state = train_steps.TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.zeros(2)},
                                 opt_state={"m": jnp.zeros(2)})
  taken = []

  def step_fn(state, batch, tables, key):
    taken.append(int(batch["step"][0]))
    return state, {"loss": jnp.float32(1.0), "finite": jnp.bool_(True),
                   "sequences": jnp.float32(1.0)}

  phase = loop.Phase(
      label="fine-tuning", tag="finetune", epochs=epochs, steps_per_epoch=steps,
      batches=lambda epoch, first: ({"step": np.array([epoch * steps + s])}
                                    for s in range(first, steps)),
      step_fn=step_fn, tables={}, key=jax.random.key(0), objective_names=(),
      sync_every_steps=sync_every, max_steps=max_steps)
  record, lines = _Record(), []
  mngr = checkpointing.manager(str(tmp_path / "resume"), max_to_keep=2)
  try:
    loop.train(phase, state, [record], mngr, mesh, lines.append)
  finally:
    mngr.close()
  return taken, record, lines


def test_max_steps_cuts_the_phase_mid_epoch_and_runs_the_epoch_end(tmp_path):
  taken, record, lines = _run(tmp_path, epochs=5, steps=4, max_steps=6)
  assert taken == list(range(6))
  assert record.ends == [(1, 4), (2, 6)]      # the cut epoch still ends (validation, saves)
  assert any("cut at step 6 of 20 (max_steps=6)" in line for line in lines), lines


def test_max_steps_beyond_the_phase_changes_nothing(tmp_path):
  taken, record, lines = _run(tmp_path, epochs=2, steps=3, max_steps=100)
  assert taken == list(range(6)) and record.ends == [(1, 3), (2, 6)]
  assert not any("cut at" in line for line in lines)


def test_syncs_every_n_steps_bound_the_window(tmp_path):
  _, record, _ = _run(tmp_path, epochs=1, steps=7, sync_every=3)
  assert record.syncs == [3, 6, 7]
