"""The host side at scale: prepare, load, train steps and evaluation of a large generated log.

  python benchmarks/scale.py --workdir /tmp/scale                       # 100M interactions
  python benchmarks/scale.py --workdir /tmp/scale --interactions 2000000 --stages generate,epochs

Stages (--stages, in this order; each reuses what the earlier ones left in --workdir):
  generate  a CSV of `--interactions` rows (user,item,time): power-law user lengths with some
            users of 10,000+ interactions, Zipf item popularity over --items items, string ids;
            written a chunk of users at a time.
  prepare   `s3rec-prepare csv` of it (k-core filtering off: every user and item is kept).
  load      the dataset as train.py loads it, twice: the first load converts the text files
            into memory-mapped arrays, the second maps them.
  train     `s3rec-train` on it: --steps pre-training and --steps fine-tuning steps
            (pretrain.max_steps, finetune.max_steps), then a full-ranking evaluation of
            --eval_users users on validation and test.
  epochs    a smaller run's memory over --epochs fine-tuning epochs (a fresh generated log
            of --epochs_interactions rows): the peak resident memory of each epoch.
  builder   benchmarks/batch_builder.py at 1k, 4k and 16k sequences per device, with 1 and 2
            worker processes.

Every child process is measured from outside: wall time, and its resident memory sampled
from /proc every 0.2 s, split into anonymous memory (the process's own) and file pages (the
memory-mapped arrays and libraries, shared). The figures print as a table with the CPU and
the command. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from s3rec_jax.core import provenance  # noqa: E402

STAGES = ("generate", "prepare", "load", "train", "epochs", "builder")
GIB = 2**30


# --- the generated log ------------------------------------------------------------------


def user_lengths(interactions: int, rng: np.random.Generator) -> np.ndarray:
  """Power-law lengths (at least 5) summing to `interactions`; one user in 5M interactions
  (at least one, at most 20) has 10,000 to 25,000."""
  long_users = max(1, min(20, interactions // 5_000_000))
  lengths = [rng.integers(10_000, 25_000, long_users)]
  total = int(lengths[0].sum())
  while total < interactions:
    chunk = np.minimum(5 + (rng.pareto(1.3, 1 << 20) * 8).astype(np.int64), 9_999)
    lengths.append(chunk)
    total += int(chunk.sum())
  lengths = np.concatenate(lengths)
  cut = int(np.searchsorted(np.cumsum(lengths), interactions)) + 1
  lengths = lengths[:cut].copy()
  lengths[-1] -= int(lengths.sum()) - interactions
  if lengths[-1] < 5:
    lengths = lengths[:-1]
  return rng.permutation(lengths)


def _ids(prefix: bytes, numbers: np.ndarray, width: int):
  """`prefix` + zero-padded decimal numbers as an Arrow string array (vectorised)."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  digits = (numbers[:, None] // 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)) % 10
  text = np.empty((numbers.size, width + len(prefix)), np.uint8)
  text[:, :len(prefix)] = np.frombuffer(prefix, np.uint8)
  text[:, len(prefix):] = digits + ord("0")
  return pa.array(text.view(f"S{width + len(prefix)}").ravel()).cast(pa.string())


def generate(path: str, interactions: int, num_items: int, seed: int) -> dict:
  """Writes the CSV a chunk of users at a time; returns its counts."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  from pyarrow import csv as pa_csv  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  lengths = user_lengths(interactions, rng)
  item_names = rng.permutation(num_items)   # popularity rank -> id, so ids are not ranks
  tmp = path + ".tmp"
  schema = pa.schema([("user", pa.string()), ("item", pa.string()), ("time", pa.int64())])
  with pa_csv.CSVWriter(tmp, schema) as writer:
    first = 0
    for start in range(0, lengths.size, 50_000):
      chunk = lengths[start:start + 50_000]
      users = np.repeat(np.arange(first, first + chunk.size), chunk)
      first += chunk.size
      ranks = (rng.zipf(1.2, users.size) - 1) % num_items
      # Each user's interactions one to ten minutes apart, from a random start.
      step = rng.integers(60, 600, users.size)
      since = np.cumsum(step)
      firsts = np.cumsum(chunk) - chunk
      times = (np.repeat(rng.integers(1_300_000_000, 1_600_000_000, chunk.size), chunk)
               + since - np.repeat(since[firsts] - step[firsts], chunk))
      writer.write_table(pa.table({
          "user": _ids(b"u", users, 9), "item": _ids(b"i", item_names[ranks], 7),
          "time": pa.array(times.astype(np.int64)),
      }, schema=schema))
  os.replace(tmp, path)
  return {"users": int(lengths.size), "interactions": int(lengths.sum()),
          "longest": int(lengths.max()), "bytes": os.path.getsize(path)}


# --- measuring a child process ----------------------------------------------------------


def _memory(pid: int) -> tuple[int, int] | None:
  """(anonymous, file-backed) resident bytes of a process, from /proc."""
  try:
    with open(f"/proc/{pid}/status") as f:
      fields = dict(line.split(":", 1) for line in f if ":" in line)
  except OSError:
    return None
  def kib(name):
    return int(fields.get(name, "0 kB").split()[0]) * 1024
  return kib("RssAnon") + kib("RssShmem"), kib("RssFile")


class Measured:
  """Runs a command, samples its memory, and keeps its output lines with their times."""

  def __init__(self, command: list[str], log_path: str):
    self.command, self.log_path = command, log_path
    self.samples: list[tuple[float, int, int]] = []
    self.lines: list[tuple[float, str]] = []

  def run(self) -> "Measured":
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(self.log_path, "w") as log:
      proc = subprocess.Popen(self.command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
      done = threading.Event()

      def sample():
        while not done.is_set():
          memory = _memory(proc.pid)
          if memory:
            self.samples.append((time.perf_counter() - t0, *memory))
          done.wait(0.2)

      sampler = threading.Thread(target=sample, daemon=True)
      sampler.start()
      for line in proc.stdout:
        self.lines.append((time.perf_counter() - t0, line.rstrip("\n")))
        log.write(line)
        log.flush()
      self.returncode = proc.wait()
      done.set()
      sampler.join()
    self.wall = time.perf_counter() - t0
    if self.returncode:
      tail = "\n".join(line for _, line in self.lines[-15:])
      raise SystemExit(f"{shlex.join(self.command)} failed ({self.returncode}):\n{tail}")
    return self

  def peak(self, start: float = 0.0, end: float = float("inf")) -> tuple[int, int]:
    """Peak (anonymous, anonymous + file) bytes between two times."""
    inside = [(a, a + f) for t, a, f in self.samples if start <= t <= end] or [(0, 0)]
    return max(a for a, _ in inside), max(t for _, t in inside)

  def time_of(self, pattern: str) -> float | None:
    for t, line in self.lines:
      if re.search(pattern, line):
        return t
    return None


def _store_bytes(folder: str) -> int:
  total = 0
  for root, _, files in os.walk(folder):
    if ".arrays" in root:
      total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
  return total


def _gib(n: float) -> str:
  return f"{n / GIB:.2f}"


# --- stages -----------------------------------------------------------------------------


def _train_command(args, data_dir: str, workdir: str, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "s3rec_jax.tools.train", "--config=default",
          f"--workdir={workdir}", f"--config.data_dir={data_dir}", "--config.dataset=Scale",
          "--config.eval.protocol=full", f"--config.eval.ranking={args.ranking}",
          f"--config.settings.next_item.ce_method={args.ranking}", *overrides]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--workdir", required=True, help="folder for the log, the data and the runs")
  p.add_argument("--stages", default=",".join(STAGES), help="comma list of " + ", ".join(STAGES))
  p.add_argument("--interactions", type=int, default=100_000_000)
  p.add_argument("--items", type=int, default=200_000)
  p.add_argument("--steps", type=int, default=200, help="pre-training and fine-tuning steps")
  p.add_argument("--eval_users", type=int, default=10_000)
  p.add_argument("--epochs_interactions", type=int, default=2_000_000)
  p.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs of the epochs stage")
  p.add_argument("--ranking", default="fused_cpu", help="eval.ranking and the ce method")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  stages = [s for s in args.stages.split(",") if s]
  unknown = set(stages) - set(STAGES)
  if unknown:
    p.error(f"unknown stage(s) {sorted(unknown)}; expected {', '.join(STAGES)}")
  os.makedirs(args.workdir, exist_ok=True)
  csv_path = os.path.join(args.workdir, "interactions.csv")
  data_dir = os.path.join(args.workdir, "data")
  rows = []
  print(f"CPU: {provenance.cpu()}", flush=True)

  if "generate" in stages:
    t0 = time.perf_counter()
    counts = generate(csv_path, args.interactions, args.items, args.seed)
    rows.append(("generate", f"{counts['interactions']:,} interactions, {counts['users']:,} users "
                 f"(longest {counts['longest']:,}), {counts['bytes'] / 1e9:.2f} GB of CSV",
                 time.perf_counter() - t0, None, None))

  if "prepare" in stages:
    run = Measured([sys.executable, "-m", "s3rec_jax.data.prepare", "csv",
                    f"--interactions={csv_path}", "--user_col=user", "--item_col=item",
                    "--time_col=time", "--name=Scale", f"--output={data_dir}",
                    "--min_user_interactions=0", "--min_item_interactions=0"],
                   os.path.join(args.workdir, "prepare.log")).run()
    anon, total = run.peak()
    rows.append(("prepare", "s3rec-prepare csv", run.wall, anon, total))

  if "load" in stages:
    code = ("import sys; from s3rec_jax.data import dataset as d; "
            "ds = d.load_dataset(sys.argv[1], 'Scale', sample_dir=sys.argv[2], need_samples=False,"
            " cache=True, require_dense_ids=True); "
            "print('loaded', ds.num_users, ds.num_interactions, flush=True)")
    for label in ("load (first: converts)", "load (maps)"):
      run = Measured([sys.executable, "-c", code, data_dir, os.path.join(args.workdir, "cache")],
                     os.path.join(args.workdir, "load.log")).run()
      anon, total = run.peak()
      rows.append((label, f"{_gib(_store_bytes(args.workdir) or 0)} GiB of arrays", run.wall,
                   anon, total))

  if "train" in stages:
    workdir = os.path.join(args.workdir, "run")
    shutil.rmtree(workdir, ignore_errors=True)   # a fresh run, not a resumed one
    run = Measured(_train_command(
        args, data_dir, workdir, "--config.pretrain.epochs=1",
        f"--config.pretrain.max_steps={args.steps}", "--config.finetune.epochs=1",
        f"--config.finetune.max_steps={args.steps}", f"--config.eval.max_users={args.eval_users}"),
        os.path.join(args.workdir, "train.log")).run()
    marks = [("start", 0.0), ("loaded", run.time_of(r"^dataset: ")),
             ("pre-trained", run.time_of(r"^pretrain epoch 1")),
             ("fine-tuned", run.time_of(r"^finetune epoch 1")), ("end", run.wall)]
    for (label, start), (next_label, end) in zip(marks, marks[1:]):
      if start is None or end is None:
        continue
      anon, total = run.peak(start, end)
      rows.append((f"train: {label} -> {next_label}", "", end - start, anon, total))

  if "epochs" in stages:
    small_dir = os.path.join(args.workdir, "small")
    small_csv = os.path.join(small_dir, "interactions.csv")
    os.makedirs(small_dir, exist_ok=True)
    shutil.rmtree(os.path.join(small_dir, "run"), ignore_errors=True)
    generate(small_csv, args.epochs_interactions, args.items, args.seed + 1)
    Measured([sys.executable, "-m", "s3rec_jax.data.prepare", "csv",
              f"--interactions={small_csv}", "--user_col=user", "--item_col=item",
              "--time_col=time", "--name=Scale", f"--output={small_dir}/data",
              "--min_user_interactions=0", "--min_item_interactions=0"],
             os.path.join(small_dir, "prepare.log")).run()
    run = Measured(_train_command(
        args, f"{small_dir}/data", os.path.join(small_dir, "run"), "--config.pretrain.epochs=0",
        f"--config.finetune.epochs={args.epochs}", f"--config.finetune.min_epochs={args.epochs}",
        "--config.eval.max_users=1000"), os.path.join(small_dir, "train.log")).run()
    ends = [run.time_of(rf"^finetune epoch {e}:") for e in range(1, args.epochs + 1)]
    start = run.time_of(r"^fine-tuning") or 0.0
    for epoch, end in enumerate(ends, start=1):
      if end is None:
        continue
      anon, total = run.peak(start, end)
      rows.append((f"fine-tuning epoch {epoch}", f"{args.epochs_interactions:,} interactions",
                   end - start, anon, total))
      start = end

  if rows:
    print("| stage | what | wall, s | peak anonymous RSS, GiB | peak RSS with mapped files, GiB |")
    print("| --- | --- | --- | --- | --- |")
    for stage, what, wall, anon, total in rows:
      memory = ("", "") if anon is None else (_gib(anon), _gib(total))
      print(f"| {stage} | {what} | {wall:.1f} | {memory[0]} | {memory[1]} |", flush=True)

  if "builder" in stages:
    command = [sys.executable, os.path.join(REPO, "benchmarks", "batch_builder.py"),
               "--per_device", "1024,4096,16384", "--workers", "1,2"]
    subprocess.run(command, cwd=REPO, check=True)

  print("\ncommand: python benchmarks/scale.py "
        + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])))
  return 0


if __name__ == "__main__":
  sys.exit(main())
