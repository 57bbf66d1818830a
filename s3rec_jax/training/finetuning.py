"""The fine-tuning phase: its driver (early stopping on validation, then the test) and the
validation action."""

from __future__ import annotations

import os

import ml_collections

from s3rec_jax.core import parallel
from s3rec_jax.core import paths
from s3rec_jax.core import workdir_files
from s3rec_jax.data import dataset as data_lib
from s3rec_jax.data import input_pipeline
from s3rec_jax.data import prefix_widths
from s3rec_jax.evaluation import evaluator
from s3rec_jax.model import checkpointing
from s3rec_jax.model import encoder as model_lib
from s3rec_jax.model import encoder_registry
from s3rec_jax.training import loop
from s3rec_jax.training import metric_writers
from s3rec_jax.training import setup
from s3rec_jax.training import steps as train_steps


class Validation(loop.Action):
  """Fine-tuning's epoch end: validate, log, keep the best state, stop early.

  The best state on validation goes to `best_mngr` (its step is the epoch);
  the phase stops after `patience` epochs without improvement, once
  `min_epochs` epochs are done. Its record is in the resume checkpoints.
  """

  def __init__(self, evaluate, target: str, best_mngr, writer, *, patience: int, min_epochs: int,
               meta: dict):
    self.evaluate, self.target, self.best_mngr, self.writer = evaluate, target, best_mngr, writer
    self.patience, self.min_epochs, self.meta = patience, min_epochs, meta
    self.record = {"best_score": None, "best_epoch": -1, "best_valid": None, "waited": 0}

  def state(self):
    return dict(self.record)

  def restore(self, state):
    self.record.update(state)

  def checkpoint_dirs(self):
    return (self.best_mngr.directory,)

  def after_epoch(self, phase, end):
    valid = self.evaluate(end.state.params, "valid")
    names = phase.objective_names
    per_objective = {n: end.averages[n] for n in names}
    best = self.record["best_score"]
    improved = best is None or valid[self.target] > best
    parts = (" (" + " ".join(f"{n}={v:.4f}" for n, v in per_objective.items()) + ")"
             if len(names) > 1 else "")
    loss = end.averages["loss"]
    setup.log(f"finetune epoch {end.epoch}: loss={loss:.4f}{parts} ({end.seconds:.1f}s) valid "
        + " ".join(f"{k}={v:.4f}" for k, v in valid.items()) + (" *" if improved else ""))
    self.writer.write_record(dict(phase="finetune", epoch=end.epoch, loss=loss,
                                  seconds=end.seconds, valid=valid, objectives=per_objective))
    self.writer.write_scalars(end.epoch, {
        "finetune/loss": loss, "finetune/epoch_seconds": end.seconds,
        **({f"finetune/{n}": v for n, v in per_objective.items()} if len(names) > 1 else {}),
        "finetune/sequences_per_second": end.sequences / end.seconds,
        **{f"valid/{name}": value for name, value in valid.items()}})
    if improved:
      self.record.update(best_score=valid[self.target], best_epoch=end.epoch, best_valid=valid,
                         waited=0)
      loop.save_once(self.best_mngr, end.epoch, end.state.params,
                     meta=dict(self.meta, epoch=end.epoch, valid=valid))
      return False
    self.record["waited"] += 1
    if self.record["waited"] >= self.patience and end.epoch >= self.min_epochs:
      setup.log(f"early stopping: no {self.target} improvement for {self.patience} epochs")
      return True
    return False


def finetune_and_test(config: ml_collections.ConfigDict, ds: data_lib.Dataset, workdir: str,
                      mesh, init_checkpoint: str | None,
                      writer: metric_writers.MetricWriter) -> dict:
  """Fine-tunes with early stopping on validation; tests the best state.

  The state and the early-stopping record are saved after every epoch
  (workdir/finetune_resume), so a restarted run continues where it stopped.
  The loss and validation metrics of every epoch, and the test metrics, go
  to `writer`.
  """
  fc, protocol = config.finetune, config.eval.protocol
  layout = setup.item_table_layout(config, ds, mesh)
  setup.log(f"fine-tuning: {layout.describe()}")
  mcfg = model_lib.model_config(config, ds, layout=layout)
  splits = data_lib.finetune_splits(ds, config.max_seq_length)
  params = train_steps.place_params(
      model_lib.init_params(mcfg, setup.base_key(config, setup.STREAM_FINETUNE_INIT)), mesh,
      mcfg.item_table_axis)
  loaded = None
  if init_checkpoint:
    params, root, step, fresh = checkpointing.restore_encoder(
        init_checkpoint, params, item_size=ds.item_size, partial=fc.get("init_partial", False))
    loaded = {"path": os.path.join(root, str(step)), "step": step}
    setup.log(f"fine-tuning: loaded embeddings and encoder from {root} step {step} (heads not carried)")
    if fresh:
      setup.log(f"fine-tuning: {len(fresh)} tensor(s) the checkpoint lacks start fresh: "
                + ", ".join(fresh))
  else:
    setup.log("fine-tuning: no pre-training checkpoint: random initialisation (the "
              f"{config.model.get('encoder', 'sasrec')} encoder alone)")
  tx = train_steps.make_optimizer(fc.learning_rate, fc.adam_b1, fc.adam_b2, fc.weight_decay)
  state = train_steps.create_state(params, tx, mesh, mcfg.item_table_axis)
  if fc.get("targets", "all_positions") == "last_of_prefixes":
    encoder_name = config.model.get("encoder", "sasrec")
    trim = fc.get("trim_padding", False) and encoder_registry.get(encoder_name).trims_padding
    batches = input_pipeline.PrefixBatches(ds, fc.batch_size, config.max_seq_length,
                                           setup.negative_high(config, ds), config.seed,
                                           setup.shards(mesh), fc.get("prefix_min_items", 0),
                                           trim_padding=trim)
    setup.log(f"fine-tuning: every prefix is a sample ({batches.num_samples} a epoch, one "
              "per row, the loss at its newest position)")
    if trim:
      setup.log("fine-tuning: prefix rows trimmed of their leading padding, a batch in groups "
                + prefix_widths.describe(batches.groups, config.max_seq_length))
    elif fc.get("trim_padding", False):
      setup.log(f"fine-tuning: trim_padding ignored: the {encoder_name} encoder reads the "
                "padding, so its rows keep every column")
  else:
    batches = input_pipeline.FinetuneBatches(
        ds, splits, fc.batch_size, setup.negative_high(config, ds), config.seed,
        encoder_registry.packs(config), setup.shards(mesh))
  batches.workers = setup.data_workers(config, mesh)
  if batches.workers:
    setup.log(f"fine-tuning: batches built by {batches.workers} worker process(es)")
  objectives = setup.finetune_objectives(config)
  options = setup.objective_options(config, ds)
  tables = parallel.replicate(setup.finetune_tables(objectives, ds, splits), mesh)
  phase = loop.Phase(
      label="fine-tuning", tag="finetune", epochs=fc.epochs,
      steps_per_epoch=batches.steps_per_epoch, batches=batches.epoch,
      step_fn=train_steps.make_finetune_step(mcfg, tx, mesh, objectives, options),
      tables=tables, key=setup.base_key(config, setup.STREAM_FINETUNE_KEY),
      objective_names=tuple(o.name for o, _ in objectives),
      diagnose=setup.diagnosis(mcfg, objectives, options, mesh, tables, phase="finetune"),
      item_size=ds.item_size, sync_every_steps=fc.get("log_every_steps", 50),
      max_steps=fc.get("max_steps", 0))
  setup.log("fine-tuning: objectives " + ", ".join(f"{o.name}[{o.form}] x{w:g}" for o, w in objectives)
      + (f"; early stopping from epoch {fc.min_epochs} on" if fc.min_epochs else ""))
  evaluate = evaluator.Evaluator(config, ds, splits, mcfg, mesh, protocol)
  # Saves are asynchronous: training goes on while a checkpoint is written.
  best_mngr = checkpointing.manager(paths.join(workdir, workdir_files.FINETUNE_BEST_DIR),
                                    max_to_keep=1, asynchronous=True)
  resume = checkpointing.manager(paths.join(workdir, workdir_files.FINETUNE_RESUME_DIR),
                                 max_to_keep=2, asynchronous=True)
  validation = Validation(evaluate, evaluator.early_stopping_metric(protocol), best_mngr, writer,
                          patience=fc.patience, min_epochs=fc.min_epochs, meta={
                              "init_checkpoint": loaded, "dataset": config.dataset,
                              "protocol": protocol})
  try:
    state = loop.train(phase, state, [validation], resume, mesh, setup.log, setup.is_main_process())
    record = validation.state()
    best_params = checkpointing.restore_params(best_mngr, record["best_epoch"], state.params,
                                               item_size=ds.item_size)
  finally:
    best_mngr.close()
    resume.close()
  test = evaluate(best_params, "test")
  setup.log(f"test (best epoch {record['best_epoch']}): "
      + " ".join(f"{k}={v:.4f}" for k, v in test.items()))
  writer.write_scalars(record["best_epoch"],
                       {f"test/{name}": value for name, value in test.items()})
  return {"test": test, "valid": record["best_valid"], "best_epoch": record["best_epoch"],
          "pretrain_checkpoint": loaded}
