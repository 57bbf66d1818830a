"""The next-item loss forms against numpy: sampled softmax with the log-Q correction."""

import jax
import jax.numpy as jnp
import numpy as np

from s3rec_jax import objectives
from s3rec_jax.objectives import next_item

H, L, ITEMS = 5, 4, 9


def test_sampled_softmax_is_log_q_corrected_cross_entropy():
  rng = np.random.default_rng(0)
  out = rng.normal(size=(2, L, H)).astype(np.float32)
  table = rng.normal(size=(ITEMS + 2, H)).astype(np.float32)
  targets = np.array([[0, 3, 5, 3], [0, 0, 7, 1]], np.int32)
  log_q = next_item.item_log_q(targets, ITEMS + 2)
  k = 6
  key = jax.random.key(4)
  options = objectives.ObjectiveOptions(
      mask_id=ITEMS + 1, num_items=ITEMS,
      settings=objectives.settings_tuple({"next_item": {"num_negatives": k}}))
  inputs = objectives.ObjectiveInputs(
      {"sequence": jnp.asarray(out)}, {"item_embeddings": {"embedding": jnp.asarray(table)}},
      {"targets": jnp.asarray(targets)}, {"item_log_q": jnp.asarray(log_q)}, key, options)
  got = float(objectives.get("next_item", "sampled_softmax").fn(inputs))
  # The same draws (inverse CDF of Q), then the loss by hand in float64.
  cdf = np.cumsum(np.exp(log_q.astype(np.float64)))
  u = np.asarray(jax.random.uniform(key, (k,))) * cdf[-1]
  negatives = np.clip(np.searchsorted(cdf, u, side="right"), 1, ITEMS)
  assert set(negatives) <= set(range(1, ITEMS + 1))
  q = np.exp(log_q.astype(np.float64))
  want = 0.0
  for b, t in zip(*np.nonzero(targets)):
    y = targets[b, t]
    h = out[b, t].astype(np.float64)
    pos = h @ table[y] - np.log(k * q[y])
    negs = [h @ table[n] - np.log(k * q[n]) for n in negatives if n != y]
    want += np.log(np.exp(pos) + np.sum(np.exp(negs))) - pos
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_sampled_softmax_scores_in_bfloat16_under_bfloat16_compute():
  rng = np.random.default_rng(1)
  out = jnp.asarray(rng.normal(size=(2, L, H)).astype(np.float32))
  table = jnp.asarray(rng.normal(size=(ITEMS + 2, H)).astype(np.float32))
  targets = np.array([[0, 3, 5, 3], [0, 0, 7, 1]], np.int32)
  log_q = jnp.asarray(next_item.item_log_q(targets, ITEMS + 2))
  loss = objectives.get("next_item", "sampled_softmax").fn

  def total(dtype):
    options = objectives.ObjectiveOptions(
        mask_id=ITEMS + 1, num_items=ITEMS, compute_dtype=dtype,
        settings=objectives.settings_tuple({"next_item": {"num_negatives": 6}}))
    return lambda o, t: loss(objectives.ObjectiveInputs(
        {"sequence": o}, {"item_embeddings": {"embedding": t}}, {"targets": jnp.asarray(targets)},
        {"item_log_q": log_q}, jax.random.key(4), options))

  low, high = total("bfloat16"), total("float32")
  assert "bf16" in jax.jit(low).lower(out, table).as_text()
  assert "bf16" not in jax.jit(high).lower(out, table).as_text()
  got, want = float(low(out, table)), float(high(out, table))
  assert got != want
  np.testing.assert_allclose(got, want, rtol=2e-2)


def test_item_log_q_follows_training_frequency():
  log_q = next_item.item_log_q(np.array([[1, 1, 2, 0]]), 5, smoothing=1.0)
  q = np.exp(log_q)
  np.testing.assert_allclose(q, [0, 3 / 6, 2 / 6, 1 / 6, 0], rtol=1e-6)   # padding, mask: never
