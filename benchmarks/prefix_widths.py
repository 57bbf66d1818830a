"""Prefix training on whole rows against rows trimmed of their padding (finetune.trim_padding).

  python benchmarks/prefix_widths.py --dataset Beauty --devices 2 --steps 40 --rounds 2

The fine-tuning step of the tvrec encoder trained on prefixes (TV-Rec's Beauty settings: 2
layers, hidden 64, batch 256, L 50, full-softmax ce with the fused CPU kernel), on the same batches of the epoch's order, whole rows and trimmed, alternating rounds so the
machine's drift hits both alike. Prints the groups the dataset's lengths give, the median
seconds per step of each (the batches built and placed beforehand: the device step alone),
the host's seconds to build a batch each way, the estimated seconds of an epoch, and the
largest difference of the two steps' losses (the same step up to float rounding). Then the
command and the machine.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time

from s3rec_jax.core import parallel as _parallel  # noqa: E402  (no op runs yet)
from s3rec_jax.data import fetch  # noqa: E402  (no JAX)

_parallel.force_host_devices_from_argv(sys.argv[1:])  # --devices N, before JAX starts

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gauges  # noqa: E402  (benchmarks/gauges.py)
from s3rec_jax.configs import default as default_config  # noqa: E402
from s3rec_jax.core import parallel  # noqa: E402
from s3rec_jax.data import dataset as data_lib  # noqa: E402
from s3rec_jax.data import input_pipeline as ip  # noqa: E402
from s3rec_jax.data import prefix_widths  # noqa: E402
from s3rec_jax.model import encoder as model_lib  # noqa: E402
from s3rec_jax.training import setup  # noqa: E402
from s3rec_jax.training import steps as train_steps  # noqa: E402


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="Beauty", help="NAME of NAME.txt in --data_dir, or "
                 "synthetic (built in)")
  p.add_argument("--data_dir", default=fetch.default_data_dir())
  p.add_argument("--devices", type=int, default=0, help="CPU host devices (0: as found)")
  p.add_argument("--steps", type=int, default=40, help="timed steps per round")
  p.add_argument("--rounds", type=int, default=2)
  p.add_argument("--batch_size", type=int, default=256)
  return p.parse_args(argv)


def make_config(args):
  config = default_config.get_config()
  config.dataset, config.data_dir = args.dataset, args.data_dir
  config.finetune.batch_size = args.batch_size
  config.model.encoder = "tvrec"   # the encoder that declares trims_padding
  config.finetune.loss, config.finetune.targets = "ce", "last_of_prefixes"
  config.finetune.prefix_min_items = 1
  config.settings.next_item.ce_method = "fused_cpu"
  # TV-Rec's Beauty settings (experiments/leaderboard.py).
  config.settings.tvrec.basis_size = 32
  config.settings.next_item.padding_class = True
  return config


def main(argv) -> int:
  args = parse_args(argv)
  config = make_config(args)
  ds = (data_lib.synthetic_dataset() if args.dataset == "synthetic" else
        data_lib.load_dataset(args.data_dir, args.dataset, need_samples=False))
  mesh = parallel.make_mesh()
  shards = ip.Shards(*parallel.local_shards(mesh))
  mcfg = model_lib.model_config(config, ds)
  objectives = setup.finetune_objectives(config)
  options = setup.objective_options(config, ds)
  tx = train_steps.make_optimizer(1e-3, 0.9, 0.999)
  params = jax.tree_util.tree_map(
      np.asarray, model_lib.init_params(mcfg, jax.random.key(0)))
  step = train_steps.make_train_step(mcfg, objectives, options, tx, mesh, phase="finetune")
  common = dict(batch_size=config.finetune.batch_size, max_len=config.max_seq_length,
                negative_high=ds.max_item, seed=0, shards=shards, min_items=1)
  whole = ip.PrefixBatches(ds, **common)
  trimmed = ip.PrefixBatches(ds, **common, trim_padding=True)
  print(f"{args.dataset}: {whole.num_samples} prefix samples an epoch, {whole.steps_per_epoch} "
        f"steps; groups {prefix_widths.describe(trimmed.groups, config.max_seq_length)}",
        flush=True)
  count = args.steps + 1
  build = {}
  batches = {}
  for name, builder in (("whole", whole), ("trimmed", trimmed)):
    start = time.perf_counter()
    host = [builder.batch_at(0, s) for s in range(count)]
    build[name] = (time.perf_counter() - start) / count
    batches[name] = [parallel.shard_batch(b, mesh) for b in host]
  misfits = sum(isinstance(b, dict) for b in (trimmed.batch_at(0, s) for s in range(count)))

  def run(name):
    state = train_steps.create_state(params, tx, mesh)
    losses, times = [], []
    for s, batch in enumerate(batches[name]):
      start = time.perf_counter()
      state, out = step(state, batch, {}, jax.random.key(s))
      losses.append(float(out["loss"]))   # waits for the step
      if s:   # the first compiles
        times.append(time.perf_counter() - start)
    return losses, statistics.median(times)

  seconds = {"whole": [], "trimmed": []}
  losses = {}
  for round_ in range(args.rounds):
    for name in seconds:
      losses[name], median = run(name)
      seconds[name].append(median)
      print(f"round {round_ + 1}, {name}: {median * 1000:.1f} ms a step", flush=True)
  med = {k: statistics.median(v) for k, v in seconds.items()}
  diff = max(abs(a - b) / abs(a) for a, b in zip(losses["whole"], losses["trimmed"]))
  print()
  print("| rows | ms a step | host ms a batch | epoch (steps alone) |")
  print("| --- | --- | --- | --- |")
  for name in ("whole", "trimmed"):
    print(f"| {name} | {med[name] * 1000:.1f} | {build[name] * 1000:.1f} | "
          f"{med[name] * whole.steps_per_epoch:.0f} s |")
  print(f"\ntrimmed / whole step time: {med['trimmed'] / med['whole']:.2f} "
        f"({med['whole'] / med['trimmed']:.2f}x faster); largest relative loss difference over "
        f"{count} steps: {diff:.1e}; batches that did not fit the groups: {misfits} of {count}")
  print(f"command: python benchmarks/prefix_widths.py {shlex.join(argv)}")
  print(f"machine: {gauges.cpu_model()}, {mesh.size} x {jax.devices()[0].platform} device(s)")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
