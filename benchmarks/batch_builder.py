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


def _builders(args, ds, splits, batch, shards):
  pre = ip.PretrainBatches(ds, ip.PretrainSettings(batch, args.max_len, 0.2, ds.mask_id), 0,
                           shards)
  fine = ip.FinetuneBatches(ds, splits, batch, ds.max_item, 0, True, shards)
  return {"pretrain": (pre, pre.order(0), pre.num_sequences),
          "finetune": (fine, fine.order(0), len(fine.inputs))}


def _time_builder(builder, order, count, batch, steps):
  rows = builder.num_rows if count >= batch * 4 else None

  def build(step):
    start = (step * batch) % max(count - batch, 1)
    return builder.batch(order[start:start + batch], 0, rows)

  return time_batches(build, steps)


def _one_process(args) -> int:
  """A child of --processes: joins the runtime, builds its pieces, prints its times.

  The processes take turns (a barrier between turns): on a host with fewer cores than the
  processes would have on their own hosts, timing them at once would measure the sharing of
  the cores, not each process's work."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  from s3rec_jax.core import parallel  # pylint: disable=g-import-not-at-top
  parallel.initialize_distributed(args.coordinator, args.processes, args.process_id)
  mesh = parallel.make_mesh()
  shards = ip.Shards(*parallel.local_shards(mesh))
  ds = generated_dataset(args.users, args.items, args.max_user_length, seed=0)
  splits = data_lib.finetune_splits(ds, args.max_len)
  for per_device in (int(x) for x in args.per_device.split(",")):
    batch = per_device * args.devices
    for name, (builder, order, count) in _builders(args, ds, splits, batch, shards).items():
      for turn in range(args.processes):
        if turn == jax.process_index():
          seconds = _time_builder(builder, order, count, batch, args.steps)
          print(f"process {turn}: {name} {per_device} {seconds:.6f} {shards.num_local}",
                flush=True)
        multihost_utils.sync_global_devices(f"{name} {per_device} {turn}")
  return 0


def _processes(args, sizes, argv) -> None:
  """Runs --processes children and one process holding every device, and compares."""
  import socket  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  with socket.socket() as sock:
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
  base = [sys.executable, os.path.abspath(__file__), "--per_device", args.per_device,
          "--users", str(args.users), "--items", str(args.items), "--max_user_length",
          str(args.max_user_length), "--max_len", str(args.max_len), "--steps", str(args.steps),
          "--devices", str(args.devices), "--processes", str(args.processes)]

  def env(devices):
    flags_ = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                      if "host_platform_device_count" not in f)
    return dict(os.environ, XLA_FLAGS=f"{flags_} --xla_force_host_platform_device_count="
                f"{devices}", JAX_PLATFORMS="cpu")

  def collect(procs):
    times = {}
    for proc in procs:
      out, err = proc.communicate(timeout=3600)
      if proc.returncode:
        raise SystemExit(f"a builder process failed:\n{err[-3000:]}")
      for line in out.splitlines():
        if line.startswith("process "):
          pid, name, size, seconds, local = line.split()[1:]
          times[(int(pid.rstrip(":")), name, int(size))] = (float(seconds), int(local))
    return times

  one = collect([subprocess.Popen(
      base[:-2] + ["--processes", "1", "--process_id", "0", "--coordinator",
                   f"127.0.0.1:{port}"], env=env(args.devices), stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True)])
  many = collect([subprocess.Popen(
      base + ["--process_id", str(i), "--coordinator", f"127.0.0.1:{port}"],
      env=env(args.devices // args.processes), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(args.processes)])
  print(f"\n| builder | sequences per device | 1 process, {args.devices} devices: ms | "
        + " | ".join(f"process {i} of {args.processes}: ms" for i in range(args.processes))
        + " | share |")
  print("| --- | --- | --- | " + " | ".join("---" for _ in range(args.processes)) + " | --- |")
  for per_device in sizes:
    for name in ("pretrain", "finetune"):
      whole = one[(0, name, per_device)][0]
      parts = [many[(i, name, per_device)][0] for i in range(args.processes)]
      print(f"| {name} | {per_device} | {whole * 1e3:.1f} | "
            + " | ".join(f"{t * 1e3:.1f}" for t in parts)
            + f" | {max(parts) / whole:.2f} |")


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
  p.add_argument("--processes", type=int, default=0,
                 help="also run this many real processes on 127.0.0.1 (JAX's distributed "
                      "runtime, --devices split among them): each builds its own devices' "
                      "pieces, timed in the process")
  p.add_argument("--process_id", type=int, default=-1, help=argparse.SUPPRESS)
  p.add_argument("--coordinator", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.process_id >= 0:
    return _one_process(args)
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
  if args.processes:
    _processes(args, sizes, argv)
  print("\ncommand: python benchmarks/batch_builder.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
