"""bfloat16 compute against float32 in one process: pre-training seq/s and a fine-tuning epoch.

  python benchmarks/mixed_precision.py --dataset Beauty --devices 2 --steps 30 \\
      --finetune_losses bce,ce

Both dtypes run the same batches from the same start, alternating (float32,
bfloat16, float32, bfloat16) so that the machine's drift hits both alike; the
ratios are of the medians. On a CPU without native bfloat16 (AVX2 only) XLA
emulates it and bfloat16 may be slower: the option is for accelerators. The
CPU's model and flags are printed with the figures.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("speed", os.path.join(HERE, "speed.py"))
speed = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(speed)  # sets the host devices before JAX starts, as speed.py does

from s3rec_jax.data import dataset as data_lib  # noqa: E402
from s3rec_jax.data import fetch  # noqa: E402


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--dataset", default="Beauty")
  p.add_argument("--data_dir", default=fetch.default_data_dir())
  p.add_argument("--devices", type=int, default=0)
  p.add_argument("--steps", type=int, default=30, help="timed pre-training steps per round")
  p.add_argument("--warmup", type=int, default=3)
  p.add_argument("--rounds", type=int, default=2, help="alternating rounds per dtype")
  p.add_argument("--finetune_losses", default="bce,ce")
  args = p.parse_args(argv)
  # What speed.py's helpers read.
  args.form, args.micro_batches, args.ce_chunk_size = "reference", 0, 0
  return args


def cpu_flags() -> str:
  """The vector extensions bfloat16 speed depends on, as /proc/cpuinfo lists them."""
  try:
    with open("/proc/cpuinfo") as f:
      have = set(next((l.split(":", 1)[1].split() for l in f if l.startswith("flags")), []))
  except OSError:
    return "flags unknown"
  found = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in have]
  return ", ".join(found) or "none of avx2, avx512f, avx512_bf16, amx_bf16"


def main(argv) -> int:
  args = parse_args(argv)
  ds = speed.load_dataset(args)
  mesh = speed.parallel.make_mesh(speed.pick_devices(args.devices))
  splits = data_lib.finetune_splits(ds, 50)
  speed.say(f"CPU: {speed.gauges.cpu_model()} ({cpu_flags()}); {mesh.size} x {mesh.devices.flat[0].platform} device(s); "
            f"dataset {args.dataset}")
  seq_per_s = {"float32": [], "bfloat16": []}
  epoch_s = {(d, f): [] for d in seq_per_s for f in args.finetune_losses.split(",")}
  for round_ in range(args.rounds):
    for dtype in seq_per_s:
      config = speed.make_config(args)
      config.model.compute_dtype = dtype
      r = speed.bench_pretrain(config, ds, mesh, True, args)
      seq_per_s[dtype].append(r["seq_per_s"])
      line = f"round {round_ + 1}, {dtype}: pre-training {r['seq_per_s']:.0f} seq/s"
      for form in args.finetune_losses.split(","):
        f = speed.bench_finetune(config, ds, splits, mesh, True, form)
        epoch_s[(dtype, form)].append(f["epoch_s"])
        line += f"; fine-tuning {form} epoch {f['epoch_s']:.2f}s (mean loss {f['loss']:.4f})"
      speed.say(line)
  med = {k: statistics.median(v) for k, v in seq_per_s.items()}
  speed.say(f"pre-training, median seq/s: float32 {med['float32']:.0f}, bfloat16 "
            f"{med['bfloat16']:.0f} (bfloat16/float32 = {med['bfloat16'] / med['float32']:.2f}x)")
  for form in args.finetune_losses.split(","):
    f32 = statistics.median(epoch_s[("float32", form)])
    b16 = statistics.median(epoch_s[("bfloat16", form)])
    speed.say(f"fine-tuning {form}, median epoch: float32 {f32:.2f}s, bfloat16 {b16:.2f}s "
              f"(float32/bfloat16 time = {f32 / b16:.2f}x speed-up)")
  speed.say("command: python benchmarks/mixed_precision.py " + " ".join(argv))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
