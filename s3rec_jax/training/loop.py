"""The one training loop of both phases: steps, host syncs, the NaN guard, periodic actions.

A `Phase` says what to train (batches, the jitted step, its tables and key,
the objectives' names); `Action`s say what happens around the steps (log,
hand-off or best checkpoints, validation with early stopping). The loop owns
what every phase needs and must get right once: at most two steps in
flight, host syncs that check every step's loss and gradient for NaN/Inf
and name the objective, and rolling resume checkpoints (every
`checkpoint_every_steps` steps and at every epoch end) that carry the
partial epoch's sums and every action's state, so that a killed run
continues at the exact step with the same batches, keys and decisions.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from tqdm import tqdm

from s3rec_jax.core import console
from s3rec_jax.core import parallel
from s3rec_jax.data import input_pipeline
from s3rec_jax.model import checkpointing
from s3rec_jax.training import steps as train_steps


class NumericalError(FloatingPointError):
  """A loss or gradient became NaN or Inf."""


@dataclasses.dataclass
class Phase:
  """What one phase trains.

  Attributes:
    label: its name in messages ("pre-training", "fine-tuning").
    tag: its name in metric keys and progress bars ("pretrain", "finetune").
    epochs: epochs to run.
    steps_per_epoch: steps in every epoch.
    batches: (epoch, first_step) -> that epoch's host batches from first_step on.
    step_fn: the jitted (state, batch, tables, key) -> (state, metrics).
    tables: device-resident lookup tables the step reads.
    key: the phase's base PRNG key; step keys are derived from (epoch, step).
    objective_names: the objectives reported in the step's metrics.
    per_sequence: averages weigh each step by its sequences (the step reports
      sums, as pre-training does); otherwise every step weighs one (the step
      reports means, as fine-tuning does).
    sync_every_steps: host syncs (and loss logging) every this many steps, and
      at every epoch end; 0 = at epoch ends only.
    checkpoint_every_steps: mid-epoch resume checkpoints; 0 = epoch ends only.
    diagnose: (params, host batch, key) -> names of the objectives that are not
      finite on that batch alone; called only after a non-finite step.
    item_size: the item table's real rows: a resume may then refit a sharded
      table saved with other padding rows (another device count).
    max_steps: end the phase after this many steps in all (0: no limit), at the
      step it is reached: the epoch-end actions run on the cut epoch (validation,
      checkpoints) and the log says the phase was cut. Pod runs plan in steps.
  """
  label: str
  tag: str
  epochs: int
  steps_per_epoch: int
  batches: Callable[[int, int], Iterable[dict]]
  step_fn: Callable
  tables: Any
  key: jax.Array
  objective_names: tuple[str, ...]
  per_sequence: bool = False
  sync_every_steps: int = 0
  checkpoint_every_steps: int = 0
  diagnose: Callable[[Any, dict, jax.Array], list[str]] | None = None
  item_size: int | None = None
  max_steps: int = 0


@dataclasses.dataclass
class EpochEnd:
  """What actions see at the end of an epoch."""
  epoch: int                   # epochs done, 1-based
  global_step: int
  state: Any                   # the train state after the epoch
  averages: Mapping[str, float]   # loss and objectives over the epoch
  seconds: float               # training time of the epoch in this process's run
  sequences: float             # sequences trained on in that time (global)


class Action:
  """Something done around the steps. Override what applies; `state` is kept in
  the resume checkpoints (JSON), so a resumed run makes the same decisions."""

  def after_sync(self, phase: Phase, global_step: int, window: Mapping[str, float]) -> None:
    """Called after each host sync with the window's averages."""

  def after_epoch(self, phase: Phase, end: EpochEnd) -> bool:
    """Called at each epoch end; returns True to stop the phase."""
    return False

  def state(self) -> dict:
    return {}

  def restore(self, state: Mapping[str, Any]) -> None:
    del state

  def checkpoint_dirs(self) -> tuple[str, ...]:
    """Folders whose last good checkpoints a fault message should name."""
    return ()


# Kept under the loop's name: the evaluator bounds its dispatches the same way.
bound_in_flight = parallel.bound_in_flight


def save_once(mngr, step: int, params, meta: dict, opt_state=None) -> None:
  # A resumed run may redo a step whose checkpoint was already written; the
  # content would be identical, so the existing one is kept. The previous (asynchronous)
  # save is finished first, so every process sees the same steps and makes the same choice
  # (a save some processes skip would wait forever for the others).
  mngr.wait_until_finished()
  if step not in mngr.all_steps():
    # Not waited for: an asynchronous manager writes while training goes on (its restores
    # and close wait).
    checkpointing.save(mngr, step, params, meta, opt_state=opt_state, wait=False)


def _progress(iterable, total: int, desc: str, enabled: bool):
  # On a terminal only: a log file gets the epoch lines, without carriage-return redraws.
  return tqdm(iterable, total=total, desc=desc, leave=False,
              disable=not (enabled and console.is_terminal(sys.stderr)), file=sys.stderr,
              mininterval=1.0)


def train(phase: Phase, state, actions: Sequence[Action], resume_mngr, mesh,
          log: Callable[[str], None], main_process: bool = True):
  """Runs `phase` from its newest good resume checkpoint (or the start); returns the state."""
  names = phase.objective_names
  start_epoch, start_step, partial, stopped = 0, 0, {"sums": {}, "seen": 0}, False
  # Each leaf is restored where it lives now (a sharded item table by rows).
  restored = checkpointing.restore_latest_good(resume_mngr, state.params, state.opt_state, None,
                                               log, item_size=phase.item_size)
  if restored is not None:
    global_step, params, opt_state, meta = restored
    state = state.replace(params=params, opt_state=opt_state,
                          step=parallel.replicate(np.int32(global_step), mesh))
    start_epoch, start_step, partial = meta["epoch"], meta["step"], meta["partial"]
    stopped = bool(meta.get("stopped", False))
    for action in actions:
      action.restore(meta.get("actions", {}).get(type(action).__name__.lower(), {}))
    log(f"{phase.label}: resuming at epoch {start_epoch + 1} step {start_step} "
        f"(global step {global_step})" + (" (already finished)" if stopped else ""))

  def save_resume(global_step: int, epoch: int, step: int, partial: dict, stopped: bool) -> None:
    save_once(resume_mngr, global_step, state.params, opt_state=state.opt_state, meta={
        "epoch": epoch, "step": step, "partial": partial, "stopped": stopped,
        "actions": {type(a).__name__.lower(): a.state() for a in actions}})

  def fault_message(epoch: int, step: int, culprits: list[str]) -> str:
    dirs = [resume_mngr.directory, *(d for a in actions for d in a.checkpoint_dirs())]
    return (f"{phase.label}: non-finite loss or gradient at epoch {epoch + 1} step {step} "
            f"(objective: {', '.join(culprits)}); the last good checkpoints in "
            f"{' and '.join(str(d) for d in dirs)} are intact")

  epoch = start_epoch
  while not stopped and epoch < phase.epochs:
    t0 = time.time()
    sums, seen = dict(partial["sums"]), partial["seen"]
    sequences = 0.0   # trained on in this run's part of the epoch (global)
    first_step = start_step if epoch == start_epoch else 0
    pending = []

    def sync():
      """Fetches the pending steps' metrics, checks them, adds them to the epoch's sums."""
      nonlocal seen, sequences
      records = jax.device_get(pending)
      for b_epoch, b_step, b_metrics, b_batch in records:
        if not bool(b_metrics["finite"]):
          culprits = [n for n in names if not np.isfinite(b_metrics[n])]
          if not culprits and phase.diagnose is not None:
            culprits = phase.diagnose(state.params, b_batch,
                                      train_steps.step_key(phase.key, b_epoch, b_step))
          raise NumericalError(fault_message(b_epoch, b_step,
                                             culprits or ["(the joint loss; no single objective)"]))
      window, window_weight = dict.fromkeys((*names, "loss"), 0.0), 0.0
      for _, _, metrics, _ in records:
        for name in window:
          window[name] += float(metrics[name])
        # Global counts: a process holds only its own shards.
        window_weight += float(metrics["sequences"]) if phase.per_sequence else 1.0
        sequences += float(metrics["sequences"])
      for name, value in window.items():
        sums[name] = sums.get(name, 0.0) + value
      seen += window_weight
      last_epoch, last_step = records[-1][:2]
      averages = {name: value / max(window_weight, 1) for name, value in window.items()}
      for action in actions:
        action.after_sync(phase, last_epoch * phase.steps_per_epoch + last_step + 1, averages)
      pending.clear()

    bar = _progress(input_pipeline.prefetch(phase.batches(epoch, first_step)),
                    phase.steps_per_epoch - first_step, f"{phase.tag} {epoch + 1}/{phase.epochs}",
                    main_process)
    cut = False
    for step, batch in enumerate(bar, start=first_step):
      state, metrics = phase.step_fn(state, parallel.shard_batch(batch, mesh), phase.tables,
                                     train_steps.step_key(phase.key, epoch, step))
      pending.append((epoch, step, metrics, batch))
      bound_in_flight(pending)
      last = step == phase.steps_per_epoch - 1
      global_step = epoch * phase.steps_per_epoch + step + 1
      periodic = bool(phase.checkpoint_every_steps) and (
          global_step % phase.checkpoint_every_steps == 0)
      sync_due = bool(phase.sync_every_steps) and len(pending) >= phase.sync_every_steps
      cut = bool(phase.max_steps) and global_step >= phase.max_steps and not last
      if sync_due or last or periodic or cut:
        sync()
        bar.set_postfix(loss=f"{sums['loss'] / max(seen, 1):.4f}")
      if cut:
        break
      if periodic and not last:
        save_resume(global_step, epoch, step + 1, {"sums": sums, "seen": seen}, False)
    epoch += 1
    reached = epoch * phase.steps_per_epoch if not cut else global_step
    if phase.max_steps and phase.max_steps <= reached < phase.epochs * phase.steps_per_epoch:
      log(f"{phase.label}: cut at step {reached} of {phase.epochs * phase.steps_per_epoch} "
          f"(max_steps={phase.max_steps}), in epoch {epoch}")
      stopped = True
    end = EpochEnd(epoch=epoch, global_step=reached, state=state,
                   averages={name: value / max(seen, 1) for name, value in sums.items()},
                   seconds=time.time() - t0, sequences=sequences)
    for action in actions:
      stopped = bool(action.after_epoch(phase, end)) or stopped
    partial = {"sums": {}, "seen": 0}
    save_resume(end.global_step, epoch, 0, partial, stopped)
  return state
