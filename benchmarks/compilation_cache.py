"""What JAX's persistent compilation cache saves a whole train.py run.

  python benchmarks/compilation_cache.py --devices 4
  python benchmarks/compilation_cache.py --config configs/lastfm.py --devices 2 -- \\
      --config.pretrain.epochs=1 --config.finetune.epochs=1

Runs the same train.py command three times, in turn, each in a fresh process and workdir:
without the cache, with an empty cache folder (which the run fills), and with the filled
folder. Prints the wall time of each, the ratios to the first, whether the three
results.json agree to the bit (they should: a loaded step is the compiled one), and the
command that reproduces the figures. The defaults are a tiny synthetic run, the one the test
suite trains. Arguments after `--` are added to train.py's.
"""

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from s3rec_jax import provenance  # noqa: E402  (no JAX import: the runs are subprocesses)

# tests/cli_runs.TINY: every phase (pre-training with checkpoints, fine-tuning, test) in
# about a minute of mostly compilation.
_TINY = (
    "synthetic.kind=markov", "compare_to_sasrec=False", "synthetic.num_users=120",
    "synthetic.num_items=60", "synthetic.num_attributes=12", "sample.num_negatives=20",
    "max_seq_length=12", "model.hidden_size=16", "model.num_layers=1", "pretrain.epochs=2",
    "pretrain.batch_size=64", "pretrain.save_every_epochs=1",
    "pretrain.checkpoint_every_steps=5", "finetune.epochs=4", "finetune.batch_size=32",
    "finetune.patience=2", "eval.batch_size=64", "eval.chunk_size=32",
)


def parse_args(argv):
  extra = []
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1:]
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default=os.path.join("configs", "synthetic.py"))
  p.add_argument("--devices", type=int, default=4, help="forced CPU host devices")
  args = p.parse_args(argv)
  if args.devices < 1:
    p.error("--devices must be >= 1")
  return args, extra


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args, extra = parse_args(argv)
  default_config = args.config == os.path.join("configs", "synthetic.py")
  overrides = [f"--config.{o}" for o in _TINY] if default_config else []
  root = tempfile.mkdtemp(prefix="s3rec_jax_cache_bench_")
  cache = os.path.join(root, "cache")
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices}")
  for key in ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
    env.pop(key, None)
  with_cache = dict(env, JAX_COMPILATION_CACHE_DIR=cache,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  rows, results = [], []
  for label, run_env in (("no cache", env), ("empty cache (filling it)", with_cache),
                         ("filled cache", with_cache)):
    workdir = os.path.join(root, f"run{len(rows)}")
    command = [sys.executable, os.path.join(REPO, "train.py"),
               f"--config={os.path.join(REPO, args.config)}", f"--workdir={workdir}",
               *overrides, *extra]
    start = time.perf_counter()
    done = subprocess.run(command, env=run_env, cwd=REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
      print(f"train.py failed ({label}):\n{done.stderr[-3000:]}", file=sys.stderr)
      return 1
    with open(os.path.join(workdir, "results.json")) as f:
      record = json.load(f)
    results.append({split: record[split] for split in ("valid", "test")})
    rows.append((label, seconds))
  entries = sum(len(files) for _, _, files in os.walk(cache))
  print(f"train.py, {args.config}, {args.devices} CPU device(s), {provenance.cpu()}; "
        f"cache entries written: {entries}\n")
  print("| run | wall s | against no cache |")
  print("| --- | --- | --- |")
  for label, seconds in rows:
    print(f"| {label} | {seconds:.1f} | {seconds / rows[0][1]:.2f}x |")
  same = all(r == results[0] for r in results[1:])
  print(f"\nresults.json identical in all three runs: {same}")
  print("command: python benchmarks/compilation_cache.py " + shlex.join(argv))
  return 0 if same else 1


if __name__ == "__main__":
  sys.exit(main())
