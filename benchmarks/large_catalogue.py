"""Full ranking of many users against a large synthetic catalogue with metrics.full_ranking.

  /usr/bin/time -v python benchmarks/large_catalogue.py   # 10k users x 1M items

The item table and the users are random normal embeddings drawn on the device
from seeded keys, so the host never holds a copy of the table. Users go
through `full_ranking` (a scan over catalogue chunks keeping a running top-k)
in batches. With `--split catalogue` (the default) the table's rows are split
over the devices and every device ranks each batch against its block (the
counts are summed and the top-k lists merged), so the table's memory does not
grow with the device count; `--split users` copies the table to every device
and splits each batch of users instead. Prints the
seconds (compile excluded), users/s and the process's peak RSS, then checks
the ranks and top-k of a few users against a plain numpy computation.

By default embeddings are rounded to multiples of 1/16 (`--no-exact` keeps
raw normals): then every dot product is exact in float32 whatever the
summation order, ties are frequent, and the check can demand exact equality,
including the tie conventions.
"""

import argparse
import os
import shlex
import sys


from s3rec_jax.core import parallel as _parallel  # noqa: E402  (imports jax; no op runs yet)

_parallel.force_host_devices_from_argv(sys.argv[1:])  # --devices N, before JAX starts

# pylint: disable=wrong-import-position
import functools  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gauges  # noqa: E402  (benchmarks/gauges.py)
from s3rec_jax.core import parallel  # noqa: E402
from s3rec_jax.evaluation import metrics  # noqa: E402

GRID = 16.0   # --exact: values are multiples of 1/GRID


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--users", type=int, default=10_000)
  p.add_argument("--items", type=int, default=1_000_000, help="real items 1..items")
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--top_k", type=int, default=20)
  p.add_argument("--chunk_size", type=int, default=16384, help="catalogue rows per scan step")
  p.add_argument("--user_batch", type=int, default=1024, help="users per call, split over devices")
  p.add_argument("--history", type=int, default=20, help="random history ids per user")
  p.add_argument("--check_users", type=int, default=64, help="users checked against numpy")
  p.add_argument("--devices", type=int, default=0,
                 help="XLA CPU host devices (set before JAX starts); 0 = all visible devices")
  p.add_argument("--split", default="catalogue", choices=("catalogue", "users"),
                 help="what is divided over the devices: the table's rows, or each user batch "
                      "(with a copy of the table per device)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--method", default="scan", choices=metrics.RANKING_METHODS,
                 help="full_ranking's method: the XLA scan, or the fused native CPU kernel")
  p.add_argument("--exact", action=argparse.BooleanOptionalAction, default=True,
                 help="round embeddings to multiples of 1/16 so float32 dot products are exact")
  args = p.parse_args(argv)
  if args.check_users > min(args.users, args.user_batch):
    p.error("--check_users must not exceed --users or --user_batch")
  return args


def say(message: str) -> None:
  print(message, flush=True)


def embeddings(key: jax.Array, shape, exact: bool) -> jax.Array:
  x = jax.random.normal(key, shape, jnp.float32)
  if exact:
    # |x| <= 8 keeps every 64-term dot product (in units of 1/GRID^2) below 2^24.
    x = jnp.round(jnp.clip(x, -8.0, 8.0) * GRID) / GRID
  return x


def make_table(key: jax.Array, *, rows: int, hidden: int, exact: bool,
               block: int = 65536) -> jax.Array:
  """[rows, hidden] embeddings filled block by block, so no table-sized temporaries."""
  block = min(block, rows)
  num_blocks = -(-rows // block)

  def fill(i, table):
    # The last block is shifted back to stay inside the table (it rewrites some rows).
    start = jnp.minimum(i * block, rows - block)
    values = embeddings(jax.random.fold_in(key, i), (block, hidden), exact)
    return jax.lax.dynamic_update_slice_in_dim(table, values, start, axis=0)

  return jax.lax.fori_loop(0, num_blocks, fill, jnp.zeros((rows, hidden), jnp.float32))


def make_users(key, index, *, batch, hidden, num_items, history, exact):
  """One batch of users: representations, answers and histories, drawn on the device."""
  k_user, k_answer, k_history = jax.random.split(jax.random.fold_in(key, index), 3)
  return (embeddings(k_user, (batch, hidden), exact),
          jax.random.randint(k_answer, (batch,), 1, num_items + 1, jnp.int32),
          jax.random.randint(k_history, (batch, history), 1, num_items + 1, jnp.int32))


# --- the numpy reference -----------------------------------------------------


def numpy_ranking(users, answers, history, table_rows, num_items: int, top_k: int, chunk: int):
  """Ranks and top-k by plain numpy in float64, reading the table in chunks.

  Candidates are 1..num_items minus the history (the answer stays a candidate);
  rank = other candidates scoring >= the answer; top-k best first, ties by lowest id.
  Also returns, per user, the other candidates that tie the answer exactly.
  """
  users = users.astype(np.float64)
  n = len(users)
  answer_scores = np.sum(users * table_rows(answers).astype(np.float64), axis=1)
  counts = np.zeros(n, np.int64)
  tied = np.zeros(n, np.int64)
  best_scores = np.zeros((n, 0))
  best_ids = np.zeros((n, 0), np.int64)
  for start in range(1, num_items + 1, chunk):
    end = min(start + chunk, num_items + 1)
    rows = table_rows(np.arange(start, end)).astype(np.float64)
    scores = users @ rows.T
    ids = np.arange(start, end)
    candidate = np.ones(scores.shape, bool)
    drop = (history != answers[:, None]) & (history >= start) & (history < end)
    r, c = np.nonzero(drop)
    candidate[r, history[r, c] - start] = False
    others = candidate & (ids[None, :] != answers[:, None])
    counts += np.sum(others & (scores >= answer_scores[:, None]), axis=1)
    tied += np.sum(others & (scores == answer_scores[:, None]), axis=1)
    masked = np.where(candidate, scores, -np.inf)
    all_scores = np.concatenate([best_scores, masked], axis=1)
    all_ids = np.concatenate([best_ids, np.broadcast_to(ids, scores.shape)], axis=1)
    k = min(top_k, all_scores.shape[1])
    threshold = np.partition(all_scores, -k, axis=1)[:, -k]
    new_scores, new_ids = np.zeros((n, k)), np.zeros((n, k), np.int64)
    for i in range(n):
      keep = np.nonzero(all_scores[i] >= threshold[i])[0]
      order = keep[np.lexsort((all_ids[i, keep], -all_scores[i, keep]))][:k]
      new_scores[i], new_ids[i] = all_scores[i, order], all_ids[i, order]
    best_scores, best_ids = new_scores, new_ids
  return counts, best_ids, best_scores, tied


# --- main --------------------------------------------------------------------


def reproduce_command(args) -> str:
  parts = ["python", "benchmarks/large_catalogue.py", "--users", str(args.users),
           "--items", str(args.items), "--hidden", str(args.hidden), "--top_k", str(args.top_k),
           "--chunk_size", str(args.chunk_size), "--user_batch", str(args.user_batch),
           "--history", str(args.history), "--check_users", str(args.check_users),
           "--devices", str(args.devices), "--split", args.split, "--seed", str(args.seed),
           "--method", args.method,
           "--exact" if args.exact else "--no-exact"]
  return " ".join(shlex.quote(p) for p in parts)


def main(argv) -> int:
  args = parse_args(argv)
  mesh = parallel.make_mesh()
  by_catalogue = args.split == "catalogue"
  if not by_catalogue and args.user_batch % mesh.size:
    say(f"error: --user_batch {args.user_batch} does not divide over {mesh.size} devices")
    return 2
  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  item_size = args.items + 2                       # 0 = padding, 1..items, a mask row
  if by_catalogue:
    item_size = -(-item_size // mesh.size) * mesh.size  # equal blocks of rows per device
  block_rows = item_size // mesh.size if by_catalogue else item_size
  block_gib = block_rows * args.hidden * 4 / 2**30   # float32 rows held per device
  key_table, key_users = jax.random.split(jax.random.key(args.seed))
  say(f"{args.users} users x {args.items} items, H {args.hidden}, top-{args.top_k}, chunk "
      f"{args.chunk_size}, user batch {args.user_batch}, "
      + (f"catalogue split over {mesh.size}" if by_catalogue else f"users split over {mesh.size}")
      + f" {jax.devices()[0].platform} device(s), method {args.method}, {args.history} history ids per user, "
      f"{'exact (1/16-grid)' if args.exact else 'raw normal'} embeddings")

  t0 = time.perf_counter()
  if by_catalogue:
    # Each device draws its own block of rows: no device ever holds the whole table.
    def fill_block(key):
      key = jax.random.fold_in(key, jax.lax.axis_index(parallel.DATA_AXIS))
      return make_table(key, rows=block_rows, hidden=args.hidden, exact=args.exact)
    table = jax.jit(jax.shard_map(fill_block, mesh=mesh, in_specs=P(),
                                  out_specs=P(parallel.DATA_AXIS), check_vma=False))(key_table)
  else:
    table = jax.jit(functools.partial(make_table, rows=item_size, hidden=args.hidden,
                                      exact=args.exact), out_shardings=repl)(key_table)
  jax.block_until_ready(table)
  say(f"table [{item_size}, {args.hidden}] float32 ({block_gib * 1024:.0f} "
      f"MiB per device) drawn on device in {time.perf_counter() - t0:.2f}s; peak RSS so far "
      f"{gauges.peak_rss_gib():.2f} GiB")

  num_batches = -(-args.users // args.user_batch)
  user_sharding = repl if by_catalogue else data
  users_fn = jax.jit(functools.partial(
      make_users, batch=args.user_batch, hidden=args.hidden, num_items=args.items,
      history=args.history, exact=args.exact), out_shardings=(user_sharding,) * 3)
  batches = [users_fn(key_users, b) for b in range(num_batches)]
  jax.block_until_ready(batches)

  if by_catalogue:
    def rank_block(user, block, answers, history):
      return metrics.full_ranking(user, block, answers, history, num_items=args.items,
                                  chunk_size=args.chunk_size, top_k=args.top_k,
                                  axis_name=parallel.DATA_AXIS, method=args.method)
    rank_fn = jax.jit(jax.shard_map(rank_block, mesh=mesh,
                                    in_specs=(P(), P(parallel.DATA_AXIS), P(), P()),
                                    out_specs=P(), check_vma=False))
  else:
    rank_fn = jax.jit(
        functools.partial(metrics.full_ranking, num_items=args.items,
                          chunk_size=args.chunk_size, top_k=args.top_k, method=args.method),
        in_shardings=(data, repl, data, data), out_shardings=(data, data, data))
  u0, a0, h0 = batches[0]
  t0 = time.perf_counter()
  compiled = rank_fn.lower(u0, table, a0, h0).compile()
  compile_s = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  if memory is not None:
    say(f"XLA buffers per device for one batch: {memory.temp_size_in_bytes / 2**20:.0f} MiB "
        f"temporaries + {memory.argument_size_in_bytes / 2**20:.0f} MiB arguments "
        f"(x {mesh.size} device(s), all in host memory on CPU)")

  outputs = []
  t0 = time.perf_counter()
  for u, a, h in batches:
    outputs.append(compiled(u, table, a, h))
  jax.block_until_ready(outputs)
  seconds = time.perf_counter() - t0
  ranks = np.concatenate([np.asarray(r) for r, _, _ in outputs])[:args.users]
  rss = gauges.peak_rss_gib()
  say(f"ranked {args.users} users ({num_batches} batches of {args.user_batch}; the last one "
      f"padded with {num_batches * args.user_batch - args.users} extra users) in {seconds:.2f}s = "
      f"{args.users / seconds:.0f} users/s (compile {compile_s:.2f}s excluded)")
  peak = gauges.matmul_flops_per_s(mesh)
  work = gauges.scoring_flops(num_batches * args.user_batch, args.items, args.hidden)
  bare = gauges.scoring_matmul_flops_per_s(
      mesh, args.user_batch // mesh.size if not by_catalogue else args.user_batch,
      min(args.items, args.chunk_size), args.hidden)
  say(f"against the matmul bound: {work / 1e12:.2f} TFLOP of scores in {seconds:.2f}s = "
      f"{work / seconds / 1e9:.1f} GFLOP/s = {100 * work / seconds / peak:.0f}% of a dense "
      f"[2048, 2048] float32 matmul measured now ({peak / 1e9:.1f} GFLOP/s on {mesh.size} "
      f"device(s)); the bare scoring matmul of one batch against one chunk per device runs at "
      f"{bare / 1e9:.1f} GFLOP/s = {100 * bare / peak:.0f}% of it, so ranking is at "
      f"{100 * work / seconds / bare:.0f}% of its own shape's matmul")
  say(f"mean rank {ranks.mean():.0f} (uniform answers: about {args.items / 2:.0f}), "
      f"HR@{args.top_k} {np.mean(ranks < args.top_k):.4f}")
  say(f"peak RSS after ranking: {rss:.2f} GiB (ru_maxrss of the process; table "
      f"{mesh.size} x {block_gib:.2f} GiB on the host-memory devices)")

  # Spot-check the first users of batch 0 against numpy, reading the table in chunks.
  n = args.check_users
  gather = jax.jit(lambda t, i: t[i], out_shardings=repl)
  table_rows = lambda ids: np.asarray(gather(table, jnp.asarray(ids, jnp.int32)))
  users_np, answers_np, history_np = (np.asarray(x)[:n] for x in (u0, a0, h0))
  t0 = time.perf_counter()
  ref_ranks, ref_items, ref_scores, ref_tied = numpy_ranking(users_np, answers_np, history_np, table_rows,
                                                   args.items, args.top_k, args.chunk_size)
  r, items, scores = (np.asarray(x)[:n] for x in outputs[0])
  same_ranks = np.array_equal(r, ref_ranks)
  same_items = np.array_equal(items, ref_items)
  same_scores = np.array_equal(scores, ref_scores.astype(scores.dtype))
  say(f"spot-check of {n} users against numpy (float64, {time.perf_counter() - t0:.1f}s): ranks "
      f"{'match' if same_ranks else 'DIFFER'}, top-{args.top_k} items "
      f"{'match' if same_items else 'DIFFER'}, top-{args.top_k} scores "
      f"{'match' if same_scores else 'DIFFER'} exactly"
      + ("" if same_ranks else f"; {np.sum(r != ref_ranks)} ranks differ, max |diff| "
         f"{np.max(np.abs(r - ref_ranks))}")
      + ("" if same_items else f"; {np.sum(np.any(items != ref_items, axis=1))} users' top "
         f"lists differ"))
  if not args.exact:
    say("(--no-exact: float32 scores against float64 ones, so last-bit differences and ranks "
        "off by a near-tie are expected)")
  ties = np.mean([np.sum(ref_scores[i] == ref_scores[i, :, None]) - args.top_k
                  for i in range(n)]) / 2
  say(f"(ties exercised: {np.mean(ref_tied):.1f} other candidates tie the answer's score per "
      f"user, {np.mean(ref_tied > 0):.0%} of users have one; {ties:.1f} tied pairs per top-"
      f"{args.top_k} list)")
  say(f"peak RSS of the process: {gauges.peak_rss_gib():.2f} GiB")
  say(f"reproduce: /usr/bin/time -v {reproduce_command(args)}")
  say(f"machine: {platform.platform()}; os.cpu_count()={os.cpu_count()}; jax {jax.__version__}; "
      f"jax.devices(): {jax.devices()}")
  ok = same_ranks and same_items and same_scores
  return 0 if ok else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
