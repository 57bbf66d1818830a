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
from jax import lax


def _chunking(num_items: int, chunk_size: int) -> tuple[int, int]:
  """(chunk rows, number of chunks) covering ids 1..num_items."""
  chunk = max(1, min(chunk_size, num_items))
  return chunk, math.ceil(num_items / chunk)


def _chunked_rows(table: jax.Array, num_items: int, chunk: int, num_chunks: int):
  """Rows of ids 1 .. num_chunks * chunk as [num_chunks, chunk, H] (zero rows past the
  table) and the mask of real candidates (ids <= num_items) [num_chunks, chunk]."""
  needed = 1 + num_chunks * chunk
  if table.shape[0] < needed:
    table = jnp.pad(table, ((0, needed - table.shape[0]), (0, 0)))
  rows = table[1:needed].reshape(num_chunks, chunk, table.shape[1])
  ids = 1 + jnp.arange(num_chunks * chunk, dtype=jnp.int32).reshape(num_chunks, chunk)
  return rows, ids <= num_items


def _masked_logits(queries, rows, valid):
  return jnp.where(valid[None, :], queries @ rows.T, -jnp.inf)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _cross_entropy(queries, table, targets, num_items, chunk_size):
  loss, _ = _cross_entropy_fwd(queries, table, targets, num_items, chunk_size)
  return loss


def _cross_entropy_fwd(queries, table, targets, num_items, chunk_size):
  chunk, num_chunks = _chunking(num_items, chunk_size)
  rows, valid = _chunked_rows(table, num_items, chunk, num_chunks)
  num_queries = queries.shape[0]

  def body(carry, xs):
    running_max, running_sum = carry
    logits = _masked_logits(queries, *xs)
    new_max = jnp.maximum(running_max, jnp.max(logits, axis=1))
    running_sum = (running_sum * jnp.exp(running_max - new_max)
                   + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=1))
    # One chunk: keep its logits for the backward pass instead of recomputing them.
    return (new_max, running_sum), (logits if num_chunks == 1 else None)

  init = (jnp.full((num_queries,), -jnp.inf, queries.dtype),
          jnp.zeros((num_queries,), queries.dtype))
  (running_max, running_sum), kept = lax.scan(body, init, (rows, valid))
  lse = running_max + jnp.log(running_sum)
  target_rows = jnp.take(table, targets, axis=0)
  loss = lse - jnp.sum(queries * target_rows, axis=1)
  return loss, (queries, table, targets, lse, kept)


def _cross_entropy_bwd(num_items, chunk_size, residuals, g):
  queries, table, targets, lse, kept = residuals
  chunk, num_chunks = _chunking(num_items, chunk_size)
  rows, valid = _chunked_rows(table, num_items, chunk, num_chunks)

  def body(d_queries, xs):
    chunk_rows, chunk_valid, logits = xs
    if logits is None:
      logits = _masked_logits(queries, chunk_rows, chunk_valid)
    weighted = jnp.exp(logits - lse[:, None]) * g[:, None]      # 0 where masked (-inf)
    return d_queries + weighted @ chunk_rows, weighted.T @ queries

  d_queries, d_chunks = lax.scan(body, jnp.zeros_like(queries), (rows, valid, kept))
  # Chunk rows are ids 1, 2, ...: the table's gradient is row 0 (padding), then
  # the chunks' rows, cut or zero-padded to the table's length.
  d_rows = d_chunks.reshape(-1, table.shape[1])[:table.shape[0] - 1]
  d_table = jnp.pad(d_rows, ((1, table.shape[0] - 1 - d_rows.shape[0]), (0, 0)))
  # The target term -q . e_y.
  d_queries = d_queries - g[:, None] * jnp.take(table, targets, axis=0)
  d_table = d_table.at[targets].add(-g[:, None] * queries)
  return d_queries, d_table, None


_cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


def cross_entropy(queries: jax.Array, table: jax.Array, targets: jax.Array, *, num_items: int,
                  chunk_size: int = 4096) -> jax.Array:
  """Per-query softmax cross-entropy over item ids 1..num_items; see the module docstring.

  Args:
    queries: [T, H] float query vectors (e.g. the encoder output at each target position).
    table: [item_size, H] item embeddings, item_size > num_items.
    targets: [T] int target ids in 1..num_items (not checked at run time; padded
      queries may use any valid id and a zero weight outside).
    num_items: number of real items (static).
    chunk_size: catalogue rows scored at a time (static); >= num_items is one chunk.

  Returns:
    [T] losses, differentiable in `queries` and `table`.
  """
  chex.assert_rank([queries, table, targets], [2, 2, 1])
  chex.assert_equal_shape_prefix([queries, targets], 1)
  chex.assert_equal_shape_suffix([queries, table], 1)
  if not 1 <= num_items < table.shape[0]:
    raise ValueError(f"need 1 <= num_items < item_size; got {num_items}, {table.shape[0]}")
  if chunk_size < 1:
    raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
  dtype = jnp.result_type(queries.dtype, table.dtype)
  return _cross_entropy(queries.astype(dtype), table.astype(dtype), targets.astype(jnp.int32),
                        num_items, chunk_size)
