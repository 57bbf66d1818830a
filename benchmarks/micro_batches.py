"""Pre-training speed with different micro-batch counts, timed in interleaved windows.

  python benchmarks/micro_batches.py --dataset Beauty --devices 2 --micro_batches 1,2 --rounds 6

A shared machine's speed drifts within seconds, so comparing two separate
runs of speed.py says little about a 10-20% difference. This script compiles
the packed pre-training step for every micro-batch count given, then times
windows of --steps steps for each count in turn, --rounds times, in one
process, as train.py runs them (each window builds its batches on a
background thread, with at most two steps in flight). It prints every window's sequences/s and each
count's median, then the command to reproduce.

With --row_counts R1,R2,... it instead sweeps the step's size: for each R,
the first batches of the epoch that fit are packed on exactly R rows per
device (one pass per step) and the device time of a step is timed on them,
which shows how the step's time grows with the rows a device holds:

  python benchmarks/micro_batches.py --dataset Beauty --devices 2 --row_counts 8,9,10,12,16
"""

import argparse
import os
import shlex
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import speed  # noqa: E402  (forces --devices host devices before JAX starts)

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import numpy as np  # noqa: E402

from s3rec_jax.core import parallel  # noqa: E402
from s3rec_jax.data import fetch  # noqa: E402
from s3rec_jax.data import input_pipeline  # noqa: E402
from s3rec_jax.model import encoder as model_lib  # noqa: E402
from s3rec_jax import objectives as objectives_lib  # noqa: E402
from s3rec_jax.training import setup  # noqa: E402
from s3rec_jax.training import steps as train_steps  # noqa: E402


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="Beauty", help="NAME of NAME.txt in --data_dir, or synthetic")
  p.add_argument("--data_dir", default=fetch.default_data_dir())
  p.add_argument("--devices", type=int, default=0, help="as in speed.py")
  p.add_argument("--micro_batches", default="1,2", help="comma list of counts to compare")
  p.add_argument("--steps", type=int, default=80, help="steps per timed window")
  p.add_argument("--rounds", type=int, default=6, help="windows per count")
  p.add_argument("--row_counts", default="",
                 help="comma list of rows per device: sweep the step's size instead")
  args = p.parse_args(argv)
  try:
    args.counts = [int(x) for x in args.micro_batches.split(",") if x.strip()]
  except ValueError:
    p.error(f"--micro_batches: expected a comma list of integers, got {args.micro_batches!r}")
  try:
    args.rows = [int(x) for x in args.row_counts.split(",") if x.strip()]
  except ValueError:
    p.error(f"--row_counts: expected a comma list of integers, got {args.row_counts!r}")
  if not args.counts or min(args.counts) < 1 or args.steps < 1 or args.rounds < 1:
    p.error("--micro_batches needs counts >= 1; --steps and --rounds must be >= 1")
  if args.rows and min(args.rows) < 1:
    p.error("--row_counts must be >= 1")
  return args


def row_sweep(args, ds, config, mesh, state, tables, key, step_fn) -> None:
  """Device time of one-pass steps on batches packed on exactly R rows per device."""
  batches = input_pipeline.PretrainBatches(ds, speed.pretrain_settings(config, ds, True),
                                           config.seed, shards=setup.shards(mesh))
  order, size = batches.order(0), config.pretrain.batch_size
  for rows in args.rows:
    fitting = []
    for s in range(batches.steps_per_epoch):
      ids = order[s * size:(s + 1) * size]
      lengths = np.concatenate([batches.lengths[ids], np.zeros(size - len(ids), np.int64)])
      if batches.packer.rows_needed(lengths, batches.shards) > rows:
        continue                # this batch needs more rows
      fitting.append(batches.batch(ids, 0, num_rows=rows))
      if len(fitting) == 10:
        break
    if not fitting:
      speed.say(f"{rows} rows per device: no batch of the epoch fits")
      continue
    placed = [parallel.shard_batch(b, mesh) for b in fitting]
    compiled = step_fn.lower(state, placed[0], tables, key).compile()
    times = []
    for repeat in range(4):     # the first repeat warms up
      t0 = time.perf_counter()
      for i in range(args.steps):
        state, out = compiled(state, placed[i % len(placed)], tables, key)
        jax.block_until_ready(out)
      if repeat:
        times.append((time.perf_counter() - t0) / args.steps)
    speed.say(f"{rows} rows per device: {1e3 * statistics.median(times):.1f} ms per step "
              f"(median of 3 x {args.steps} steps over {len(fitting)} batches)")


def main(argv) -> int:
  args = parse_args(argv)
  ds = speed.load_dataset(args)
  config = speed.make_config(argparse.Namespace(dataset=args.dataset, data_dir=args.data_dir,
                                                form="reference", micro_batches=0))
  mesh = parallel.make_mesh(speed.pick_devices(args.devices))
  pc = config.pretrain
  objectives = objectives_lib.resolve(pc.objectives.to_dict(), pc.form)
  mcfg = model_lib.model_config(config, ds, head_names=tuple(o.name for o, _ in objectives))
  options = objectives_lib.ObjectiveOptions(mask_id=ds.mask_id, num_items=ds.max_item)
  tx = train_steps.make_optimizer(pc.learning_rate, pc.adam_b1, pc.adam_b2, pc.weight_decay)
  state = train_steps.create_state(model_lib.init_params(mcfg, jax.random.key(config.seed)), tx,
                                   mesh)
  tables = parallel.replicate({"attr_ids": ds.attr_ids}, mesh)
  key = jax.device_put(jax.random.key(config.seed + 1), parallel.replicated(mesh))
  auto, why = setup.pretrain_micro_batches(config, ds, mesh, objectives)
  speed.say(f"dataset {args.dataset}; {mesh.size} x {mesh.devices.flat[0].platform} devices; "
            f"automatic choice: {auto} ({why})")

  if args.rows:
    row_sweep(args, ds, config, mesh, state, tables, key,
              train_steps.make_pretrain_step(mcfg, objectives, options, tx, mesh))
    speed.say("reproduce: " + command_line(args))
    return 0

  runs = {}
  for count in args.counts:
    batches = input_pipeline.PretrainBatches(ds, speed.pretrain_settings(config, ds, True),
                                             config.seed, shards=setup.shards(mesh, count))
    step_fn = train_steps.make_pretrain_step(mcfg, objectives, options, tx, mesh, count)
    steps = speed.CompiledSteps(step_fn, mesh, lambda b: (state, b, tables, key))
    for batch in speed.pretrain_stream(batches, range(args.steps)):
      steps(batch)              # compile every shape before timing
    runs[count] = (batches, steps)

  def window(count: int) -> float:
    nonlocal state
    batches, steps = runs[count]
    pending = []
    t0 = time.perf_counter()
    for batch in input_pipeline.prefetch(speed.pretrain_stream(batches, range(args.steps))):
      state, out = steps(batch)(state, parallel.shard_batch(batch, mesh), tables, key)
      pending.append(out)
      parallel.bound_in_flight(pending)
    jax.block_until_ready((state, pending))
    return args.steps * pc.batch_size / (time.perf_counter() - t0)

  for count in args.counts:     # one untimed window each
    window(count)
  rates = {count: [] for count in args.counts}
  for _ in range(args.rounds):
    for count in args.counts:
      rates[count].append(window(count))
  for count, values in rates.items():
    speed.say(f"micro-batches {count}: median {statistics.median(values):.0f} seq/s; windows "
              + " ".join(f"{v:.0f}" for v in values))
  speed.say("reproduce: " + command_line(args))
  return 0


def command_line(args) -> str:
  command = ["python", "benchmarks/micro_batches.py", "--dataset", args.dataset, "--data_dir",
             args.data_dir, "--devices", str(args.devices), "--steps", str(args.steps)]
  if args.rows:
    command += ["--row_counts", args.row_counts]
  else:
    command += ["--micro_batches", args.micro_batches, "--rounds", str(args.rounds)]
  return " ".join(shlex.quote(c) for c in command)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
