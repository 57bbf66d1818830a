"""The `ce` loss's forward and backward pass for several catalogue chunk sizes, in one process.

  python benchmarks/ce_chunks.py --devices 2 --chunk_sizes 128,256,512,1024,4096

Times value_and_grad of `catalogue_softmax.cross_entropy` (what the `ce` form
of next_item costs on top of the encoder) for `--queries` query vectors per
device against a catalogue of `--items` items, the table replicated and its
gradient summed over the devices as in fine-tuning. The chunk sizes take turns,
round after round, so the machine's drift hits all of them alike; the median
of the rounds is printed per chunk size, with the share of the four
[queries x items x hidden] matmuls of a step (forward logits, their
recomputation, the two gradient products) at the same-run [2048, 2048] matmul
rate. The best chunk depends on the cache of the machine: on a CPU, the
chunk's [queries, chunk] logits should stay in a core's cache. Set it with
--config.settings.next_item.chunk_size.

The defaults are Beauty's fine-tuning shape on 2 host devices: about 800
packed tokens per device and 12,101 items.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time

from s3rec_jax.core import parallel as _parallel  # noqa: E402  (imports jax; no op runs yet)

_parallel.force_host_devices_from_argv(sys.argv[1:])  # --devices N, before JAX starts

# pylint: disable=wrong-import-position
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import gauges  # noqa: E402  (benchmarks/gauges.py)
from s3rec_jax.core import parallel  # noqa: E402
from s3rec_jax.ops import catalogue_softmax  # noqa: E402


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--devices", type=int, default=0,
                 help="XLA CPU host devices (set before JAX starts); 0 = all visible devices")
  p.add_argument("--chunk_sizes", default="128,256,512,1024,4096")
  p.add_argument("--queries", type=int, default=800, help="query vectors per device")
  p.add_argument("--items", type=int, default=12_101)
  p.add_argument("--hidden", type=int, default=64)
  p.add_argument("--steps", type=int, default=5, help="steps per timed window")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--matmul_dtype", default="", help="e.g. bfloat16: the scoring matmuls' "
                 "operand dtype (as model.compute_dtype=bfloat16 sets it); empty = float32")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--fused_cpu", action="store_true",
                 help="also time method fused_cpu (the native CPU kernel, no chunks)")
  args = p.parse_args(argv)
  args.chunk_sizes = [int(c) for c in args.chunk_sizes.split(",") if c]
  if not args.chunk_sizes or min(args.chunk_sizes) < 1:
    p.error("--chunk_sizes needs positive integers")
  return args


def make_step(mesh, num_items: int, chunk_size: int, matmul_dtype: str | None,
              method: str = "scan"):
  """(queries, table, targets) -> (losses, d_queries, d_table summed over devices)."""
  def local(queries, table, targets):
    def total(q, t):
      return jnp.sum(catalogue_softmax.cross_entropy(q, t, targets, num_items=num_items,
                                                     chunk_size=chunk_size,
                                                     matmul_dtype=matmul_dtype,
                                                     method=method))
    loss, (d_queries, d_table) = jax.value_and_grad(total, argnums=(0, 1))(queries, table)
    return loss[None], d_queries, jax.lax.psum(d_table, parallel.DATA_AXIS)

  data = P(parallel.DATA_AXIS)
  return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(data, P(), data),
                               out_specs=(data, data, P()), check_vma=False))


def main(argv) -> int:
  args = parse_args(argv)
  mesh = parallel.make_mesh()
  keys = jax.random.split(jax.random.key(args.seed), 3)
  rows = args.queries * mesh.size
  queries = jax.random.normal(keys[0], (rows, args.hidden))
  table = 0.1 * jax.random.normal(keys[1], (args.items + 2, args.hidden))
  targets = jax.random.randint(keys[2], (rows,), 1, args.items + 1)
  steps = {f"chunk {c:6d}": make_step(mesh, args.items, c, args.matmul_dtype or None)
           for c in args.chunk_sizes}
  if args.fused_cpu:
    steps["fused_cpu   "] = make_step(mesh, args.items, 1, None, method="fused_cpu")
  for step in steps.values():
    jax.block_until_ready(step(queries, table, targets))  # compile
  peak = gauges.matmul_flops_per_s(mesh)
  seconds = {c: [] for c in steps}
  for _ in range(args.rounds):
    for c, step in steps.items():
      t0 = time.perf_counter()
      for _ in range(args.steps):
        out = step(queries, table, targets)
      jax.block_until_ready(out)
      seconds[c].append((time.perf_counter() - t0) / args.steps)
  matmul_flops = 4 * 2.0 * rows * args.items * args.hidden
  print(f"CPU: {gauges.cpu_model()}; {mesh.size} device(s); dense [2048, 2048] matmul "
        f"{peak / 1e9:.1f} GFLOP/s; {args.queries} queries per device x {args.items:,} items "
        f"x {args.hidden}; matmul operands {args.matmul_dtype or 'float32'}")
  for c, ts in seconds.items():
    t = statistics.median(ts)
    print(f"{c}: {1e3 * t:7.1f} ms per step (rounds {', '.join(f'{1e3 * x:.1f}' for x in ts)}); "
          f"the four matmuls at the dense rate would take {1e3 * matmul_flops / peak:.1f} ms "
          f"({100 * matmul_flops / peak / t:.0f}%)")
  print("reproduce: python benchmarks/ce_chunks.py " + shlex.join([
      "--devices", str(args.devices), "--chunk_sizes", ",".join(map(str, args.chunk_sizes)),
      "--queries", str(args.queries), "--items", str(args.items), "--hidden", str(args.hidden),
      "--steps", str(args.steps), "--rounds", str(args.rounds), "--seed", str(args.seed)]
      + (["--matmul_dtype", args.matmul_dtype] if args.matmul_dtype else [])
      + (["--fused_cpu"] if args.fused_cpu else [])))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
