"""XLA:CPU flags against the default, in rotating rounds of `speed.py` runs.

  python benchmarks/xla_flags.py --rounds 3 \\
      --variant "one_thread_each=--xla_cpu_multi_thread_eigen=false" \\
      --variant "xnnpack=--xla_cpu_use_xnnpack=true" \\
      -- --dataset Beauty --devices 2 --steps 100 --layouts packed --skip_eval --loop_epochs 0

Each round runs `benchmarks/speed.py` (the arguments after `--`) once per
variant, in turn, each in a fresh process with that variant's flags added to
XLA_FLAGS (XLA reads them once, at start-up); the default (no added flag)
runs first in every round. Taking turns spreads this machine's drift over all
variants alike; the medians over rounds are printed as a table, with each
variant's speed relative to the default, and the command that reproduces it.
"""

import argparse
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import gauges  # noqa: E402  (benchmarks/gauges.py)

# The columns of speed.py's summary table that are compared, by their header.
_COLUMNS = ("pretrain seq/s", "finetune epoch s", "eval full s", "eval sampled s")
_HIGHER_IS_BETTER = {"pretrain seq/s"}


def parse_args(argv):
  if "--" in argv:
    cut = argv.index("--")
    argv, speed_args = argv[:cut], argv[cut + 1:]
  else:
    speed_args = []
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS",
                 help="a named set of XLA flags (space-separated); repeat for more")
  p.add_argument("--rounds", type=int, default=3)
  args = p.parse_args(argv)
  variants = {"default": ""}
  for v in args.variant:
    name, sep, flags = v.partition("=")
    if not sep or not name or name in variants:
      p.error(f"--variant wants a new NAME=FLAGS, got {v!r}")
    variants[name] = flags
  if args.rounds < 1:
    p.error("--rounds must be >= 1")
  return args, variants, speed_args


def _cells(line: str) -> list[str]:
  return [c.strip() for c in line.strip().strip("|").split("|")]


def summary_row(output: str) -> dict[str, float]:
  """The compared figures of the first data row of speed.py's markdown table, found by
  the table's header (a column speed.py left empty, `-`, is left out)."""
  lines = output.splitlines()
  for i, line in enumerate(lines[:-2]):
    header = _cells(line)
    if header[:2] == ["dataset", "devices"] and lines[i + 1].startswith("| ---"):
      row = dict(zip(header, _cells(lines[i + 2])))
      return {c: float(row[c]) for c in _COLUMNS if re.fullmatch(r"[\d.]+", row.get(c, ""))}
  raise RuntimeError("speed.py printed no summary table:\n" + output[-2000:])


def gauge_of(output: str) -> float | None:
  m = re.search(r"dense matmul .*?: ([\d.]+) GFLOP/s", output)
  return float(m.group(1)) if m else None


def run_variant(flags: str, speed_args: list[str]) -> str:
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(f for f in (env.get("XLA_FLAGS", ""), flags) if f)
  done = subprocess.run([sys.executable, os.path.join(HERE, "speed.py")] + speed_args, env=env,
                        capture_output=True, text=True, check=False)
  if done.returncode:
    raise RuntimeError(f"speed.py failed with XLA_FLAGS={env['XLA_FLAGS']!r}:\n"
                       + (done.stdout + done.stderr)[-2000:])
  return done.stdout


def main(argv) -> int:
  args, variants, speed_args = parse_args(argv)
  figures = {name: [] for name in variants}
  gauge = {name: [] for name in variants}
  for r in range(args.rounds):
    for name, flags in variants.items():
      out = run_variant(flags, speed_args)
      row = summary_row(out)
      figures[name].append(row)
      gauge[name].append(gauge_of(out))
      print(f"round {r + 1}, {name}: " + ", ".join(f"{k} {v:g}" for k, v in row.items())
            + f"; matmul gauge {gauge[name][-1]} GFLOP/s", flush=True)

  columns = [c for c in _COLUMNS if all(c in row for rows in figures.values() for row in rows)]
  base = {c: statistics.median(row[c] for row in figures["default"]) for c in columns}
  print()
  print("| variant | XLA flags | " + " | ".join(f"{c} (median)" for c in columns)
        + " | speed vs default | matmul gauge GFLOP/s |")
  print("|" + " --- |" * (len(columns) + 4))
  for name, flags in variants.items():
    med = {c: statistics.median(row[c] for row in figures[name]) for c in columns}
    # Speed relative to the default: a rate's ratio, or a time's inverse ratio.
    speed = ", ".join(
        f"{c} {(med[c] / base[c]) if c in _HIGHER_IS_BETTER else (base[c] / med[c]):.2f}x"
        for c in columns)
    gauges_seen = [g for g in gauge[name] if g is not None]
    print(f"| {name} | `{flags or '(none)'}` | " + " | ".join(f"{med[c]:g}" for c in columns)
          + f" | {speed} | {f'{statistics.median(gauges_seen):.1f}' if gauges_seen else '-'} |")
  print()
  cmd = ["python", "benchmarks/xla_flags.py", "--rounds", str(args.rounds)]
  cmd += [f"--variant={n}={f}" for n, f in variants.items() if n != "default"]
  print("reproduce: " + shlex.join(cmd + ["--"] + speed_args))
  print(f"machine: {platform.platform()}; {gauges.cpu_model()}; os.cpu_count()={os.cpu_count()}")
  return 0


if __name__ == "__main__":
  try:
    sys.exit(main(sys.argv[1:]))
  except RuntimeError as e:  # speed.py failed or printed no table: its output's tail says why
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
