"""One run, as s3rec-train and s3rec-evaluate ask: pre-train, fine-tune, test, write the results.

Data flows one way: config -> dataset -> seeded numpy batches -> jitted steps on
the device mesh -> orbax checkpoints and metrics. Only process 0 writes logs
and results; every process takes part in checkpointing.
"""

from __future__ import annotations

import time

import jax
import ml_collections

from s3rec_jax.core import files
from s3rec_jax.core import paths
from s3rec_jax.core import provenance
from s3rec_jax.core import workdir_files
from s3rec_jax.data import dataset as data_lib
from s3rec_jax.evaluation import evaluator
from s3rec_jax.model import checkpointing
from s3rec_jax.model import encoder as model_lib
from s3rec_jax.training import comparison
from s3rec_jax.training import config_validation
from s3rec_jax.training import finetuning
from s3rec_jax.training import pretraining
from s3rec_jax.training import setup
from s3rec_jax.training import steps as train_steps


def named_init_checkpoint(config: ml_collections.ConfigDict) -> str | None:
  """config.finetune.init_checkpoint as an absolute path; fails loudly when it does not exist."""
  if not config.finetune.init_checkpoint:
    return None
  path = paths.absolute(config.finetune.init_checkpoint)
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
  if not setup.is_main_process():
    return
  ids_path = None
  if config.dataset != "synthetic":
    source = paths.join(paths.absolute(config.data_dir), f"{config.dataset}_ids.json")
    if paths.exists(source):
      files.write_text_atomic(paths.join(workdir, workdir_files.IDS_FILE), paths.read_text(source))
      ids_path = source
  files.write_json_atomic(paths.join(workdir, workdir_files.RUN_FILE), {
      "config": config.to_dict(), "dataset": config.dataset,
      "data_dir": paths.absolute(config.data_dir), "item_size": ds.item_size,
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
  baseline = comparison.sasrec_baseline(config)
  setup.log(f"compare_to_sasrec: training plain SASRec in {paths.join(workdir, workdir_files.SASREC_DIR)}")
  baseline_payload = run_one(baseline, paths.join(workdir, workdir_files.SASREC_DIR))
  table = comparison.comparison_table({"S3-Rec": payload["test"], "SASRec": baseline_payload["test"]},
                           decide_by=evaluator.early_stopping_metric(config.eval.protocol))
  setup.log(table)
  if setup.is_main_process():
    files.write_text_atomic(paths.join(paths.absolute(workdir), workdir_files.COMPARISON_FILE), table + "\n")
  return payload


def run_one(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """One run: pre-train (if asked), fine-tune, test; writes workdir/results.json atomically."""
  config_validation.validate(config)
  workdir = paths.absolute(workdir)
  t0 = time.time()
  mesh = setup.make_mesh(config)
  config_validation.validate_for_devices(config, mesh.size)
  init_checkpoint = named_init_checkpoint(config)
  # The workdir is made only once the data has loaded: bad input leaves nothing behind.
  ds = setup.load_data(config, workdir)
  paths.makedirs(workdir)
  write_run_record(config, ds, workdir)
  pretrained = None
  # One writer per phase, closed when the phase ends or fails: its last points reach the disk.
  if config.pretrain.epochs > 0:
    with setup.open_metric_writer(workdir) as writer:
      pretrained = pretraining.pretrain(config, ds, workdir, mesh, writer)
  elif not config.finetune.init_checkpoint:
    setup.log("pre-training: epochs = 0, so this run fine-tunes the "
              f"{config.model.get('encoder', 'sasrec')} encoder alone")
  with setup.open_metric_writer(workdir) as writer:
    outcome = finetuning.finetune_and_test(config, ds, workdir, mesh, init_checkpoint or pretrained, writer)
  payload = results_payload(config, outcome)
  if setup.is_main_process():
    files.write_json_atomic(paths.join(workdir, workdir_files.RESULTS_FILE), payload)
  # Timing stays out of results.json, which a resumed run must reproduce exactly.
  with setup.open_metric_writer(workdir) as writer:
    writer.write_record({"phase": "done", "wall_seconds": time.time() - t0})
  setup.log(format_table(outcome["test"], f"test metrics ({config.dataset}, {config.eval.protocol})"))
  return payload


def evaluate_best(config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, float]]:
  """Re-evaluates the best fine-tuning checkpoint of workdir under config.eval.protocol."""
  config_validation.validate(config)
  workdir = paths.absolute(workdir)
  best_dir = paths.join(workdir, workdir_files.FINETUNE_BEST_DIR)
  root, step = checkpointing.resolve(best_dir)
  mesh = setup.make_mesh(config)
  config_validation.validate_for_devices(config, mesh.size)
  ds = setup.load_data(config, workdir)
  layout = setup.item_table_layout(config, ds, mesh)
  setup.log(layout.describe())
  mcfg = model_lib.model_config(config, ds, layout=layout)
  params = train_steps.place_params(
      model_lib.init_params(mcfg, setup.base_key(config, setup.STREAM_FINETUNE_INIT)), mesh,
      mcfg.item_table_axis)
  mngr = checkpointing.manager(root, read_only=True)
  params = checkpointing.restore_params(mngr, step, params, item_size=ds.item_size)
  mngr.close()
  setup.log(f"evaluating {root}/{step} under the {config.eval.protocol} protocol")
  evaluate = evaluator.Evaluator(config, ds, data_lib.finetune_splits(ds, config.max_seq_length), mcfg,
                       mesh, config.eval.protocol)
  return {split: evaluate(params, split) for split in ("valid", "test")}


def format_table(metrics: dict[str, float], title: str) -> str:
  names = list(metrics)
  width = max(8, *(len(n) for n in names))
  header = " ".join(f"{n:>{width}}" for n in names)
  values = " ".join(f"{metrics[n]:>{width}.4f}" for n in names)
  return f"{title}\n{header}\n{values}"
