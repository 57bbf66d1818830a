"""What both phases set up from the config: data, mesh, objectives, keys, the log."""

from __future__ import annotations

import os
import sys

import jax
import ml_collections
import numpy as np
from tqdm import tqdm

from s3rec_jax.core import parallel
from s3rec_jax.data import dataset as data_lib
from s3rec_jax.data import fetch
from s3rec_jax.data import input_pipeline
from s3rec_jax.data import workers as workers_lib
from s3rec_jax.model import encoder_registry
from s3rec_jax.model import item_table as item_table_lib
from s3rec_jax import objectives as objectives_lib
from s3rec_jax.training import config_validation
from s3rec_jax.training import metric_writers
from s3rec_jax.training import steps as train_steps


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
  if not os.path.exists(os.path.join(config.data_dir, f"{config.dataset}.txt")):
    hint = fetch.missing_hint(config.dataset, config.data_dir)
    if hint is not None:   # one of the public datasets: say which command fetches it
      raise data_lib.DataError(hint)
  needs_samples = config.eval.protocol == "sampled"
  ds = data_lib.load_dataset(config.data_dir, config.dataset, sample_dir=workdir,
                             num_negatives=config.sample.num_negatives,
                             sample_seed=config.sample.seed, need_samples=needs_samples, log=log,
                             require_dense_ids=True, cache=True)
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


def data_workers(config: ml_collections.ConfigDict, mesh) -> int:
  """config.data_workers, with -1 resolved to the cores the process can spare."""
  count = config.get("data_workers", -1)
  return workers_lib.auto_workers(mesh.devices.flat[0].platform) if count < 0 else count


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
  if encoder_registry.packs(config):
    mean_length = data_lib.PrefixRanges(ds, config.max_seq_length).mean_length()
    # Packing fills about 90% of a row's slots.
    rows = per_device * mean_length / (0.9 * config.max_seq_length)
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
      settings=objectives_lib.settings_tuple(config.settings.to_dict()),
      targets=config.finetune.get("targets", "all_positions"),
      encoder=config.model.get("encoder", "sasrec"))


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
