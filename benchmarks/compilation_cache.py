"""What JAX's persistent compilation cache saves a whole train.py run.

  python benchmarks/compilation_cache.py --devices 4

Runs the test suite's tiny synthetic train.py run (tests/cli_runs.py) three times, in turn,
each in a fresh process and workdir: without the cache, with an empty cache folder (which the
run fills), and with the filled folder. Prints the wall time of each, the ratios to the first,
whether the three results.json agree to the bit (they should: a loaded step is the compiled
one), and the command that reproduces the figures. Arguments after `--` are added to
train.py's (e.g. `-- --config.pretrain.epochs=4`).
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
sys.path.insert(0, os.path.join(REPO, "tests"))
from s3rec_jax.core import provenance  # noqa: E402  (no JAX import: the runs are subprocesses)
import cli_runs  # noqa: E402  (tests/cli_runs.py: the tiny run and its environment)

def parse_args(argv):
  extra = []
  if "--" in argv:
    cut = argv.index("--")
    argv, extra = argv[:cut], argv[cut + 1:]
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--devices", type=int, default=4, help="forced CPU host devices")
  args = p.parse_args(argv)
  if args.devices < 1:
    p.error("--devices must be >= 1")
  return args, extra


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args, extra = parse_args(argv)
  root = tempfile.mkdtemp(prefix="s3rec_jax_cache_bench_")
  cache = os.path.join(root, "cache")
  without, with_cache = cli_runs.env(args.devices, None), cli_runs.env(args.devices, cache)
  rows, results = [], []
  for label, run_env in (("no cache", without), ("empty cache (filling it)", with_cache),
                         ("filled cache", with_cache)):
    workdir = os.path.join(root, f"run{len(rows)}")
    command = cli_runs.command(workdir, extra=tuple(extra))
    start = time.perf_counter()
    done = subprocess.run(command, env=run_env, cwd=cli_runs.REPO, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
      print(f"train.py failed ({label}):\n{done.stderr[-3000:]}", file=sys.stderr)
      return 1
    with open(os.path.join(workdir, "results.json")) as f:
      record = json.load(f)
    results.append({split: record[split] for split in ("valid", "test")})
    rows.append((label, seconds))
  entries = sum(len(files) for _, _, files in os.walk(cache))
  print(f"train.py, tests/cli_runs.TINY, {args.devices} CPU device(s), {provenance.cpu()}; "
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
