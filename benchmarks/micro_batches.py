"""Pre-training speed with different micro-batch counts, timed in interleaved windows.

  python benchmarks/micro_batches.py --dataset Beauty --devices 2 --micro_batches 1,2 --rounds 6

A shared machine's speed drifts within seconds, so comparing two separate
runs of speed.py says little about a 10-20% difference. This script compiles
the packed pre-training step for every micro-batch count given, then times
windows of --steps steps for each count in turn, --rounds times, in one
process, as train.py runs them (each window builds its batches on a
background thread, with at most two steps in flight). It prints every window's sequences/s and each
count's median, then the command to reproduce.
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

from s3rec_jax import input_pipeline  # noqa: E402
from s3rec_jax import model as model_lib  # noqa: E402
from s3rec_jax import objectives as objectives_lib  # noqa: E402
from s3rec_jax import parallel  # noqa: E402
from s3rec_jax import train_lib  # noqa: E402
from s3rec_jax import train_steps  # noqa: E402


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="Beauty", help="NAME of NAME.txt in --data_dir, or synthetic")
  p.add_argument("--data_dir", default="../shared/data")
  p.add_argument("--devices", type=int, default=0, help="as in speed.py")
  p.add_argument("--micro_batches", default="1,2", help="comma list of counts to compare")
  p.add_argument("--steps", type=int, default=80, help="steps per timed window")
  p.add_argument("--rounds", type=int, default=6, help="windows per count")
  args = p.parse_args(argv)
  try:
    args.counts = [int(x) for x in args.micro_batches.split(",") if x.strip()]
  except ValueError:
    p.error(f"--micro_batches: expected a comma list of integers, got {args.micro_batches!r}")
  if not args.counts or min(args.counts) < 1 or args.steps < 1 or args.rounds < 1:
    p.error("--micro_batches needs counts >= 1; --steps and --rounds must be >= 1")
  return args


def main(argv) -> int:
  args = parse_args(argv)
  ds = speed.load_dataset(args)
  config = speed.make_config(argparse.Namespace(dataset=args.dataset, data_dir=args.data_dir,
                                                form="reference", micro_batches=0))
  mesh = parallel.make_mesh(speed.pick_devices(args.devices))
  pc = config.pretrain
  objectives = objectives_lib.resolve(pc.objectives.to_dict(), pc.form)
  mcfg = train_lib.model_config(config, ds, head_names=tuple(o.name for o, _ in objectives))
  options = objectives_lib.ObjectiveOptions(mask_id=ds.mask_id, num_items=ds.max_item)
  tx = train_steps.make_optimizer(pc.learning_rate, pc.adam_b1, pc.adam_b2, pc.weight_decay)
  state = train_steps.create_state(model_lib.init_params(mcfg, jax.random.key(config.seed)), tx,
                                   mesh)
  tables = parallel.replicate({"attr_ids": ds.attr_ids}, mesh)
  key = jax.device_put(jax.random.key(config.seed + 1), parallel.replicated(mesh))
  auto, why = train_lib.pretrain_micro_batches(config, ds, mesh, objectives)
  speed.say(f"dataset {args.dataset}; {mesh.size} x {mesh.devices.flat[0].platform} devices; "
            f"automatic choice: {auto} ({why})")

  runs = {}
  for count in args.counts:
    batches = input_pipeline.PretrainBatches(ds, speed.pretrain_settings(config, ds, True),
                                             config.seed, shards=train_lib.shards(mesh, count))
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
      train_lib.bound_in_flight(pending)
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
  command = ["python", "benchmarks/micro_batches.py", "--dataset", args.dataset, "--data_dir",
             args.data_dir, "--devices", str(args.devices), "--micro_batches", args.micro_batches,
             "--steps", str(args.steps), "--rounds", str(args.rounds)]
  speed.say("reproduce: " + " ".join(shlex.quote(c) for c in command))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
