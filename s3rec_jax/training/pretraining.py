"""The pre-training phase: its driver and its epoch-end actions (log, hand-off checkpoints)."""

from __future__ import annotations


import ml_collections

from s3rec_jax.core import parallel
from s3rec_jax.core import paths
from s3rec_jax.core import workdir_files
from s3rec_jax.data import dataset as data_lib
from s3rec_jax.data import input_pipeline
from s3rec_jax.model import checkpointing
from s3rec_jax.model import encoder as model_lib
from s3rec_jax.model import encoder_registry
from s3rec_jax import objectives as objectives_lib
from s3rec_jax.training import loop
from s3rec_jax.training import metric_writers
from s3rec_jax.training import setup
from s3rec_jax.training import steps as train_steps


class PretrainLog(loop.Action):
  """Losses to the writer at every host sync; the epoch's line, record and scalars."""

  def __init__(self, writer: metric_writers.MetricWriter):
    self.writer = writer

  def after_sync(self, phase, global_step, window):
    self.writer.write_scalars(global_step, {f"pretrain/{n}": v for n, v in window.items()})

  def after_epoch(self, phase, end):
    throughput = end.sequences / end.seconds
    setup.log(f"pretrain epoch {end.epoch}: "
        + " ".join(f"{k}={v:.4f}" for k, v in sorted(end.averages.items()))
        + f" ({end.seconds:.1f}s, {throughput:.0f} seq/s)")
    self.writer.write_record(dict(phase="pretrain", epoch=end.epoch, seconds=end.seconds,
                                  **end.averages))
    self.writer.write_scalars(end.global_step, {
        **{f"pretrain_epoch/{name}": value for name, value in end.averages.items()},
        "pretrain/sequences_per_second": throughput, "pretrain/epoch_seconds": end.seconds})
    return False


class HandoffCheckpoints(loop.Action):
  """Parameters for fine-tuning, every `every` epochs and at the last (workdir/pretrain/EPOCH)."""

  def __init__(self, mngr, every: int, meta: dict):
    self.mngr, self.every, self.meta = mngr, every, meta

  def after_epoch(self, phase, end):
    if end.epoch % self.every == 0 or end.epoch == phase.epochs:
      loop.save_once(self.mngr, end.epoch, end.state.params, opt_state=end.state.opt_state,
                     meta=dict(self.meta, epoch=end.epoch, global_step=end.global_step))
      setup.log(f"pre-training: saved checkpoint {self.mngr.directory}/{end.epoch}")
    return False

  def checkpoint_dirs(self):
    return (self.mngr.directory,)


def pretrain(config: ml_collections.ConfigDict, ds: data_lib.Dataset, workdir: str, mesh,
             writer: metric_writers.MetricWriter) -> str:
  """Runs config.pretrain.epochs of pre-training; returns the checkpoint folder.

  Hand-off checkpoints go to workdir/pretrain/EPOCH. A rolling resume
  checkpoint (workdir/pretrain_resume/GLOBAL_STEP) is written every
  `checkpoint_every_steps` steps and at every epoch end; a restarted run
  continues from it at the exact step, with the same batches and keys.
  Losses go to `writer` at every host sync and at every epoch end.
  """
  pc = config.pretrain
  objectives = setup.pretrain_objectives(config)
  names = tuple(o.name for o, _ in objectives)
  layout = setup.item_table_layout(config, ds, mesh)
  mcfg = model_lib.model_config(config, ds, head_names=objectives_lib.head_names(objectives), layout=layout)
  micro_batches, why = setup.pretrain_micro_batches(config, ds, mesh, objectives)
  options = setup.objective_options(config, ds)
  batches = input_pipeline.PretrainBatches(
      ds, input_pipeline.PretrainSettings(pc.batch_size, config.max_seq_length, pc.mask_p,
                                          setup.negative_high(config, ds), encoder_registry.packs(config),
                                          segment_negatives=setup.segment_negatives(objectives, options)),
      config.seed, setup.shards(mesh, micro_batches))
  batches.workers = setup.data_workers(config, mesh)
  tx = train_steps.make_optimizer(pc.learning_rate, pc.adam_b1, pc.adam_b2, pc.weight_decay)
  state = train_steps.create_state(
      model_lib.init_params(mcfg, setup.base_key(config, setup.STREAM_PRETRAIN_INIT)), tx, mesh,
      mcfg.item_table_axis)
  tables = parallel.replicate({"attr_ids": ds.attr_ids}, mesh)
  phase = loop.Phase(
      label="pre-training", tag="pretrain", epochs=pc.epochs,
      steps_per_epoch=batches.steps_per_epoch, batches=batches.epoch,
      step_fn=train_steps.make_pretrain_step(mcfg, objectives, options, tx, mesh, micro_batches),
      tables=tables, key=setup.base_key(config, setup.STREAM_PRETRAIN_KEY), objective_names=names,
      per_sequence=True, sync_every_steps=pc.log_every_steps,
      checkpoint_every_steps=pc.checkpoint_every_steps, max_steps=pc.get("max_steps", 0),
      diagnose=setup.diagnosis(mcfg, objectives, options, mesh, tables, micro_batches),
      item_size=ds.item_size)
  setup.log(f"pre-training: {layout.describe()}")
  setup.log(f"pre-training: {pc.epochs} epochs x {batches.steps_per_epoch} steps "
      f"({batches.num_sequences} sequences, batch {pc.batch_size}, {micro_batches} "
      f"micro-batch(es) per device step, {why}); objectives "
      + ", ".join(f"{o.name}[{o.form}] x{w:g}" for o, w in objectives))
  ckpt_dir = paths.join(workdir, workdir_files.PRETRAIN_DIR)
  # Saves are asynchronous: training goes on while a checkpoint is written.
  handoff = checkpointing.manager(ckpt_dir, asynchronous=True)
  resume = checkpointing.manager(paths.join(workdir, workdir_files.PRETRAIN_RESUME_DIR),
                                 max_to_keep=2, asynchronous=True)
  actions = [PretrainLog(writer), HandoffCheckpoints(handoff, pc.save_every_epochs, meta={
      "dataset": config.dataset, "item_size": ds.item_size, "attribute_size": ds.attribute_size,
      "objectives": list(names), "form": pc.form})]
  try:
    loop.train(phase, state, actions, resume, mesh, setup.log, setup.is_main_process())
  finally:
    handoff.close()
    resume.close()
  return ckpt_dir
