"""What each piece of full ranking costs on one catalogue chunk, timed in one process.

  python benchmarks/ranking_pieces.py --users 512 --chunk 16384
  python benchmarks/ranking_pieces.py --users 512 --chunk 2048

For a [users, hidden] x [hidden, chunk] block of scores this times, each as a
jitted scan of `--reps` chunks (the scores shifted per step, so nothing is
hoisted), per chunk:

- the scoring matmul alone, and the matmul with the answer's count;
- `lax.top_k` of the masked scores (a partial sort per row on XLA:CPU) against
  the grouped top-k of `metrics` (a top-k over group maxima, then over the best
  groups' columns);
- the count and the grouped top-k as two passes over the chunk against the one
  reduction `full_ranking` uses for both.

The pieces take turns, round after round, so the machine's drift hits all of
them alike; medians of the rounds are printed, with the CPU. One XLA device
(the default without XLA_FLAGS).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

import gauges  # noqa: E402  (benchmarks/gauges.py)
from s3rec_jax.evaluation import metrics


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--users", type=int, default=512)
  p.add_argument("--chunk", type=int, default=16384)
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--top_k", type=int, default=20)
  p.add_argument("--reps", type=int, default=10, help="chunks per timed call")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)
  if min(args.users, args.chunk, args.hidden, args.top_k, args.reps, args.rounds) < 1:
    p.error("every size must be >= 1")
  if args.top_k > args.chunk:
    p.error("--top_k must be <= --chunk")
  return args


def pieces(rows, candidate, k):
  """name -> fn(users) returning arrays that depend on every piece of the work."""
  def scores(u):
    return u @ rows.T

  def counted(s):
    return candidate & (s >= s[:, :1])   # column 0 stands in for the answer

  def two_passes(u):
    s = scores(u)
    count = jnp.sum(counted(s), axis=1, dtype=jnp.int32)
    best, _, _, _ = metrics._top_k_columns(s, candidate, k)  # pylint: disable=protected-access
    return count, best

  def one_pass(u):
    s = scores(u)
    best, _, _, count = metrics._top_k_columns(s, candidate, k, counted(s))  # pylint: disable=protected-access
    return count, best

  return {
      "scoring matmul": lambda u: (scores(u)[:, :1],),
      "matmul + answer's count": lambda u: (jnp.sum(counted(scores(u)), axis=1),),
      "matmul + lax.top_k": lambda u: lax.top_k(
          metrics._candidate_scores(scores(u), candidate), k),  # pylint: disable=protected-access
      "matmul + grouped top-k": lambda u: metrics._top_k_columns(  # pylint: disable=protected-access
          scores(u), candidate, k)[:2],
      "matmul + count, grouped top-k: two passes": two_passes,
      "matmul + count, grouped top-k: one pass": one_pass,
  }


def repeated(fn, reps: int):
  def run(users):
    def body(total, i):
      out = fn(users + i.astype(users.dtype))
      return total + sum(jnp.sum(o.astype(jnp.float32)) for o in out), None
    return lax.scan(body, jnp.float32(0), jnp.arange(reps))[0]
  return jax.jit(run)


def main(argv) -> int:
  args = parse_args(argv)
  keys = jax.random.split(jax.random.key(args.seed), 3)
  users = jax.random.normal(keys[0], (args.users, args.hidden))
  rows = jax.random.normal(keys[1], (args.chunk, args.hidden))
  candidate = jax.random.uniform(keys[2], (args.users, args.chunk)) > 0.01
  fns = {name: repeated(fn, args.reps) for name, fn in pieces(rows, candidate, args.top_k).items()}
  for fn in fns.values():
    jax.block_until_ready(fn(users))  # compile
  seconds = {name: [] for name in fns}
  for _ in range(args.rounds):
    for name, fn in fns.items():
      t0 = time.perf_counter()
      jax.block_until_ready(fn(users))
      seconds[name].append((time.perf_counter() - t0) / args.reps)
  print(f"CPU: {gauges.cpu_model()}; device {jax.devices()[0]}; per chunk of "
        f"[{args.users} users x {args.chunk} items], hidden {args.hidden}, top-{args.top_k}")
  for name, ts in seconds.items():
    print(f"{name:45s} {1e3 * statistics.median(ts):8.2f} ms (rounds "
          f"{', '.join(f'{1e3 * t:.2f}' for t in ts)})")
  print("reproduce: python benchmarks/ranking_pieces.py " + shlex.join([
      "--users", str(args.users), "--chunk", str(args.chunk), "--hidden", str(args.hidden),
      "--top_k", str(args.top_k), "--reps", str(args.reps), "--rounds", str(args.rounds),
      "--seed", str(args.seed)]))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
