"""The pipeline behind train.py and evaluate.py: pre-train, fine-tune with early stopping, test.

Data flows one way: config -> dataset -> seeded numpy batches -> jitted steps on
the device mesh -> orbax checkpoints and metrics. Only process 0 writes logs
and results; every process takes part in checkpointing.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from s3rec_jax import checkpointing
from s3rec_jax import config_validation
from s3rec_jax import data as data_lib
from s3rec_jax import files
from s3rec_jax import input_pipeline
from s3rec_jax import metric_writers
from s3rec_jax import metrics as metrics_lib
from s3rec_jax import model as model_lib
from s3rec_jax import objectives as objectives_lib
from s3rec_jax import parallel
from s3rec_jax import train_steps

PRETRAIN_DIR = "pretrain"                 # hand-off checkpoints, one per saved epoch
PRETRAIN_RESUME_DIR = "pretrain_resume"   # rolling checkpoints to resume within an epoch
FINETUNE_BEST_DIR = "finetune_best"       # the best state on validation (used for the test)
FINETUNE_RESUME_DIR = "finetune_resume"   # state + early-stopping record after every epoch
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
    ds = data_lib.synthetic_dataset(num_users=s.num_users, num_items=s.num_items,
                                    num_attributes=s.num_attributes, seed=s.seed,
                                    num_negatives=config.sample.num_negatives)
    log(f"dataset: built-in synthetic ({ds.num_users} users, {ds.max_item} items, "
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
                 head_names: tuple[str, ...] = ()) -> model_lib.ModelConfig:
  m = config.model
  return model_lib.ModelConfig(
      item_size=ds.item_size, attribute_size=ds.attribute_size, hidden_size=m.hidden_size,
      num_layers=m.num_layers, num_heads=m.num_heads, max_len=config.max_seq_length,
      hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout,
      initializer_range=m.initializer_range, head_names=tuple(head_names))


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


def negative_high(config: ml_collections.ConfigDict, ds: data_lib.Dataset) -> int:
  return ds.mask_id if config.negatives_include_mask_id else ds.max_item


def base_key(config: ml_collections.ConfigDict, stream: int) -> jax.Array:
  return jax.random.fold_in(jax.random.key(config.seed), stream)


def _progress(iterable, total: int, desc: str):
  return tqdm(iterable, total=total, desc=desc, leave=False, disable=not is_main_process(),
              file=sys.stderr, mininterval=1.0)


# --- numerical faults and checkpoint helpers ----------------------------------


class NumericalError(FloatingPointError):
  """A loss or gradient became NaN or Inf."""


def _first_non_finite(records):
  """(epoch, step, metrics) of the first record whose step was not finite, or None."""
  for record in records:
    if not bool(record[2]["finite"]):
      return record
  return None


def bound_in_flight(dispatched: list) -> None:
  """Waits for the step before the newest one: at most two steps in flight.

  One queued step is enough to keep the devices busy while the host builds
  the next batch; a long queue of programs with collectives can stall
  XLA:CPU's host devices (seen as a rendezvous timeout that aborts the
  process).
  """
  if len(dispatched) >= 2:
    jax.block_until_ready(dispatched[-2])


def _save_once(mngr, step: int, params, meta: dict, opt_state=None) -> None:
  # A resumed run may redo an epoch whose checkpoint was already written; the
  # content would be identical, so the existing one is kept.
  if step not in mngr.all_steps():
    checkpointing.save(mngr, step, params, meta, opt_state=opt_state)


# --- pre-training ------------------------------------------------------------


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
  mcfg = model_config(config, ds, head_names=objectives_lib.head_names(objectives))
  micro_batches, why = pretrain_micro_batches(config, ds, mesh, objectives)
  batches = input_pipeline.PretrainBatches(
      ds, input_pipeline.PretrainSettings(pc.batch_size, config.max_seq_length, pc.mask_p,
                                          negative_high(config, ds), config.pack_sequences),
      config.seed, shards(mesh, micro_batches))
  options = objective_options(config, ds)
  tx = train_steps.make_optimizer(pc.learning_rate, pc.adam_b1, pc.adam_b2, pc.weight_decay)
  repl = parallel.replicated(mesh)
  init_key = base_key(config, STREAM_PRETRAIN_INIT)
  state = train_steps.create_state(model_lib.init_params(mcfg, init_key), tx, mesh)
  tables = parallel.replicate({"attr_ids": ds.attr_ids}, mesh)
  step_fn = train_steps.make_pretrain_step(mcfg, objectives, options, tx, mesh, micro_batches)

  ckpt_dir = os.path.join(workdir, PRETRAIN_DIR)
  handoff = checkpointing.manager(ckpt_dir)
  resume = checkpointing.manager(os.path.join(workdir, PRETRAIN_RESUME_DIR), max_to_keep=2)
  start_epoch, start_step, carried = 0, 0, {"sums": {}, "seen": 0}
  restored = checkpointing.restore_latest_good(resume, state.params, state.opt_state, repl, log)
  if restored is not None:
    global_step, params, opt_state, meta = restored
    state = state.replace(params=params, opt_state=opt_state,
                          step=parallel.replicate(np.int32(global_step), mesh))
    start_epoch, start_step, carried = meta["epoch"], meta["step"], meta["partial"]
    log(f"pre-training: resuming at epoch {start_epoch + 1} step {start_step} "
        f"(global step {global_step})")
  log(f"pre-training: {pc.epochs} epochs x {batches.steps_per_epoch} steps "
      f"({batches.num_sequences} sequences, batch {pc.batch_size}, {micro_batches} "
      f"micro-batch(es) per device step, {why}); objectives "
      + ", ".join(f"{o.name}[{o.form}] x{w:g}" for o, w in objectives))
  key = base_key(config, STREAM_PRETRAIN_KEY)

  def diagnose(epoch, step, batch):
    per_objective = train_steps.make_objective_diagnosis(mcfg, objectives, options, mesh,
                                                         micro_batches)(
        state.params, parallel.shard_batch(batch, mesh), tables,
        train_steps.step_key(key, epoch, step))
    bad = [name for name, (loss, norm) in jax.device_get(per_objective).items()
           if not (np.isfinite(loss) and np.isfinite(norm))]
    return bad or ["(the joint loss; no single objective)"]

  for epoch in range(start_epoch, pc.epochs):
    t0 = time.time()
    sums, seen = dict(carried["sums"]), carried["seen"]
    seen_before = seen  # sequences of this epoch done before a resume: not this run's throughput
    first_step = start_step if epoch == start_epoch else 0
    pending = []

    def flush():
      nonlocal seen
      records = jax.device_get(pending)
      bad = _first_non_finite(records)
      if bad is not None:
        b_epoch, b_step, b_metrics, b_batch = bad
        culprits = [k for k in names if not np.isfinite(b_metrics[k])] or diagnose(
            b_epoch, b_step, b_batch)
        raise NumericalError(
            f"pre-training: non-finite loss or gradient at epoch {b_epoch + 1} step {b_step} "
            f"(objective: {', '.join(culprits)}); the last good checkpoints in "
            f"{resume.directory} and {ckpt_dir} are intact")
      window, window_seen = dict.fromkeys((*names, "loss"), 0.0), 0.0
      for _, _, metrics, _ in records:
        for name in window:
          window[name] += float(metrics[name])
        window_seen += float(metrics["sequences"])  # global: a process holds only its shards
      for name, value in window.items():
        sums[name] = sums.get(name, 0.0) + value
      seen += window_seen
      last_epoch, last_step = records[-1][:2]
      writer.write_scalars(last_epoch * batches.steps_per_epoch + last_step + 1, {
          f"pretrain/{name}": value / max(window_seen, 1) for name, value in window.items()})
      pending.clear()

    bar = _progress(input_pipeline.prefetch(batches.epoch(epoch, first_step)),
                    batches.steps_per_epoch - first_step, f"pretrain {epoch + 1}/{pc.epochs}")
    for step, batch in enumerate(bar, start=first_step):
      state, metrics = step_fn(state, parallel.shard_batch(batch, mesh), tables,
                               train_steps.step_key(key, epoch, step))
      pending.append((epoch, step, metrics, batch))
      bound_in_flight(pending)
      last = step == batches.steps_per_epoch - 1
      global_step = epoch * batches.steps_per_epoch + step + 1
      periodic = pc.checkpoint_every_steps and global_step % pc.checkpoint_every_steps == 0
      if len(pending) >= pc.log_every_steps or last or periodic:
        flush()
        bar.set_postfix(loss=f"{sums['loss'] / max(seen, 1):.4f}")
      if periodic and not last:
        _save_once(resume, global_step, state.params, opt_state=state.opt_state, meta={
            "epoch": epoch, "step": step + 1, "partial": {"sums": sums, "seen": seen}})
    carried = {"sums": {}, "seen": 0}
    averages = {name: value / max(seen, 1) for name, value in sums.items()}
    elapsed = time.time() - t0
    throughput = (seen - seen_before) / elapsed
    log(f"pretrain epoch {epoch + 1}: " + " ".join(f"{k}={v:.4f}" for k, v in sorted(averages.items()))
        + f" ({elapsed:.1f}s, {throughput:.0f} seq/s)")
    writer.write_record(dict(phase="pretrain", epoch=epoch + 1, seconds=elapsed, **averages))
    global_step = (epoch + 1) * batches.steps_per_epoch
    writer.write_scalars(global_step, {
        **{f"pretrain_epoch/{name}": value for name, value in averages.items()},
        "pretrain/sequences_per_second": throughput, "pretrain/epoch_seconds": elapsed})
    if (epoch + 1) % pc.save_every_epochs == 0 or epoch + 1 == pc.epochs:
      _save_once(handoff, epoch + 1, state.params, opt_state=state.opt_state, meta={
          "epoch": epoch + 1, "global_step": global_step, "dataset": config.dataset,
          "item_size": ds.item_size, "attribute_size": ds.attribute_size,
          "objectives": list(names), "form": pc.form})
      log(f"pre-training: saved checkpoint {ckpt_dir}/{epoch + 1}")
    _save_once(resume, global_step, state.params, opt_state=state.opt_state, meta={
        "epoch": epoch + 1, "step": 0, "partial": carried})
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
    self.step = train_steps.make_eval_step(mcfg, protocol, mesh, num_items=ds.max_item,
                                           chunk_size=ec.chunk_size, top_k=ec.top_k)
    self.fingerprints = train_steps.make_table_fingerprints(mesh, ec.chunk_size)
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
  mcfg = model_config(config, ds)
  splits = data_lib.finetune_splits(ds, config.max_seq_length)
  repl = parallel.replicated(mesh)
  params = parallel.replicate(model_lib.init_params(mcfg, base_key(config, STREAM_FINETUNE_INIT)),
                              mesh)
  loaded = None
  if init_checkpoint:
    params, root, step = checkpointing.restore_encoder(init_checkpoint, params, repl)
    loaded = {"path": os.path.join(root, str(step)), "step": step}
    log(f"fine-tuning: loaded embeddings and encoder from {root} step {step} (heads not carried)")
  else:
    log("fine-tuning: no pre-training checkpoint: random initialisation (plain SASRec)")
  tx = train_steps.make_optimizer(fc.learning_rate, fc.adam_b1, fc.adam_b2, fc.weight_decay)
  state = train_steps.create_state(params, tx, mesh)
  batches = input_pipeline.FinetuneBatches(ds, splits, fc.batch_size, negative_high(config, ds),
                                           config.seed, config.pack_sequences, shards(mesh))
  objectives = finetune_objectives(config)
  names = tuple(o.name for o, _ in objectives)
  step_fn = train_steps.make_finetune_step(mcfg, tx, mesh, objectives, objective_options(config, ds))
  tables = parallel.replicate(finetune_tables(objectives, ds, splits), mesh)
  log("fine-tuning: objectives " + ", ".join(f"{o.name}[{o.form}] x{w:g}" for o, w in objectives)
      + (f"; early stopping from epoch {fc.min_epochs} on" if fc.min_epochs else ""))
  evaluate = Evaluator(config, ds, splits, mcfg, mesh, protocol)
  target = early_stopping_metric(protocol)
  best_mngr = checkpointing.manager(os.path.join(workdir, FINETUNE_BEST_DIR), max_to_keep=1)
  resume = checkpointing.manager(os.path.join(workdir, FINETUNE_RESUME_DIR), max_to_keep=2)
  key = base_key(config, STREAM_FINETUNE_KEY)
  record = {"epoch": 0, "best_score": None, "best_epoch": -1, "best_valid": None, "waited": 0,
            "done": False}
  restored = checkpointing.restore_latest_good(resume, state.params, state.opt_state, repl, log)
  if restored is not None:
    _, params, opt_state, record = restored
    state = state.replace(params=params, opt_state=opt_state,
                          step=parallel.replicate(np.int32(record["global_step"]), mesh))
    log(f"fine-tuning: resuming after epoch {record['epoch']}"
        + (" (already finished)" if record["done"] else ""))
  epoch = record["epoch"]
  while not record["done"] and epoch < fc.epochs:
    t0 = time.time()
    metrics = []
    for step, batch in enumerate(input_pipeline.prefetch(batches.epoch(epoch))):
      state, out = step_fn(state, parallel.shard_batch(batch, mesh), tables,
                           train_steps.step_key(key, epoch, step))
      metrics.append((epoch, step, out))
      bound_in_flight(metrics)
    metrics = jax.device_get(metrics)
    bad = _first_non_finite(metrics)
    if bad is not None:
      culprits = [n for n in names if not np.isfinite(bad[2][n])] or ["(the joint loss)"]
      raise NumericalError(
          f"fine-tuning: non-finite loss or gradient at epoch {bad[0] + 1} step {bad[1]} "
          f"(objective: {', '.join(culprits)}); the last good checkpoints in {resume.directory} "
          f"and {best_mngr.directory} are intact")
    train_loss = float(np.mean([m["loss"] for _, _, m in metrics]))
    per_objective = {n: float(np.mean([m[n] for _, _, m in metrics])) for n in names}
    train_seconds = time.time() - t0
    valid = evaluate(state.params, "valid")
    epoch += 1
    best = record["best_score"]
    improved = best is None or valid[target] > best
    parts = (" (" + " ".join(f"{n}={v:.4f}" for n, v in per_objective.items()) + ")"
             if len(names) > 1 else "")
    log(f"finetune epoch {epoch}: loss={train_loss:.4f}{parts} ({train_seconds:.1f}s) valid "
        + " ".join(f"{k}={v:.4f}" for k, v in valid.items()) + (" *" if improved else ""))
    writer.write_record(dict(phase="finetune", epoch=epoch, loss=train_loss, seconds=train_seconds,
                             valid=valid, objectives=per_objective))
    writer.write_scalars(epoch, {
        "finetune/loss": train_loss, "finetune/epoch_seconds": train_seconds,
        **({f"finetune/{n}": v for n, v in per_objective.items()} if len(names) > 1 else {}),
        "finetune/sequences_per_second": len(splits["train_inputs"]) / train_seconds,
        **{f"valid/{name}": value for name, value in valid.items()}})
    if improved:
      record.update(best_score=valid[target], best_epoch=epoch, best_valid=valid, waited=0)
      _save_once(best_mngr, epoch, state.params, meta={
          "epoch": epoch, "valid": valid, "init_checkpoint": loaded, "dataset": config.dataset,
          "protocol": protocol})
    else:
      record["waited"] += 1
      if record["waited"] >= fc.patience and epoch >= fc.min_epochs:
        log(f"early stopping: no {target} improvement for {fc.patience} epochs")
        record["done"] = True
    record.update(epoch=epoch, done=record["done"] or epoch >= fc.epochs,
                  global_step=int(jax.device_get(state.step)))
    _save_once(resume, epoch, state.params, opt_state=state.opt_state, meta=record)
  best_params = checkpointing.restore_params(best_mngr, record["best_epoch"], state.params, repl)
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
      "attribute_size": ds.attribute_size, "max_item": ds.max_item, "ids_file": ids_path})


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Pre-train (if asked), fine-tune, test; writes workdir/results.json atomically."""
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
  mcfg = model_config(config, ds)
  repl = parallel.replicated(mesh)
  params = parallel.replicate(model_lib.init_params(mcfg, base_key(config, STREAM_FINETUNE_INIT)),
                              mesh)
  mngr = checkpointing.manager(root, read_only=True)
  params = checkpointing.restore_params(mngr, step, params, repl)
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
