"""Yardsticks the benchmarks print beside their figures, measured in the same run."""

import resource
import time

import jax
from jax.sharding import PartitionSpec as P

from s3rec_jax.core import parallel
from s3rec_jax.core import provenance


def matmul_flops_per_s(mesh, n: int = 2048, repeats: int = 7) -> float:
  """Best FLOP/s over `repeats` calls of a jitted [n, n] x [n, n] float32 matmul, rows split
  over the mesh. The best, not the median: it is a ceiling, and a median caught the VM in a
  slow moment (about 105 against 170-190 GFLOP/s) often enough to inflate the fractions
  quoted against it."""
  rows = max(mesh.size, n // mesh.size * mesh.size)
  data, repl = parallel.data_sharded(mesh), parallel.replicated(mesh)
  make = jax.jit(lambda k: (jax.random.normal(k, (rows, n)), jax.random.normal(k, (n, n))),
                 out_shardings=(data, repl))
  a, b = make(jax.random.key(0))
  matmul = jax.jit(lambda x, y: x @ y, in_shardings=(data, repl), out_shardings=data)
  return 2.0 * rows * n * n / _best_seconds(matmul, (a, b), repeats)


def _best_seconds(fn, args, repeats: int) -> float:
  """Shortest wall time of fn(*args) over `repeats` calls after one untimed call (which
  compiles)."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return min(times)


def scoring_flops(users: int, items: int, hidden: int) -> float:
  """FLOPs of scoring every user against every item: the dense matmul bound of full ranking."""
  return 2.0 * users * items * hidden


def scoring_matmul_flops_per_s(mesh, users_per_device: int, items: int, hidden: int,
                               repeats: int = 7) -> float:
  """Best FLOP/s of the bare scoring matmul of one ranking batch: [users, hidden] x
  [hidden, items], users split over the mesh. The ceiling of full ranking at this shape,
  beside the square matmul above (a thin inner dimension keeps it well below that)."""
  rows = users_per_device * mesh.size
  data, repl = parallel.data_sharded(mesh), parallel.replicated(mesh)
  make = jax.jit(lambda k: (jax.random.normal(k, (rows, hidden)),
                            jax.random.normal(k, (items, hidden))), out_shardings=(data, repl))
  users, table = make(jax.random.key(1))
  scores = jax.jit(lambda u, t: u @ t.T, in_shardings=(data, repl), out_shardings=data)
  return 2.0 * rows * items * hidden / _best_seconds(scores, (users, table), repeats)


def ranking_step_seconds(mesh, users: int, items: int, hidden: int, *, batch: int,
                         method: str, top_k: int = 0, history: int = 50,
                         chunk_size: int = 2048, repeats: int = 3) -> float:
  """Best seconds of `metrics.full_ranking` alone for `users` given user vectors (random
  normal, as are the table's `items` + 2 rows), in batches of `batch` users split over the
  mesh with the table on every device, as evaluation ranks: the ranking step without the
  encoder that makes the user vectors."""
  from s3rec_jax.evaluation import metrics  # pylint: disable=import-outside-toplevel
  data, repl = parallel.data_sharded(mesh), parallel.replicated(mesh)
  num_batches = -(-users // batch)
  make = jax.jit(lambda k: (jax.random.normal(k, (num_batches, batch, hidden)),
                            jax.random.normal(k, (items + 2, hidden)),
                            jax.random.randint(k, (num_batches, batch), 1, items + 1),
                            jax.random.randint(k, (num_batches, batch, history), 0, items + 1)))
  user_sets, table, answers, histories = make(jax.random.key(2))
  table = jax.device_put(table, repl)
  batches = [tuple(jax.device_put(x[b], data) for x in (user_sets, answers, histories))
             for b in range(num_batches)]
  axis = parallel.DATA_AXIS
  # Each device ranks its own users against its copy of the table (as the
  # evaluation step does); a custom call is not split by XLA's partitioner.
  rank = jax.jit(jax.shard_map(
      lambda u, t, a, h: metrics.full_ranking(
          u, t, a, h, num_items=items, chunk_size=chunk_size, top_k=top_k, method=method),
      mesh=mesh, in_specs=(P(axis), P(), P(axis), P(axis)), out_specs=P(axis),
      check_vma=False))

  def one_pass():
    return [rank(u, table, a, h) for u, a, h in batches]

  return _best_seconds(lambda: one_pass(), (), repeats)


def peak_rss_gib() -> float:
  """Peak resident set size of this process so far (ru_maxrss is KiB on Linux)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def cpu_model() -> str:
  """The CPU's model name, to print beside every figure (machines differ)."""
  return provenance.cpu_model()
