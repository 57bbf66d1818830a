"""The host batch builder alone: time per sequence as the pieces grow, and one process's share.

  python benchmarks/batch_builder.py                         # 1k, 4k, 16k sequences per device
  python benchmarks/batch_builder.py --per_device 1024,16384 --devices 4 --steps 3

A generated log (power-law sequence lengths up to --max_user_length, Zipf item popularity)
feeds the pre-training and fine-tuning builders with global batches of per_device x devices
sequences. For each size it times building a whole global batch (one process holding every
device) against building the pieces of the first half of the devices (one of two processes:
each draws and lays out only its own pieces), and prints ms per batch and microseconds per
sequence. Nothing else should run meanwhile; the CPU is printed with the figures.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s3rec_jax.core import provenance  # noqa: E402
from s3rec_jax.data import dataset as data_lib  # noqa: E402
from s3rec_jax.data import input_pipeline as ip  # noqa: E402
from s3rec_jax.data import workers  # noqa: E402


def generated_dataset(num_users: int, num_items: int, max_length: int, seed: int
                      ) -> data_lib.Dataset:
  """Power-law lengths (>= 3, a few users long), Zipf-popular items; no attributes."""
  rng = np.random.default_rng(seed)
  lengths = np.minimum(3 + rng.pareto(1.2, num_users) * 4, max_length).astype(np.int64)
  items = (rng.zipf(1.3, lengths.sum()) - 1) % num_items + 1
  offsets = np.concatenate([[0], np.cumsum(lengths)])
  return data_lib.Dataset(name="generated", user_ids=np.arange(num_users), offsets=offsets,
                          items=items.astype(np.int32), max_item=num_items, max_attr=0,
                          attr_ids=np.zeros((num_items + 2, 1), np.int32), sample_negatives=None)


def time_batches(build, steps: int) -> float:
  """Median seconds of `build(step)` over `steps` steps (after one warm-up)."""
  build(0)
  times = []
  for step in range(1, steps + 1):
    t0 = time.perf_counter()
    build(step)
    times.append(time.perf_counter() - t0)
  return float(np.median(times))


def main(argv=None) -> int:
  from absl import flags  # grain reads its absl flags   # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--per_device", default="1024,4096,16384",
                 help="comma list: sequences per device in a global batch")
  p.add_argument("--devices", type=int, default=2, help="devices (pieces) of a global batch")
  p.add_argument("--users", type=int, default=200_000)
  p.add_argument("--items", type=int, default=200_000)
  p.add_argument("--max_user_length", type=int, default=10_000)
  p.add_argument("--max_len", type=int, default=50)
  p.add_argument("--steps", type=int, default=3, help="timed batches per measurement")
  p.add_argument("--workers", default="", help="comma list of worker-process counts (e.g. "
                 "0,1,2): time fine-tuning batches built through data/workers.py, at the first "
                 "--per_device size")
  p.add_argument("--worker_steps", type=int, default=20, help="batches per worker measurement")
  args = p.parse_args(argv)
  sizes = [int(x) for x in args.per_device.split(",")]
  ds = generated_dataset(args.users, args.items, args.max_user_length, seed=0)
  splits = data_lib.finetune_splits(ds, args.max_len)
  half = args.devices // 2
  print(f"CPU: {provenance.cpu()}; {ds.num_users} users, {ds.num_interactions} interactions, "
        f"{args.devices} devices per batch")
  print("| builder | sequences per device | whole batch, ms | per sequence, us | "
        f"{half} of {args.devices} devices' pieces, ms | share |")
  print("| --- | --- | --- | --- | --- | --- |")
  for per_device in sizes:
    batch = per_device * args.devices
    for name in ("pretrain", "finetune"):
      timed = {}
      for label, shards in (("all", ip.Shards(args.devices, 0, args.devices)),
                            ("half", ip.Shards(args.devices, 0, half))):
        if name == "pretrain":
          builder = ip.PretrainBatches(ds, ip.PretrainSettings(batch, args.max_len, 0.2,
                                                               ds.mask_id), 0, shards)
          order, count = builder.order(0), builder.num_sequences
        else:
          builder = ip.FinetuneBatches(ds, splits, batch, ds.max_item, 0, True, shards)
          order, count = builder.order(0), len(builder.inputs)
        rows = builder.num_rows if count >= batch * 4 else None

        def build(step, builder=builder, order=order):
          start = (step * batch) % max(count - batch, 1)
          return builder.batch(order[start:start + batch], 0, rows)

        timed[label] = time_batches(build, args.steps)
      print(f"| {name} | {per_device} | {timed['all'] * 1e3:.1f} | "
            f"{timed['all'] / batch * 1e6:.2f} | {timed['half'] * 1e3:.1f} | "
            f"{timed['half'] / timed['all']:.2f} |")
  if args.workers:
    per_device = sizes[0]
    batch = per_device * args.devices
    builder = ip.FinetuneBatches(ds, splits, batch, ds.max_item, 0, True,
                                 ip.Shards(args.devices, 0, args.devices))
    steps = min(builder.steps_per_epoch, args.worker_steps + 1)
    print(f"\n| worker processes | fine-tuning batches of {batch} | sequences/s "
          "(after the first batch) | first batch, s |")
    print("| --- | --- | --- | --- |")
    for count in (int(w) for w in args.workers.split(",")):
      builder.workers = count
      t0 = time.perf_counter()
      first = None
      for i, _ in enumerate(workers.epoch_batches(builder, 0, builder.steps_per_epoch - steps,
                                                  count)):
        if i == 0:
          first = time.perf_counter()
      rate = (steps - 1) * batch / (time.perf_counter() - first)
      print(f"| {count} | {steps - 1} | {rate:,.0f} | {first - t0:.2f} |")
  print("\ncommand: python benchmarks/batch_builder.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
