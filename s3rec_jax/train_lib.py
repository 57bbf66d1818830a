"""The pipeline behind train.py and evaluate.py: pre-train, fine-tune with early stopping, test.

Data flows one way: config -> dataset -> seeded numpy batches -> jitted steps on
the device mesh -> orbax checkpoints and metrics. Only process 0 writes logs
and results; every process takes part in checkpointing.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from s3rec_jax import checkpointing
from s3rec_jax import config_validation
from s3rec_jax import data as data_lib
from s3rec_jax import files
from s3rec_jax import input_pipeline
from s3rec_jax import item_table as item_table_lib
from s3rec_jax import loop
from s3rec_jax import metric_writers
from s3rec_jax import metrics as metrics_lib
from s3rec_jax import model as model_lib
from s3rec_jax import objectives as objectives_lib
from s3rec_jax import parallel
from s3rec_jax import provenance
from s3rec_jax import train_steps

PRETRAIN_DIR = "pretrain"                 # hand-off checkpoints, one per saved epoch
PRETRAIN_RESUME_DIR = "pretrain_resume"   # rolling checkpoints to resume within an epoch
FINETUNE_BEST_DIR = "finetune_best"       # the best state on validation (used for the test)
FINETUNE_RESUME_DIR = "finetune_resume"   # state + early-stopping record after every epoch
SASREC_DIR = "sasrec"
COMPARISON_FILE = "comparison.md"
RESULTS_FILE = "results.json"
RUN_FILE = "run.json"     # what serving needs: config, sizes, where the data came from
IDS_FILE = "ids.json"     # copy of the dataset's NAME_ids.json (original <-> dense ids), if any
# Independent PRNG streams derived from config.seed.
STREAM_PRETRAIN_INIT = 10
STREAM_PRETRAIN_KEY = 11
STREAM_FINETUNE_KEY = 12
STREAM_FINETUNE_INIT = 13


def is_main_process() -> bool:
  return jax.process_index() == 0


def log(message: str) -> None:
  if is_main_process():
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def open_metric_writer(workdir: str) -> metric_writers.MetricWriter:
  """workdir/log.jsonl and workdir/tensorboard/ on process 0; a no-op writer elsewhere."""
  return metric_writers.create_default_writer(workdir, enabled=is_main_process())


# --- setup -------------------------------------------------------------------


def load_data(config: ml_collections.ConfigDict, workdir: str) -> data_lib.Dataset:
  if config.dataset == "synthetic":
    s = config.synthetic
    sizes = dict(num_users=s.num_users, num_items=s.num_items, num_attributes=s.num_attributes,
                 seed=s.seed, num_negatives=config.sample.num_negatives)
    if s.kind == "long_tail":
      ds = data_lib.synthetic_long_tail_dataset(num_categories=s.num_categories, **sizes)
    else:
      ds = data_lib.synthetic_dataset(**sizes)
    log(f"dataset: built-in synthetic, {s.kind} ({ds.num_users} users, {ds.max_item} items, "
        f"{ds.max_attr} attributes, seed {s.seed})")
    return ds
  needs_samples = config.eval.protocol == "sampled"
  ds = data_lib.load_dataset(config.data_dir, config.dataset, sample_dir=workdir,
                             num_negatives=config.sample.num_negatives,
                             sample_seed=config.sample.seed, need_samples=needs_samples, log=log,
                             require_dense_ids=True)
  log(f"dataset: {config.dataset} from {os.path.abspath(config.data_dir)} ({ds.num_users} users, "
      f"{ds.max_item} items, {ds.num_interactions} interactions, {ds.max_attr} attributes)")
  return ds


def make_mesh(config: ml_collections.ConfigDict):
  devices = jax.devices()
  if config.num_devices:
    if config.num_devices > len(devices):
      raise config_validation.ConfigError(
          f"config.num_devices={config.num_devices} but only {len(devices)} devices exist")
    devices = devices[:config.num_devices]
  mesh = parallel.make_mesh(devices)
  log(f"devices: {mesh.size} x {devices[0].platform} ({jax.process_count()} process(es))")
  return mesh


def model_config(config: ml_collections.ConfigDict, ds: data_lib.Dataset,
                 head_names: tuple[str, ...] = (),
                 layout: item_table_lib.Layout | None = None) -> model_lib.ModelConfig:
  """The encoder's static config; `layout` (default: replicated) places the item table."""
  m = config.model
  return model_lib.ModelConfig(
      item_size=ds.item_size, attribute_size=ds.attribute_size, hidden_size=m.hidden_size,
      num_layers=m.num_layers, num_heads=m.num_heads, max_len=config.max_seq_length,
      hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout,
      initializer_range=m.initializer_range, head_names=tuple(head_names),
      compute_dtype=m.compute_dtype,
      item_table_axis=layout.axis if layout else None,
      item_table_rows=layout.rows if layout and layout.sharded else 0)


def item_table_layout(config: ml_collections.ConfigDict, ds: data_lib.Dataset,
                      mesh) -> item_table_lib.Layout:
  """Where the item table lives (config.model.item_table), with the reason for the log."""
  try:
    return item_table_lib.choose(
        config.model.item_table, item_size=ds.item_size, hidden_size=config.model.hidden_size,
        num_devices=mesh.size, axis=parallel.DATA_AXIS,
        shard_above_mib=config.model.item_table_shard_above_mib)
  except ValueError as e:
    raise config_validation.ConfigError(str(e)) from None


def shards(mesh, micro_batches: int = 1) -> input_pipeline.Shards:
  return input_pipeline.Shards(*parallel.local_shards(mesh), micro_batches=micro_batches)


def pretrain_micro_batches(config: ml_collections.ConfigDict, ds: data_lib.Dataset, mesh,
                           objectives) -> tuple[int, str]:
  """Micro-batches per device step for pre-training, and why (for the log)."""
  pc = config.pretrain
  if pc.micro_batches:
    return pc.micro_batches, "config.pretrain.micro_batches"
  if any(o.whole_batch for o, _ in objectives):
    return 1, "automatic: an objective compares sequences across the whole batch"
  per_device = pc.batch_size / mesh.size
  if config.pack_sequences:
    starts, ends = data_lib.pretrain_prefixes(ds, config.max_seq_length)
    # Packing fills about 90% of a row's slots.
    rows = per_device * float(np.mean(ends - starts)) / (0.9 * config.max_seq_length)
  else:
    rows = per_device
  platform = mesh.devices.flat[0].platform
  count = parallel.auto_micro_batches(platform, rows)
  return count, f"automatic: {platform} devices, about {rows:.1f} rows per device step"


def pretrain_objectives(config: ml_collections.ConfigDict):
  pc = config.pretrain
  return objectives_lib.resolve(pc.objectives.to_dict(), pc.form, phase="pretrain")


def finetune_objectives(config: ml_collections.ConfigDict):
  """config.finetune.objectives, with finetune.loss as the form of next_item."""
  fc = config.finetune
  return objectives_lib.resolve(fc.objectives.to_dict(), {"next_item": fc.loss}, phase="finetune")


def objective_options(config: ml_collections.ConfigDict,
                      ds: data_lib.Dataset) -> objectives_lib.ObjectiveOptions:
  pc = config.pretrain
  return objectives_lib.ObjectiveOptions(
      mask_id=ds.mask_id, num_items=ds.max_item, temperature=pc.infonce_temperature,
      mip_num_negatives=pc.mip_num_negatives,
      settings=objectives_lib.settings_tuple(config.settings.to_dict()))


def finetune_tables(objectives, ds: data_lib.Dataset, splits: dict) -> dict:
  """Lookup tables fine-tuning objectives read: the sampling distribution of the
  sampled softmax, if it is used."""
  if any(o.name == "next_item" and o.form == "sampled_softmax" for o, _ in objectives):
    return {"item_log_q": objectives_lib.next_item.item_log_q(splits["train_targets"],
                                                              ds.item_size)}
  return {}


def segment_negatives(objectives, options: objectives_lib.ObjectiveOptions) -> int:
  """How many same-layout SP negatives per sequence the input pipeline must build."""
  wanted = [v for v in objectives_lib.views_of(objectives, options)[1]
            if v.startswith("segment_negative")]
  return max(1, len(wanted))


def negative_high(config: ml_collections.ConfigDict, ds: data_lib.Dataset) -> int:
  return ds.mask_id if config.negatives_include_mask_id else ds.max_item


def base_key(config: ml_collections.ConfigDict, stream: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(config.seed), stream)


# The loop's fault type and in-flight bound, under the names callers already use.
NumericalError = loop.NumericalError
bound_in_flight = loop.bound_in_flight


def diagnosis(mcfg, objectives, options, mesh, tables, micro_batches: int = 1,
              phase: str = "pretrain"):
  """The loop's `diagnose`: which objectives are not finite on one batch, each alone."""
  per_objective = train_steps.make_objective_diagnosis(mcfg, objectives, options, mesh,
                                                       micro_batches, phase=phase)

  def diagnose(params, batch, key):
    found = jax.device_get(per_objective(params, parallel.shard_batch(batch, mesh), tables, key))
    return [name for name, (loss, norm) in found.items()
            if not (np.isfinite(loss) and np.isfinite(norm))]

  return diagnose


# --- pre-training ------------------------------------------------------------


class PretrainLog(loop.Action):
  """Losses to the writer at every host sync; the epoch's line, record and scalars."""

  def __init__(self, writer: metric_writers.MetricWriter):
    self.writer = writer

  def after_sync(self, phase, global_step, window):
    self.writer.write_scalars(global_step, {f"pretrain/{n}": v for n, v in window.items()})

  def after_epoch(self, phase, end):
    throughput = end.sequences / end.seconds
    log(f"pretrain epoch {end.epoch}: "
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
      log(f"pre-training: saved checkpoint {self.mngr.directory}/{end.epoch}")
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
  objectives = pretrain_objectives(config)
  names = tuple(o.name for o, _ in objectives)
  layout = item_table_layout(config, ds, mesh)
  mcfg = model_config(config, ds, head_names=objectives_lib.head_names(objectives), layout=layout)
  micro_batches, why = pretrain_micro_batches(config, ds, mesh, objectives)
  options = objective_options(config, ds)
  batches = input_pipeline.PretrainBatches(
      ds, input_pipeline.PretrainSettings(pc.batch_size, config.max_seq_length, pc.mask_p,
                                          negative_high(config, ds), config.pack_sequences,
                                          segment_negatives=segment_negatives(objectives, options)),
      config.seed, shards(mesh, micro_batches))
  tx = train_steps.make_optimizer(pc.learning_rate, pc.adam_b1, pc.adam_b2, pc.weight_decay)
  state = train_steps.create_state(
      model_lib.init_params(mcfg, base_key(config, STREAM_PRETRAIN_INIT)), tx, mesh,
      mcfg.item_table_axis)
  tables = parallel.replicate({"attr_ids": ds.attr_ids}, mesh)
  phase = loop.Phase(
      label="pre-training", tag="pretrain", epochs=pc.epochs,
      steps_per_epoch=batches.steps_per_epoch, batches=batches.epoch,
      step_fn=train_steps.make_pretrain_step(mcfg, objectives, options, tx, mesh, micro_batches),
      tables=tables, key=base_key(config, STREAM_PRETRAIN_KEY), objective_names=names,
      per_sequence=True, sync_every_steps=pc.log_every_steps,
      checkpoint_every_steps=pc.checkpoint_every_steps,
      diagnose=diagnosis(mcfg, objectives, options, mesh, tables, micro_batches),
      item_size=ds.item_size)
  log(f"pre-training: {layout.describe()}")
  log(f"pre-training: {pc.epochs} epochs x {batches.steps_per_epoch} steps "
      f"({batches.num_sequences} sequences, batch {pc.batch_size}, {micro_batches} "
      f"micro-batch(es) per device step, {why}); objectives "
      + ", ".join(f"{o.name}[{o.form}] x{w:g}" for o, w in objectives))
  ckpt_dir = os.path.join(workdir, PRETRAIN_DIR)
  handoff = checkpointing.manager(ckpt_dir)
  resume = checkpointing.manager(os.path.join(workdir, PRETRAIN_RESUME_DIR), max_to_keep=2)
  actions = [PretrainLog(writer), HandoffCheckpoints(handoff, pc.save_every_epochs, meta={
      "dataset": config.dataset, "item_size": ds.item_size, "attribute_size": ds.attribute_size,
      "objectives": list(names), "form": pc.form})]
  try:
    loop.train(phase, state, actions, resume, mesh, log, is_main_process())
  finally:
    handoff.close()
    resume.close()
  return ckpt_dir


# --- fine-tuning and evaluation ---------------------------------------------


class Evaluator:
  """Jitted evaluation of one split under one protocol, users sharded over the mesh.

  A split's batches are the same in every pass (only the parameters change),
  so they are built and placed on the devices once and kept, unless they
  would take more than `cache_bytes` of (this process's share of the) memory.
  """

  def __init__(self, config, ds, splits, mcfg, mesh, protocol: str,
               cache_bytes: int = 256 * 2**20):
    ec = config.eval
    self.config, self.ds, self.splits, self.mesh, self.protocol = config, ds, splits, mesh, protocol
    ranking = ec.get("ranking", "scan")
    self.step = train_steps.make_eval_step(mcfg, protocol, mesh, num_items=ds.max_item,
                                           chunk_size=ec.chunk_size, ranking=ranking)
    self.fingerprints = train_steps.make_table_fingerprints(
        mesh, ec.chunk_size, mcfg.item_table_axis,
        needed=not (protocol == "full" and ranking == "fused_cpu"))
    self.cache_bytes, self.cached = cache_bytes, {}

  def batches(self, split: str):
    """The split's batches, placed on the mesh (kept after the first pass if small enough)."""
    if split in self.cached:
      yield from self.cached[split]
      return
    kept, size = [], 0
    for batch in input_pipeline.prefetch(input_pipeline.eval_batches(
        self.ds, self.splits, split, self.protocol, self.config.eval.batch_size,
        self.config.pack_sequences, shards(self.mesh))):
      size += sum(v.nbytes for v in batch.values())
      placed = parallel.shard_batch(batch, self.mesh)
      if kept is not None and size <= self.cache_bytes:
        kept.append(placed)
      else:
        kept = None
      yield placed
    if kept is not None:
      self.cached[split] = kept

  def __call__(self, params, split: str) -> dict[str, float]:
    fingerprints = self.fingerprints(params)
    dispatched = []
    for batch in self.batches(split):
      dispatched.append(self.step(params, batch, fingerprints))
      bound_in_flight(dispatched)
    # The batches' sums are added on the host (float64) at the end: adding them
    # on the devices dispatched a small computation per metric and batch.
    per_batch = jax.device_get(dispatched)
    values = metrics_lib.finalize(
        {name: sum(np.float64(sums[name]) for sums in per_batch) for name in per_batch[0]})
    return {name: values[name] for name in train_steps.metric_names(self.protocol)}


def early_stopping_metric(protocol: str) -> str:
  return "MRR" if protocol == "sampled" else "NDCG@20"


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
    log(f"finetune epoch {end.epoch}: loss={loss:.4f}{parts} ({end.seconds:.1f}s) valid "
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
      log(f"early stopping: no {self.target} improvement for {self.patience} epochs")
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
  layout = item_table_layout(config, ds, mesh)
  log(f"fine-tuning: {layout.describe()}")
  mcfg = model_config(config, ds, layout=layout)
  splits = data_lib.finetune_splits(ds, config.max_seq_length)
  params = train_steps.place_params(
      model_lib.init_params(mcfg, base_key(config, STREAM_FINETUNE_INIT)), mesh,
      mcfg.item_table_axis)
  loaded = None
  if init_checkpoint:
    params, root, step = checkpointing.restore_encoder(init_checkpoint, params,
                                                       item_size=ds.item_size)
    loaded = {"path": os.path.join(root, str(step)), "step": step}
    log(f"fine-tuning: loaded embeddings and encoder from {root} step {step} (heads not carried)")
  else:
    log("fine-tuning: no pre-training checkpoint: random initialisation (plain SASRec)")
  tx = train_steps.make_optimizer(fc.learning_rate, fc.adam_b1, fc.adam_b2, fc.weight_decay)
  state = train_steps.create_state(params, tx, mesh, mcfg.item_table_axis)
  batches = input_pipeline.FinetuneBatches(ds, splits, fc.batch_size, negative_high(config, ds),
                                           config.seed, config.pack_sequences, shards(mesh))
  objectives = finetune_objectives(config)
  options = objective_options(config, ds)
  tables = parallel.replicate(finetune_tables(objectives, ds, splits), mesh)
  phase = loop.Phase(
      label="fine-tuning", tag="finetune", epochs=fc.epochs,
      steps_per_epoch=batches.steps_per_epoch, batches=batches.epoch,
      step_fn=train_steps.make_finetune_step(mcfg, tx, mesh, objectives, options),
      tables=tables, key=base_key(config, STREAM_FINETUNE_KEY),
      objective_names=tuple(o.name for o, _ in objectives),
      diagnose=diagnosis(mcfg, objectives, options, mesh, tables, phase="finetune"),
      item_size=ds.item_size)
  log("fine-tuning: objectives " + ", ".join(f"{o.name}[{o.form}] x{w:g}" for o, w in objectives)
      + (f"; early stopping from epoch {fc.min_epochs} on" if fc.min_epochs else ""))
  evaluate = Evaluator(config, ds, splits, mcfg, mesh, protocol)
  best_mngr = checkpointing.manager(os.path.join(workdir, FINETUNE_BEST_DIR), max_to_keep=1)
  resume = checkpointing.manager(os.path.join(workdir, FINETUNE_RESUME_DIR), max_to_keep=2)
  validation = Validation(evaluate, early_stopping_metric(protocol), best_mngr, writer,
                          patience=fc.patience, min_epochs=fc.min_epochs, meta={
                              "init_checkpoint": loaded, "dataset": config.dataset,
                              "protocol": protocol})
  try:
    state = loop.train(phase, state, [validation], resume, mesh, log, is_main_process())
    record = validation.state()
    best_params = checkpointing.restore_params(best_mngr, record["best_epoch"], state.params,
                                               item_size=ds.item_size)
  finally:
    best_mngr.close()
    resume.close()
  test = evaluate(best_params, "test")
  log(f"test (best epoch {record['best_epoch']}): "
      + " ".join(f"{k}={v:.4f}" for k, v in test.items()))
  writer.write_scalars(record["best_epoch"],
                       {f"test/{name}": value for name, value in test.items()})
  return {"test": test, "valid": record["best_valid"], "best_epoch": record["best_epoch"],
          "pretrain_checkpoint": loaded}


def named_init_checkpoint(config: ml_collections.ConfigDict) -> str | None:
  """config.finetune.init_checkpoint as an absolute path; fails loudly when it does not exist."""
  if not config.finetune.init_checkpoint:
    return None
  path = os.path.abspath(config.finetune.init_checkpoint)
  checkpointing.resolve(path)
  return path


def results_payload(config: ml_collections.ConfigDict, outcome: dict) -> dict:
  payload = dict(outcome["test"])
  payload.update({
      "protocol": config.eval.protocol, "dataset": config.dataset, "split": "test",
      "test": outcome["test"], "valid": outcome["valid"], "best_epoch": outcome["best_epoch"],
      "pretrain_checkpoint": outcome["pretrain_checkpoint"], "config": config.to_dict()})
  return payload


def write_run_record(config: ml_collections.ConfigDict, ds: data_lib.Dataset, workdir: str) -> None:
  """WORKDIR/run.json (config and sizes) and WORKDIR/ids.json: a workdir that serves on its own."""
  if not is_main_process():
    return
  ids_path = None
  if config.dataset != "synthetic":
    source = os.path.join(os.path.abspath(config.data_dir), f"{config.dataset}_ids.json")
    if os.path.exists(source):
      with open(source) as f:
        files.write_text_atomic(os.path.join(workdir, IDS_FILE), f.read())
      ids_path = source
  files.write_json_atomic(os.path.join(workdir, RUN_FILE), {
      "config": config.to_dict(), "dataset": config.dataset,
      "data_dir": os.path.abspath(config.data_dir), "item_size": ds.item_size,
      "attribute_size": ds.attribute_size, "max_item": ds.max_item, "ids_file": ids_path,
      # Where and with what this run (or its latest resume) ran.
      "made_by": {"commit": provenance.commit(), "cpu": provenance.cpu(),
                  "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
                  **provenance.libraries()}})


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pre-train (if asked), fine-tune, test; writes workdir/results.json atomically.

  With config.compare_to_sasrec, plain SASRec (the same config without
  pre-training) then trains in workdir/sasrec, and both runs' test metrics
  are printed side by side and written to workdir/comparison.md.
  """
  payload = run_one(config, workdir)
  pretrained = config.pretrain.epochs > 0 or bool(config.finetune.init_checkpoint)
  if not (config.compare_to_sasrec and pretrained):
    return payload
  baseline = sasrec_baseline(config)
  log(f"compare_to_sasrec: training plain SASRec in {os.path.join(workdir, SASREC_DIR)}")
  baseline_payload = run_one(baseline, os.path.join(workdir, SASREC_DIR))
  table = comparison_table({"S3-Rec": payload["test"], "SASRec": baseline_payload["test"]},
                           decide_by=early_stopping_metric(config.eval.protocol))
  log(table)
  if is_main_process():
    files.write_text_atomic(os.path.join(os.path.abspath(workdir), COMPARISON_FILE), table + "\n")
  return payload


def sasrec_baseline(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The same run with pre-training off: the baseline that pre-training must beat."""
  baseline = ml_collections.ConfigDict(config.to_dict())
  baseline.pretrain.epochs = 0
  baseline.finetune.init_checkpoint = ""
  baseline.compare_to_sasrec = False
  return baseline


def comparison_table(runs: dict[str, dict[str, float]], decide_by: str) -> str:
  """Test metrics of several runs, one row per metric, and which run won on `decide_by`."""
  names = list(runs)
  metrics = list(next(iter(runs.values())))
  width = max(10, *(len(n) for n in names))
  lines = ["test metrics, side by side", f"{'metric':>8} " + " ".join(f"{n:>{width}}" for n in names)]
  for m in metrics:
    lines.append(f"{m:>8} " + " ".join(f"{runs[n][m]:>{width}.4f}" for n in names))
  ranked = sorted(names, key=lambda n: runs[n][decide_by], reverse=True)
  best, runner_up = ranked[0], ranked[1]
  if runs[best][decide_by] == runs[runner_up][decide_by]:
    lines.append(f"{best} and {runner_up} tie on test {decide_by} ({runs[best][decide_by]:.4f})")
  else:
    lines.append(f"{best} wins on test {decide_by}: {runs[best][decide_by]:.4f} against "
                 f"{runs[runner_up][decide_by]:.4f} for {runner_up}")
  return "\n".join(lines)


def run_one(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """One run: pre-train (if asked), fine-tune, test; writes workdir/results.json atomically."""
  config_validation.validate(config)
  workdir = os.path.abspath(workdir)
  t0 = time.time()
  mesh = make_mesh(config)
  config_validation.validate_for_devices(config, mesh.size)
  init_checkpoint = named_init_checkpoint(config)
  # The workdir is made only once the data has loaded: bad input leaves nothing behind.
  ds = load_data(config, workdir)
  os.makedirs(workdir, exist_ok=True)
  write_run_record(config, ds, workdir)
  pretrained = None
  # One writer per phase, closed when the phase ends or fails: its last points reach the disk.
  if config.pretrain.epochs > 0:
    with open_metric_writer(workdir) as writer:
      pretrained = pretrain(config, ds, workdir, mesh, writer)
  elif not config.finetune.init_checkpoint:
    log("pre-training: epochs = 0, so this run is plain SASRec")
  with open_metric_writer(workdir) as writer:
    outcome = finetune_and_test(config, ds, workdir, mesh, init_checkpoint or pretrained, writer)
  payload = results_payload(config, outcome)
  if is_main_process():
    files.write_json_atomic(os.path.join(workdir, RESULTS_FILE), payload)
  # Timing stays out of results.json, which a resumed run must reproduce exactly.
  with open_metric_writer(workdir) as writer:
    writer.write_record({"phase": "done", "wall_seconds": time.time() - t0})
  log(format_table(outcome["test"], f"test metrics ({config.dataset}, {config.eval.protocol})"))
  return payload


def evaluate_best(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, float]]:
  """Re-evaluates the best fine-tuning checkpoint of workdir under config.eval.protocol."""
  config_validation.validate(config)
  workdir = os.path.abspath(workdir)
  best_dir = os.path.join(workdir, FINETUNE_BEST_DIR)
  root, step = checkpointing.resolve(best_dir)
  mesh = make_mesh(config)
  config_validation.validate_for_devices(config, mesh.size)
  ds = load_data(config, workdir)
  layout = item_table_layout(config, ds, mesh)
  log(layout.describe())
  mcfg = model_config(config, ds, layout=layout)
  params = train_steps.place_params(
      model_lib.init_params(mcfg, base_key(config, STREAM_FINETUNE_INIT)), mesh,
      mcfg.item_table_axis)
  mngr = checkpointing.manager(root, read_only=True)
  params = checkpointing.restore_params(mngr, step, params, item_size=ds.item_size)
  mngr.close()
  log(f"evaluating {root}/{step} under the {config.eval.protocol} protocol")
  evaluate = Evaluator(config, ds, data_lib.finetune_splits(ds, config.max_seq_length), mcfg,
                       mesh, config.eval.protocol)
  return {split: evaluate(params, split) for split in ("valid", "test")}


def format_table(metrics: dict[str, float], title: str) -> str:
  names = list(metrics)
  width = max(8, *(len(n) for n in names))
  header = " ".join(f"{n:>{width}}" for n in names)
  values = " ".join(f"{metrics[n]:>{width}.4f}" for n in names)
  return f"{title}\n{header}\n{values}"
