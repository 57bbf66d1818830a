"""Softmax cross-entropy over a whole item catalogue, in chunks of the catalogue.

For queries q_t [T, H] and the item table E [N, H], the loss of query t is

    loss_t = log sum_{j in C} exp(q_t . e_j)  -  q_t . e_{y_t}

over the candidate ids C = 1..num_items (row 0 is padding; rows above
num_items, such as the mask token, are never candidates). Computed naively
this holds the [T, N] logits, and autodiff keeps them for the backward pass,
so memory grows with the catalogue. Here a scan runs over chunks of
`chunk_size` rows with a running (max, sum) logsumexp, and a custom VJP
recomputes each chunk's logits in the backward pass: memory is O(T * chunk)
whatever N is, for the price of computing the logits twice. When one chunk
covers the catalogue, its logits are kept for the backward pass instead.

Gradients (g_t the cotangent of loss_t, p_tj = softmax probability):

    d q_t = g_t (sum_j p_tj e_j - e_{y_t})
    d e_j = sum_t g_t (p_tj - [j = y_t]) q_t
"""

from __future__ import annotations

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from s3rec_jax.model import item_table
from s3rec_jax.ops import kernels
from s3rec_jax.ops import methods

# Catalogue rows per chunk. Small enough that a chunk's [T, chunk] logits stay
# in a core's cache for the max, exp and backward passes over them: on the
# 2-core development CPU, the loss and its gradients at Beauty's shape took a
# quarter less time at 128-256 rows than at 4,096 (benchmarks/ce_chunks.py).
DEFAULT_CHUNK_SIZE = 256


def _chunking(num_rows: int, chunk_size: int) -> tuple[int, int]:
  """(chunk rows, number of chunks) covering `num_rows` rows."""
  chunk = max(1, min(chunk_size, num_rows))
  return chunk, math.ceil(num_rows / chunk)


def _scanned(table: jax.Array, num_items: int, whole: bool) -> tuple[int, int]:
  """(first local row scanned, rows scanned): ids 1..num_items of a whole table, or every
  row of a block of a table split over devices."""
  return (1, num_items) if whole else (0, table.shape[0])


def _chunked_rows(table, first_id, num_items, chunk_size, whole):
  """The scanned rows as [num_chunks, chunk, H] (zero rows past the table) and the mask of
  real candidates (ids 1..num_items) [num_chunks, chunk]; `first_id` is the id of the
  table's row 0."""
  start, count = _scanned(table, num_items, whole)
  chunk, num_chunks = _chunking(count, chunk_size)
  needed = start + num_chunks * chunk
  num_rows = table.shape[0]
  if num_rows < needed:
    table = jnp.pad(table, ((0, needed - table.shape[0]), (0, 0)))
  rows = table[start:needed].reshape(num_chunks, chunk, table.shape[1])
  local = start + jnp.arange(num_chunks * chunk, dtype=jnp.int32).reshape(num_chunks, chunk)
  ids = first_id + local
  # Zero rows padded past a block are not the next block's items.
  return rows, (ids >= 1) & (ids <= num_items) & (local < num_rows)


def matmul(a, b, matmul_dtype=None):
  """a @ b with its operands in `matmul_dtype` (None or "float32": as they are), accumulated
  in float32."""
  if matmul_dtype in (None, "float32"):
    return a @ b
  return jnp.matmul(a.astype(matmul_dtype), b.astype(matmul_dtype),
                    preferred_element_type=jnp.float32)


def _masked_logits(queries, rows, valid, matmul_dtype=None):
  return jnp.where(valid[None, :], matmul(queries, rows.T, matmul_dtype), -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _logsumexp(queries, table, first_id, num_items, chunk_size, whole, matmul_dtype):
  lse, _ = _logsumexp_fwd(queries, table, first_id, num_items, chunk_size, whole, matmul_dtype)
  return lse


def _logsumexp_fwd(queries, table, first_id, num_items, chunk_size, whole, matmul_dtype):
  rows, valid = _chunked_rows(table, first_id, num_items, chunk_size, whole)
  num_chunks = rows.shape[0]
  num_queries = queries.shape[0]

  def body(carry, xs):
    running_max, running_sum = carry
    logits = _masked_logits(queries, *xs, matmul_dtype)
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
    # A block without candidates keeps max -inf: shift by 0 there, not by -inf.
    shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    running_sum = (running_sum * jnp.exp(running_max - shift)
                   + jnp.sum(jnp.exp(logits - shift[:, None]), axis=1))
    # One chunk: keep its logits for the backward pass instead of recomputing them.
    return (new_max, running_sum), (logits if num_chunks == 1 else None)

  init = (jnp.full((num_queries,), -jnp.inf, queries.dtype),
          jnp.zeros((num_queries,), queries.dtype))
  (running_max, running_sum), kept = lax.scan(body, init, (rows, valid))
  lse = running_max + jnp.log(running_sum)       # -inf where no row is a candidate
  return lse, (queries, table, first_id, lse, kept)


def _logsumexp_bwd(num_items, chunk_size, whole, matmul_dtype, residuals, g):
  queries, table, first_id, lse, kept = residuals
  rows, valid = _chunked_rows(table, first_id, num_items, chunk_size, whole)
  safe_lse = jnp.where(jnp.isfinite(lse), lse, 0.0)

  def body(d_queries, xs):
    chunk_rows, chunk_valid, logits = xs
    if logits is None:
      logits = _masked_logits(queries, chunk_rows, chunk_valid, matmul_dtype)
    weighted = jnp.exp(logits - safe_lse[:, None]) * g[:, None]      # 0 where masked (-inf)
    return (d_queries + matmul(weighted, chunk_rows, matmul_dtype),
            matmul(weighted.T, queries, matmul_dtype))

  d_queries, d_chunks = lax.scan(body, jnp.zeros_like(queries), (rows, valid, kept))
  # The scanned rows start at local row `start`: the table's gradient is zeros
  # before them, then the chunks' rows, cut or zero-padded to the table's length.
  start, _ = _scanned(table, num_items, whole)
  d_rows = d_chunks.reshape(-1, table.shape[1])[:table.shape[0] - start]
  d_table = jnp.pad(d_rows, ((start, table.shape[0] - start - d_rows.shape[0]), (0, 0)))
  return d_queries, d_table, None


_logsumexp.defvjp(_logsumexp_fwd, _logsumexp_bwd)

# How the logsumexp over the catalogue runs: an XLA scan over chunks, or the
# native CPU kernel (s3rec_jax/ops/kernels/catalogue_softmax_cpu.cc) whose tiles of
# logits never leave the registers.
METHODS = methods.METHODS
# The kernel's backward pass works on whole vectors of hidden units.
FUSED_HIDDEN_MULTIPLE = methods.FUSED_HIDDEN_MULTIPLE


def _first_id_operand(first_id):
  return jnp.reshape(jnp.asarray(first_id, jnp.int32), (1,))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _fused_logsumexp(queries, table, first_id, num_items):
  lse, _ = _fused_logsumexp_fwd(queries, table, first_id, num_items)
  return lse


def _fused_logsumexp_fwd(queries, table, first_id, num_items):
  forward, _ = kernels.load("catalogue_softmax_cpu")
  lse = jax.ffi.ffi_call(forward, jax.ShapeDtypeStruct(queries.shape[:1], jnp.float32),
                         vmap_method="sequential")(
      queries, table, _first_id_operand(first_id), num_items=np.int64(num_items),
      threads=np.int64(kernels.threads_per_device()))
  return lse, (queries, table, first_id, lse)


def _fused_logsumexp_bwd(num_items, residuals, g):
  queries, table, first_id, lse = residuals
  _, backward = kernels.load("catalogue_softmax_cpu")
  d_queries, d_table = jax.ffi.ffi_call(
      backward, (jax.ShapeDtypeStruct(queries.shape, jnp.float32),
                 jax.ShapeDtypeStruct(table.shape, jnp.float32)),
      vmap_method="sequential")(
      queries, table, _first_id_operand(first_id), lse, g.astype(jnp.float32),
      num_items=np.int64(num_items), threads=np.int64(kernels.threads_per_device()))
  return d_queries, d_table, None


_fused_logsumexp.defvjp(_fused_logsumexp_fwd, _fused_logsumexp_bwd)


def _block_logsumexp(queries, table, first_id, num_items, chunk_size, whole, matmul_dtype,
                     method):
  """logsumexp of each query over the table's candidate rows (ids 1..num_items; with
  `whole`, row i is id i; otherwise row i is id first_id + i)."""
  if method == "scan":
    return _logsumexp(queries, table, first_id, num_items, chunk_size, whole, matmul_dtype)
  # Both readings agree: a whole table's row 0 is id 0, and rows past num_items
  # (the mask token) are never candidates.
  return _fused_logsumexp(queries.astype(jnp.float32), table.astype(jnp.float32),
                          jnp.int32(0) if whole else first_id, num_items)


def cross_entropy(queries: jax.Array, table: jax.Array, targets: jax.Array, *, num_items: int,
                  chunk_size: int = DEFAULT_CHUNK_SIZE, axis_name: str | None = None,
                  matmul_dtype: str | None = None, method: str = "scan") -> jax.Array:
  """Per-query softmax cross-entropy over item ids 1..num_items; see the module docstring.

  With `axis_name` (inside shard_map), `table` is this device's block of a
  table split by rows over that axis (s3rec_jax.model.item_table): every device
  scores every device's queries against its own rows, the per-block
  logsumexps are combined over the axis, and each device gets its own
  queries' losses. The same FLOPs as a replicated table, 1/N of its memory.

  Args:
    queries: [T, H] float query vectors (e.g. the encoder output at each target position).
    table: [item_size, H] item embeddings, item_size > num_items (with
      `axis_name`: this device's [S, H] block).
    targets: [T] int target ids in 1..num_items (not checked at run time; padded
      queries may use any valid id and a zero weight outside).
    num_items: number of real items (static).
    chunk_size: catalogue rows scored at a time (static); >= num_items is one chunk.
    axis_name: the mesh axis the table's rows are split over, or None.
    matmul_dtype: e.g. "bfloat16": the catalogue-scoring matmuls (forward and
      backward) take their operands in that dtype and accumulate in float32;
      the logsumexp, softmax weights and losses stay float32. None or "float32":
      the inputs'.
    method: "scan" (XLA) or "fused_cpu" (the native CPU kernel: float32, CPU
      devices only, hidden size a multiple of 16; `chunk_size` and
      `matmul_dtype` are the scan's). The same losses and gradients up to
      float rounding (its exp is a polynomial good to about 2e-7).

  Returns:
    [T] losses, differentiable in `queries` and `table`.
  """
  chex.assert_rank([queries, table, targets], [2, 2, 1])
  chex.assert_equal_shape_prefix([queries, targets], 1)
  chex.assert_equal_shape_suffix([queries, table], 1)
  rows = table.shape[0] * (1 if axis_name is None else lax.axis_size(axis_name))
  if not 1 <= num_items < rows:
    raise ValueError(f"need 1 <= num_items < item_size; got {num_items}, {rows}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  if method not in METHODS:
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
  if method == methods.FUSED_CPU and queries.shape[1] % FUSED_HIDDEN_MULTIPLE:
    raise ValueError(f"method 'fused_cpu' needs a hidden size that is a multiple of "
                     f"{FUSED_HIDDEN_MULTIPLE}, got {queries.shape[1]}")
  dtype = jnp.result_type(queries.dtype, table.dtype)
  queries, table, targets = queries.astype(dtype), table.astype(dtype), targets.astype(jnp.int32)
  if axis_name is None:
    lse = _block_logsumexp(queries, table, jnp.int32(0), num_items, chunk_size, True,
                           matmul_dtype, method)
    return lse - jnp.sum(queries * jnp.take(table, targets, axis=0), axis=1)
  everyone = lax.all_gather(queries, axis_name, tiled=True)              # [N * T, H]
  block_lse = _block_logsumexp(everyone, table, item_table.block_offset(table, axis_name),
                               num_items, chunk_size, False, matmul_dtype, method)
  top = lax.pmax(lax.stop_gradient(block_lse), axis_name)
  lse = top + jnp.log(lax.psum(jnp.exp(block_lse - top), axis_name))
  target_rows, _ = item_table.owned_rows(table, lax.all_gather(targets, axis_name, tiled=True),
                                         axis_name)
  target_logit = lax.psum(jnp.sum(everyone * target_rows, axis=1), axis_name)
  losses = lse - target_logit
  return lax.dynamic_slice_in_dim(losses, lax.axis_index(axis_name) * queries.shape[0],
                                  queries.shape[0])
