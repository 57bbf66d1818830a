"""Chunked catalogue cross-entropy against the naive full-softmax computation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s3rec_jax.ops import catalogue_softmax


def _naive(queries, table, targets, num_items):
  logits = queries @ table[1:num_items + 1].T
  return jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(
      logits, (targets - 1)[:, None], axis=1)[:, 0]


def _problem(seed, num_queries=7, item_size=23, hidden=5):
  rng = np.random.default_rng(seed)
  queries = jnp.asarray(rng.normal(size=(num_queries, hidden)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(item_size, hidden)), jnp.float32)
  num_items = item_size - 2   # row 0 padding, the last row a mask token
  targets = jnp.asarray(rng.integers(1, num_items + 1, size=num_queries), jnp.int32)
  weights = jnp.asarray(rng.random(num_queries), jnp.float32)
  return queries, table, targets, weights, num_items


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 21, 1000])
def test_loss_and_gradients_equal_the_naive_softmax(chunk_size):
  queries, table, targets, weights, num_items = _problem(0)

  def total(fn):
    return lambda q, t: jnp.sum(weights * fn(q, t))

  chunked = total(lambda q, t: catalogue_softmax.cross_entropy(
      q, t, targets, num_items=num_items, chunk_size=chunk_size))
  naive = total(lambda q, t: _naive(q, t, targets, num_items))
  np.testing.assert_allclose(
      catalogue_softmax.cross_entropy(queries, table, targets, num_items=num_items,
                                      chunk_size=chunk_size),
      _naive(queries, table, targets, num_items), rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.grad(chunked, argnums=(0, 1)))(queries, table)
  want = jax.grad(naive, argnums=(0, 1))(queries, table)
  for g, w in zip(got, want):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  # Padding and the mask row are no candidates: no gradient reaches them.
  assert not np.any(got[1][0]) and not np.any(got[1][-1])


def test_large_scores_stay_finite():
  queries, table, targets, _, num_items = _problem(1)
  loss = catalogue_softmax.cross_entropy(queries * 300.0, table, targets, num_items=num_items,
                                         chunk_size=4)
  assert np.all(np.isfinite(loss)) and np.all(np.asarray(loss) >= -1e-3)


def test_bad_sizes_are_rejected():
  queries, table, targets, _, _ = _problem(2)
  with pytest.raises(ValueError, match="num_items"):
    catalogue_softmax.cross_entropy(queries, table, targets, num_items=table.shape[0])
  with pytest.raises(ValueError, match="chunk_size"):
    catalogue_softmax.cross_entropy(queries, table, targets, num_items=3, chunk_size=0)


@pytest.mark.parametrize("chunk_size", [4, 1000])
def test_bfloat16_matmuls_stay_near_float32(chunk_size):
  """matmul_dtype=bfloat16 (model.compute_dtype): the scoring matmuls in bfloat16 with float32
  accumulation; loss and gradients stay float32 and within bfloat16's rounding of float32."""
  queries, table, targets, weights, num_items = _problem(3, num_queries=16, hidden=32)

  def total(matmul_dtype):
    return lambda q, t: jnp.sum(weights * catalogue_softmax.cross_entropy(
        q, t, targets, num_items=num_items, chunk_size=chunk_size, matmul_dtype=matmul_dtype))

  low, high = total("bfloat16"), total(None)
  assert "bf16" in jax.jit(jax.grad(low, argnums=(0, 1))).lower(queries, table).as_text()
  value, grads = jax.value_and_grad(low, argnums=(0, 1))(queries, table)
  want, want_grads = jax.value_and_grad(high, argnums=(0, 1))(queries, table)
  assert value.dtype == jnp.float32 and value != want
  np.testing.assert_allclose(value, want, rtol=2e-2)
  for got, expected in zip(grads, want_grads):
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, atol=5e-2 * float(jnp.max(jnp.abs(expected))))
