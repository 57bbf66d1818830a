"""Training with a large catalogue: the item table replicated vs sharded by rows.

  python benchmarks/large_catalogue_training.py --items 1000000 --devices_list 1,2,4

For each device count and item-table layout (model.item_table), and each
phase (pre-training with the reference's four objectives; fine-tuning with
the bce and the ce next-item loss), one fresh process builds a synthetic
catalogue of --items items, compiles the phase's step with the reference's
settings (configs/default.py: pre-training batch 100, fine-tuning batch
256, L 50, hidden 64) and prints:

- the median seconds of --steps timed steps (after one untimed step),
- the process's peak RSS (all devices of a CPU host share its memory),
- XLA's per-device argument + temporary buffer sizes of the compiled step.

A sharded layout on one device is the replicated one, so it is skipped.
Then a markdown table, the command to reproduce and the machine.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys

from s3rec_jax.core import parallel as _parallel  # noqa: E402  (imports jax; no op runs yet)

_parallel.force_host_devices_from_argv(sys.argv[1:])  # --devices N, before JAX starts

# pylint: disable=wrong-import-position
import statistics  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from s3rec_jax.configs import default as default_config  # noqa: E402
import gauges  # noqa: E402  (benchmarks/gauges.py)
from s3rec_jax.core import parallel  # noqa: E402
from s3rec_jax.data import dataset as data_lib  # noqa: E402
from s3rec_jax.data import input_pipeline  # noqa: E402
from s3rec_jax.model import encoder as model_lib  # noqa: E402
from s3rec_jax import objectives as objectives_lib  # noqa: E402
from s3rec_jax.training import setup  # noqa: E402
from s3rec_jax.training import steps as train_steps  # noqa: E402

PHASES = ("pretrain", "bce", "ce")


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--items", type=int, default=1_000_000)
  p.add_argument("--users", type=int, default=4096)
  p.add_argument("--attributes", type=int, default=1000)
  p.add_argument("--devices_list", default="1,2,4")
  p.add_argument("--layouts", default="replicated,sharded")
  p.add_argument("--phases", default=",".join(PHASES))
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--ce_steps", type=int, default=1,
                 help="timed steps of ce (a 1M-item ce step takes tens of seconds on a CPU)")
  p.add_argument("--seed", type=int, default=0)
  # One measurement in this process (what the parent runs for each cell).
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--devices", type=int, default=0, help=argparse.SUPPRESS)
  p.add_argument("--layout", default="replicated", help=argparse.SUPPRESS)
  p.add_argument("--phase", default="pretrain", help=argparse.SUPPRESS)
  return p.parse_args(argv)


def catalogue(args) -> data_lib.Dataset:
  """Users with 5-50 items drawn uniformly from 1..items (the last one is `items`, so the
  catalogue is exactly that size), each item with one attribute."""
  rng = np.random.default_rng(args.seed)
  lengths = rng.integers(5, 51, size=args.users)
  offsets = np.zeros(args.users + 1, np.int64)
  np.cumsum(lengths, out=offsets[1:])
  items = rng.integers(1, args.items + 1, size=int(offsets[-1]), dtype=np.int32)
  items[-1] = args.items
  attr_ids = np.zeros((args.items + 2, 1), np.int32)
  attr_ids[1:args.items + 1, 0] = rng.integers(1, args.attributes + 1, size=args.items)
  return data_lib.Dataset(name="synthetic", user_ids=np.arange(1, args.users + 1),
                          offsets=offsets, items=items, max_item=args.items,
                          max_attr=args.attributes, attr_ids=attr_ids, sample_negatives=None)


def measure(args) -> dict:
  """One (devices, layout, phase) cell, in this process."""
  t0 = time.perf_counter()
  config = default_config.get_config()
  config.model.item_table = args.layout
  ds = catalogue(args)
  mesh = parallel.make_mesh()
  layout = setup.item_table_layout(config, ds, mesh)
  pretraining = args.phase == "pretrain"
  if pretraining:
    pc = config.pretrain
    objectives = objectives_lib.resolve(pc.objectives.to_dict(), pc.form)
    mcfg = model_lib.model_config(config, ds, objectives_lib.head_names(objectives), layout)
    micro, _ = setup.pretrain_micro_batches(config, ds, mesh, objectives)
    batches = input_pipeline.PretrainBatches(
        ds, input_pipeline.PretrainSettings(pc.batch_size, config.max_seq_length, pc.mask_p,
                                            setup.negative_high(config, ds),
                                            config.pack_sequences),
        config.seed, setup.shards(mesh, micro))
    tx = train_steps.make_optimizer(pc.learning_rate, pc.adam_b1, pc.adam_b2)
    step_fn = train_steps.make_pretrain_step(mcfg, objectives, setup.objective_options(
        config, ds), tx, mesh, micro)
    tables = parallel.replicate({"attr_ids": ds.attr_ids}, mesh)
  else:
    fc = config.finetune
    mcfg = model_lib.model_config(config, ds, layout=layout)
    splits = data_lib.finetune_splits(ds, config.max_seq_length)
    batches = input_pipeline.FinetuneBatches(ds, splits, fc.batch_size,
                                             setup.negative_high(config, ds), config.seed,
                                             config.pack_sequences, setup.shards(mesh))
    objectives = objectives_lib.resolve({"next_item": 1.0}, {"next_item": args.phase},
                                        phase="finetune")
    tx = train_steps.make_optimizer(fc.learning_rate, fc.adam_b1, fc.adam_b2)
    step_fn = train_steps.make_finetune_step(mcfg, tx, mesh, objectives,
                                             setup.objective_options(config, ds))
    tables = {}
  state = train_steps.create_state(model_lib.init_params(mcfg, jax.random.key(args.seed)), tx,
                                   mesh, mcfg.item_table_axis)
  # Packed batches come in a few shapes: time those of the most common one (one program).
  wanted = (args.ce_steps if args.phase == "ce" else args.steps) + 1
  by_shape = {}
  for i, batch in enumerate(batches.epoch(0)):
    by_shape.setdefault(tuple(sorted((k, v.shape) for k, v in batch.items())), []).append(batch)
    if i >= 8 * wanted:
      break
  host = max(by_shape.values(), key=len)[:wanted]
  repl = parallel.replicated(mesh)
  key = jax.device_put(jax.random.key(1), repl)
  setup_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, parallel.shard_batch(host[0], mesh), tables, key).compile()
  compile_s = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  times, losses = [], []
  for batch in host:
    placed = parallel.shard_batch(batch, mesh)
    jax.block_until_ready(placed)
    t0 = time.perf_counter()
    state, out = compiled(state, placed, tables, key)
    jax.block_until_ready((state, out))
    times.append(time.perf_counter() - t0)
    losses.append(float(out["loss"]))
  return {"devices": mesh.size, "layout": args.layout, "phase": args.phase,
          "chosen": layout.describe(), "step_s": statistics.median(times[1:] or times),
          "steps_timed": len(times[1:] or times), "peak_rss_gib": gauges.peak_rss_gib(),
          "xla_argument_mib": memory.argument_size_in_bytes / 2**20 if memory else None,
          "xla_temp_mib": memory.temp_size_in_bytes / 2**20 if memory else None,
          "compile_s": compile_s, "setup_s": setup_s, "loss_first": losses[0],
          "loss_last": losses[-1], "finite": all(np.isfinite(losses))}


def reproduce_command(args) -> str:
  parts = ["python", "benchmarks/large_catalogue_training.py", "--items", str(args.items),
           "--users", str(args.users), "--devices_list", args.devices_list, "--layouts",
           args.layouts, "--phases", args.phases, "--steps", str(args.steps), "--ce_steps",
           str(args.ce_steps)]
  return " ".join(shlex.quote(p) for p in parts)


def main(argv) -> int:
  args = parse_args(argv)
  if args.worker:
    print(json.dumps(measure(args)), flush=True)
    return 0
  cells = [(d, layout, phase) for d in map(int, args.devices_list.split(","))
           for layout in args.layouts.split(",") for phase in args.phases.split(",")
           if not (d == 1 and layout == "sharded")]
  print(f"{args.items:,} items, {args.users:,} users; {len(cells)} cells, one process each",
        flush=True)
  rows = []
  for devices, layout, phase in cells:
    command = [sys.executable, os.path.abspath(__file__), *argv, "--worker", "--devices",
               str(devices), "--layout", layout, "--phase", phase]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
      print(f"{devices} device(s), {layout}, {phase}: failed\n{done.stderr[-2000:]}", flush=True)
      rows.append({"devices": devices, "layout": layout, "phase": phase, "failed": True})
      continue
    row = json.loads(done.stdout.strip().splitlines()[-1])
    rows.append(row)
    print(f"{devices} device(s), {layout:10s} {phase:8s}: step {row['step_s']:.3f} s "
          f"(median of {row['steps_timed']}), peak RSS {row['peak_rss_gib']:.2f} GiB, XLA "
          f"{row['xla_argument_mib']:.0f} MiB args + {row['xla_temp_mib']:.0f} MiB temp per "
          f"device, compile {row['compile_s']:.1f} s, loss {row['loss_first']:.4f} -> "
          f"{row['loss_last']:.4f}; {row['chosen']}", flush=True)
  print("\n| devices | item table | phase | step (s) | peak RSS (GiB) |")
  print("|---|---|---|---|---|")
  for row in rows:
    if row.get("failed"):
      print(f"| {row['devices']} | {row['layout']} | {row['phase']} | failed | |")
    else:
      print(f"| {row['devices']} | {row['layout']} | {row['phase']} | {row['step_s']:.3f} | "
            f"{row['peak_rss_gib']:.2f} |")
  print(f"\nreproduce: {reproduce_command(args)}")
  print(f"machine: {gauges.cpu_model()}, {os.cpu_count()} cores, jax {jax.__version__}")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
