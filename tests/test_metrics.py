"""Tests for s3rec_jax.evaluation.metrics: ranks, metric sums and chunked full ranking."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from s3rec_jax.evaluation import metrics


# ---------------------------------------------------------------------------
# Reference implementations (plain numpy, one user at a time).


def np_full_ranking(user, table, answers, history, num_items, top_k):
  """Independent reference: scores in float64, explicit candidate sets."""
  scores = user.astype(np.float64) @ table[1:num_items + 1].astype(np.float64).T
  ids = np.arange(1, num_items + 1)
  ranks, tops, top_scores = [], [], []
  for b in range(user.shape[0]):
    keep = np.ones(num_items, bool)
    for h in history[b]:
      if h != 0 and h != answers[b]:
        keep[h - 1] = False
    row = scores[b]
    ans = row[answers[b] - 1]
    others = keep & (ids != answers[b])
    ranks.append(int(np.sum(others & (row >= ans))))
    cand_ids, cand_scores = ids[keep], row[keep]
    order = np.lexsort((cand_ids, -cand_scores))[:top_k]  # best score, then lowest id
    pad = top_k - len(order)  # fewer candidates than top_k: id 0, score -inf
    tops.append(np.concatenate([cand_ids[order], np.zeros(pad, int)]))
    top_scores.append(np.concatenate([cand_scores[order], np.full(pad, -np.inf)]))
  return np.array(ranks), np.array(tops), np.array(top_scores)


def quantized(rng, shape, levels=3, scale=1.0):
  """Small-integer multiples of `scale`: float32 dot products are then exact, so
  any summation order (numpy, XLA, any chunking) gives bit-identical scores."""
  return (rng.integers(-levels, levels + 1, size=shape) * scale).astype(np.float32)


def random_case(seed, batch=7, hidden=5, num_items=53, hist_len=12):
  rng = np.random.default_rng(seed)
  item_size = num_items + 2  # padding row 0 and a mask row at the end
  user = quantized(rng, (batch, hidden))
  table = quantized(rng, (item_size, hidden))
  answers = rng.integers(1, num_items + 1, size=batch).astype(np.int32)
  history = rng.integers(0, num_items + 1, size=(batch, hist_len)).astype(np.int32)
  history[:, 3] = history[:, 2]  # repeats
  history[::2, 5] = answers[::2]  # the answer inside the history for some users
  history[1, :] = 0  # an empty history
  # Make the mask row score highest so that a leak of it would show up.
  table[-1] = 100.0
  return user, table, answers, history


# ---------------------------------------------------------------------------
# rank_of_first / metric_sums / finalize.


def test_rank_of_first_hand_made():
  scores = jnp.array([
      [5.0, 1.0, 2.0, 3.0],  # best -> 0
      [2.0, 3.0, 1.0, 0.0],  # one above -> 1
      [2.0, 2.0, 1.0, 0.0],  # tied with one negative -> 1
      [1.0, 1.0, 1.0, 1.0],  # all tied -> C - 1
      [0.0, 1.0, 2.0, 3.0],  # worst -> 3
      [jnp.nan, 1.0, 2.0, 3.0],  # NaN answer is never favoured
  ])
  ranks = metrics.rank_of_first(scores)
  assert ranks.dtype == jnp.int32
  np.testing.assert_array_equal(ranks, [0, 1, 1, 3, 3, 3])
  np.testing.assert_array_equal(jax.jit(metrics.rank_of_first)(scores), ranks)


def test_metric_sums_hand_computed():
  ranks = jnp.array([0, 1, 4, 9, 20, 0], jnp.int32)
  weights = jnp.array([1, 1, 1, 1, 1, 0], jnp.float32)  # last user is padding
  names = ("HR@1", "HR@5", "NDCG@5", "HR@10", "NDCG@10", "MRR", "HR@20", "NDCG@20")
  sums = jax.jit(functools.partial(metrics.metric_sums, names=names))(ranks, weights)
  assert set(sums) == set(names) | {"count"}
  inv = lambda r: 1.0 / math.log2(r + 2)
  expected = {
      "count": 5.0,
      "HR@1": 1.0,
      "HR@5": 3.0,
      "NDCG@5": 1.0 + inv(1) + inv(4),
      "HR@10": 4.0,
      "NDCG@10": 1.0 + inv(1) + inv(4) + inv(9),
      "HR@20": 4.0,  # rank 20 is not < 20
      "NDCG@20": 1.0 + inv(1) + inv(4) + inv(9),
      "MRR": 1.0 + 1 / 2 + 1 / 5 + 1 / 10 + 1 / 21,
  }
  for name, value in expected.items():
    np.testing.assert_allclose(float(sums[name]), value, rtol=1e-6, err_msg=name)
  # Single-user NDCG values.
  one = metrics.metric_sums(jnp.array([0, 1]), jnp.array([1.0, 0.0]), ["NDCG@5"])
  np.testing.assert_allclose(float(one["NDCG@5"]), 1.0)
  one = metrics.metric_sums(jnp.array([0, 1]), jnp.array([0.0, 1.0]), ["NDCG@5"])
  np.testing.assert_allclose(float(one["NDCG@5"]), 1 / math.log2(3), rtol=1e-6)

  means = metrics.finalize(jax.device_get(sums))
  assert "count" not in means
  np.testing.assert_allclose(means["HR@5"], 3.0 / 5.0)
  np.testing.assert_allclose(means["MRR"], expected["MRR"] / 5.0, rtol=1e-6)


def test_metric_names_validated():
  for bad in ("hr@5", "HR@0", "NDCG", "HR@", "Recall@10", "MRR@5", "HR@5 "):
    with pytest.raises(ValueError, match="MRR"):
      metrics.metric_sums(jnp.zeros(2, jnp.int32), jnp.ones(2), [bad])
  assert metrics.parse_metric("NDCG@20") == ("NDCG", 20)
  assert metrics.parse_metric("MRR") == ("MRR", None)
  for name in metrics.SAMPLED_METRICS + metrics.FULL_METRICS:
    metrics.parse_metric(name)


def test_finalize_errors():
  with pytest.raises(ValueError):
    metrics.finalize({"HR@1": 1.0})
  with pytest.raises(ValueError):
    metrics.finalize({"HR@1": 0.0, "count": np.float32(0)})


# ---------------------------------------------------------------------------
# Sampled protocol.


def test_sampled_scores_and_collapsed_model():
  rng = np.random.default_rng(0)
  batch, hidden, num_items, num_cands = 6, 8, 300, 100
  user = rng.normal(size=(batch, hidden)).astype(np.float32)
  table = rng.normal(size=(num_items + 2, hidden)).astype(np.float32)
  cands = rng.integers(1, num_items + 1, size=(batch, num_cands)).astype(np.int32)
  scores = jax.jit(metrics.sampled_scores)(user, table, cands)
  np.testing.assert_allclose(scores, np.einsum("bh,bch->bc", user, table[cands]),
                             rtol=1e-5, atol=1e-5)

  # Collapsed model: every item embedding equal -> every score equal -> the
  # answer ranks last among its 100 candidates and HR@1 = 0.
  collapsed = np.broadcast_to(rng.normal(size=hidden), table.shape).astype(np.float32)
  ranks = metrics.rank_of_first(metrics.sampled_scores(user, collapsed, cands))
  np.testing.assert_array_equal(ranks, num_cands - 1)
  # The same with the table's fingerprints computed once beforehand.
  fingerprints = metrics.table_fingerprints(jnp.asarray(collapsed), chunk_size=64)
  np.testing.assert_array_equal(
      metrics.rank_of_first(metrics.sampled_scores(user, collapsed, cands, fingerprints)), ranks)
  np.testing.assert_allclose(
      metrics.sampled_scores(user, table, cands, metrics.table_fingerprints(jnp.asarray(table))),
      scores, rtol=1e-6, atol=1e-6)
  sums = metrics.metric_sums(ranks, jnp.ones(batch), metrics.SAMPLED_METRICS)
  assert float(sums["HR@1"]) == 0.0 and float(sums["HR@10"]) == 0.0


# ---------------------------------------------------------------------------
# Full ranking.


def run_full(user, table, answers, history, num_items, chunk_size, top_k,
             precomputed_fingerprints=False):
  fn = jax.jit(functools.partial(
      metrics.full_ranking, num_items=num_items, chunk_size=chunk_size, top_k=top_k))
  fingerprints = (metrics.table_fingerprints(jnp.asarray(table), chunk_size=5)
                  if precomputed_fingerprints else None)
  return jax.device_get(fn(user, table, answers, history, fingerprints=fingerprints))


def test_full_ranking_matches_numpy_for_any_chunk_size():
  user, table, answers, history = random_case(0)
  num_items, top_k = 53, 10
  want_ranks, want_items, want_scores = np_full_ranking(
      user, table, answers, history, num_items, top_k)
  assert len(np.unique(want_ranks)) > 2  # a non-trivial case
  for chunk_size in (1, 7, 16, 53, 100):
    ranks, items, scores = run_full(user, table, answers, history, num_items,
                                    chunk_size, top_k)
    assert ranks.dtype == np.int32 and items.dtype == np.int32
    np.testing.assert_array_equal(ranks, want_ranks, err_msg=f"chunk {chunk_size}")
    np.testing.assert_array_equal(items, want_items, err_msg=f"chunk {chunk_size}")
    np.testing.assert_array_equal(scores, want_scores, err_msg=f"chunk {chunk_size}")


def test_full_ranking_float_data_and_small_batch_chunks():
  # Unquantized scores (no exact ties); batch larger than the chunk, so the
  # answers take several scan steps.
  rng = np.random.default_rng(3)
  batch, hidden, num_items, top_k = 9, 6, 40, 5
  user = rng.normal(size=(batch, hidden)).astype(np.float32)
  table = rng.normal(size=(num_items + 2, hidden)).astype(np.float32)
  answers = rng.integers(1, num_items + 1, size=batch).astype(np.int32)
  history = rng.integers(0, num_items + 1, size=(batch, 8)).astype(np.int32)
  want_ranks, want_items, want_scores = np_full_ranking(
      user, table, answers, history, num_items, top_k)
  for chunk_size in (2, 11, 64):
    ranks, items, scores = run_full(user, table, answers, history, num_items,
                                    chunk_size, top_k)
    np.testing.assert_array_equal(ranks, want_ranks)
    np.testing.assert_array_equal(items, want_items)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_full_ranking_collapsed_model_ties():
  rng = np.random.default_rng(4)
  hidden, num_items = 8, 130
  user = rng.normal(size=(5, hidden)).astype(np.float32)
  table = np.broadcast_to(rng.normal(size=hidden), (num_items + 2, hidden)).astype(np.float32)
  answers = np.array([1, 7, 130, 15, 100], np.int32)
  history = np.array([[0, 0, 0],
                      [3, 3, 7],  # a repeat and the answer itself
                      [1, 2, 0],
                      [0, 0, 0],
                      [14, 16, 129]], np.int32)
  n_excluded = np.array([0, 1, 2, 0, 3])
  # Batch 1 takes XLA:CPU's matrix-vector path, whose tail columns round
  # differently (e.g. columns 96..99 of a 100-wide chunk).
  for batch, chunk_sizes, precomputed in ((5, (7, 256), False), (1, (100,), False),
                                          (5, (7,), True), (1, (100,), True)):
    for chunk_size in chunk_sizes:
      ranks, items, _ = run_full(user[:batch], table, answers[:batch], history[:batch],
                                 num_items, chunk_size, 3, precomputed)
      # Every remaining candidate ties with the answer and counts against it.
      np.testing.assert_array_equal(ranks, num_items - 1 - n_excluded[:batch])
      sums = metrics.metric_sums(jnp.asarray(ranks), jnp.ones(batch), metrics.FULL_METRICS)
      assert all(float(sums[name]) == 0.0 for name in metrics.FULL_METRICS)
      # Ties resolve to the lowest remaining ids.
      np.testing.assert_array_equal(items[0], [1, 2, 3])
      if batch == 5:
        np.testing.assert_array_equal(items[2], [3, 4, 5])
        np.testing.assert_array_equal(items[4], [1, 2, 3])


def test_fingerprints_equal_only_for_equal_rows():
  rng = np.random.default_rng(8)
  rows = rng.normal(size=(500, 16)).astype(np.float32)
  rows[10] = rows[3]
  rows[11] = rows[3]
  rows[11, 0] = -rows[11, 0]  # one sign flip: a different row
  rows[12, :] = 0.0
  rows[13, :] = -0.0  # scores like +0.0
  fps = np.asarray(metrics.row_fingerprints(jnp.asarray(rows)))
  keys = [tuple(f) for f in fps]
  assert keys[10] == keys[3] and keys[11] != keys[3] and keys[12] == keys[13]
  assert len(set(keys)) == 500 - 2
  # Permuting the positions within a row changes the fingerprint.
  assert tuple(np.asarray(metrics.row_fingerprints(jnp.asarray(rows[3, ::-1])))) != keys[3]
  bf16 = metrics.row_fingerprints(jnp.asarray(rows, jnp.bfloat16))
  assert bf16.shape == (500, 2) and bf16.dtype == jnp.uint32
  # Chunked over the whole table: the same fingerprints, whatever the chunk size.
  for chunk_size in (1, 7, 500, 4096):
    np.testing.assert_array_equal(metrics.table_fingerprints(jnp.asarray(rows), chunk_size), fps)


def test_full_ranking_when_the_history_holds_the_best_rows():
  # The history's rows score highest, one in each of several groups of 16 columns, so those
  # groups top the group maxima of the grouped top-k although their best row is no candidate.
  user, table, answers, history = random_case(11, batch=7, num_items=700, hist_len=12)
  history[:, :10] = np.arange(10) * 16 + 3
  user[:, 0] = 3.0
  table[history[0, :10], 0] = 50.0         # scores of 150 against at most 45 elsewhere
  want = np_full_ranking(user, table, answers, history, 700, 6)
  for chunk_size in (64, 700):
    got = run_full(user, table, answers, history, 700, chunk_size, 6)
    for g, w, name in zip(got, want, ("ranks", "items", "scores")):
      np.testing.assert_array_equal(g, w, err_msg=f"{name}, chunk {chunk_size}")


def test_full_ranking_top_k_larger_than_candidates():
  user, table, answers, history = random_case(5, num_items=6, hist_len=6)
  history[:] = 0
  history[0, :2] = [a for a in range(1, 7) if a != answers[0]][:2]
  ranks, items, scores = run_full(user, table, answers, history, 6, 4, top_k=8)
  assert sorted(items[0][:4].tolist()) == sorted(set(range(1, 7)) - set(history[0].tolist()))
  np.testing.assert_array_equal(items[0][4:], 0)
  assert np.all(np.isneginf(scores[0][4:]))
  assert np.all(items[1][:6] > 0) and np.all(items[1][6:] == 0)
  want = np_full_ranking(user, table, answers, history, 6, 8)
  for got, expected in zip((ranks, items, scores), want):
    np.testing.assert_array_equal(got, expected)


def test_full_ranking_ranks_only_with_top_k_0():
  user, table, answers, history = random_case(3, batch=9, num_items=700, hist_len=30)
  want_ranks, _, _ = np_full_ranking(user, table, answers, history, 700, 1)
  ranks, items, scores = run_full(user, table, answers, history, 700, 160, 0)
  np.testing.assert_array_equal(ranks, want_ranks)
  assert items.shape == scores.shape == (9, 0)


def test_full_ranking_rejects_bad_sizes():
  user, table, answers, history = random_case(0)
  with pytest.raises(ValueError, match="num_items"):
    metrics.full_ranking(user, table, answers, history, num_items=table.shape[0],
                         chunk_size=8, top_k=5)
  with pytest.raises(ValueError):
    metrics.full_ranking(user, table, answers, history, num_items=53,
                         chunk_size=0, top_k=5)


def _catalogue_sharded_ranking(user, table, answers, history, num_items, chunk_size, top_k,
                               precomputed_fingerprints):
  """full_ranking with the table's rows split over 4 devices (users on every device)."""
  mesh = Mesh(np.array(jax.devices()), ("data",))
  rows = -(-table.shape[0] // mesh.size) * mesh.size
  padded = np.zeros((rows, table.shape[1]), table.dtype)
  padded[:table.shape[0]] = table

  def body(user, block, answers, history):
    fingerprints = metrics.table_fingerprints(block, 3) if precomputed_fingerprints else None
    return metrics.full_ranking(user, block, answers, history, num_items=num_items,
                                chunk_size=chunk_size, top_k=top_k, fingerprints=fingerprints,
                                axis_name="data")
  fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P(), P()),
                             out_specs=P(), check_vma=False))
  return jax.device_get(fn(user, padded, answers, history))


@pytest.mark.parametrize("precomputed_fingerprints", [False, True])
def test_full_ranking_with_catalogue_split_over_devices(precomputed_fingerprints):
  assert len(jax.devices()) == 4, "tests/conftest.py should force 4 CPU devices"
  user, table, answers, history = random_case(9, batch=6)
  num_items, top_k = 53, 10
  want = np_full_ranking(user, table, answers, history, num_items, top_k)
  for chunk_size in (1, 5, 14, 100):   # 14 rows per device: one chunk, or several
    got = _catalogue_sharded_ranking(user, table, answers, history, num_items, chunk_size,
                                     top_k, precomputed_fingerprints)
    for g, w, name in zip(got, want, ("ranks", "items", "scores")):
      np.testing.assert_array_equal(g, w, err_msg=f"{name}, chunk {chunk_size}")
  # A collapsed model: every score ties; counts and lowest-id tie breaks hold across devices.
  collapsed = np.broadcast_to(table[1], table.shape).copy()
  got_ranks, got_items, _ = _catalogue_sharded_ranking(user, collapsed, answers, history,
                                                       num_items, 5, 3, precomputed_fingerprints)
  want_ranks, want_items, _ = run_full(user, collapsed, answers, history, num_items, 5, 3)
  np.testing.assert_array_equal(got_ranks, want_ranks)
  np.testing.assert_array_equal(got_items, want_items)


def test_full_ranking_sharded_batch_matches_unsharded():
  devices = np.array(jax.devices())
  assert devices.size == 4, "tests/conftest.py should force 4 CPU devices"
  mesh = Mesh(devices, ("data",))
  batch_sharding = NamedSharding(mesh, P("data"))
  replicated = NamedSharding(mesh, P())
  user, table, answers, history = random_case(6, batch=8)
  num_items, top_k = 53, 6
  weights = np.array([1, 1, 1, 1, 1, 1, 0, 0], np.float32)

  @jax.jit
  def eval_step(user, table, answers, history, weights):
    ranks, items, scores = metrics.full_ranking(
        user, table, answers, history, num_items=num_items, chunk_size=7, top_k=top_k)
    return metrics.metric_sums(ranks, weights, metrics.FULL_METRICS), ranks, items, scores

  args = (user, table, answers, history, weights)
  plain = jax.device_get(eval_step(*args))
  sharded_args = [jax.device_put(x, replicated if i == 1 else batch_sharding)
                  for i, x in enumerate(args)]
  assert len(sharded_args[0].sharding.device_set) == 4
  sharded_out = eval_step(*sharded_args)
  assert sharded_out[1].sharding.is_equivalent_to(batch_sharding, 1)  # stays sharded
  sharded = jax.device_get(sharded_out)
  for got, want in zip(jax.tree.leaves(sharded), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(got, want)
  want_ranks, want_items, _ = np_full_ranking(user, table, answers, history,
                                              num_items, top_k)
  np.testing.assert_array_equal(sharded[1], want_ranks)
  np.testing.assert_array_equal(sharded[2], want_items)
  assert float(sharded[0]["count"]) == 6.0


def test_full_ranking_large_catalogue():
  # 200k items: only [B, chunk] scores exist at a time; checked against numpy.
  rng = np.random.default_rng(7)
  batch, hidden, num_items, top_k, chunk_size = 64, 16, 200_000, 20, 16384
  # Multiples of 1/8: exact float32 dot products, many exact ties.
  user = quantized(rng, (batch, hidden), levels=8, scale=1 / 8)
  table = quantized(rng, (num_items + 2, hidden), levels=8, scale=1 / 8)
  answers = rng.integers(1, num_items + 1, size=batch).astype(np.int32)
  history = rng.integers(0, num_items + 1, size=(batch, 50)).astype(np.int32)
  history[::3, 0] = answers[::3]

  fn = jax.jit(functools.partial(metrics.full_ranking, num_items=num_items,
                                 chunk_size=chunk_size, top_k=top_k))
  ranks, items, scores = jax.device_get(fn(user, table, answers, history))

  # Vectorised numpy reference.
  full = user @ table[1:num_items + 1].T  # [B, num_items], exact
  excluded = (history > 0) & (history != answers[:, None])
  removed = np.zeros((batch, num_items + 1), bool)  # last column: a dump slot
  removed[np.arange(batch)[:, None], np.where(excluded, history - 1, num_items)] = True
  full[removed[:, :num_items]] = -np.inf
  ans = full[np.arange(batch), answers - 1]
  want_ranks = np.sum(full >= ans[:, None], axis=1) - 1  # minus the answer itself
  np.testing.assert_array_equal(ranks, want_ranks)
  kth = -np.partition(-full, top_k - 1, axis=1)[:, top_k - 1]
  for b in range(batch):
    cand = np.flatnonzero(full[b] >= kth[b])
    order = np.lexsort((cand, -full[b, cand]))[:top_k]
    np.testing.assert_array_equal(items[b], cand[order] + 1)
    np.testing.assert_array_equal(scores[b], full[b, cand[order]])


@pytest.mark.parametrize("chunk_size", [160, 176, 320, 448, 700])
def test_wide_chunks_rank_exactly_with_ties(chunk_size):
  # Chunks much wider than top_k, and the whole catalogue as one chunk.
  user, table, answers, history = random_case(3, batch=9, num_items=700, hist_len=30)
  num_items, top_k = 700, 10
  want_ranks, want_items, want_scores = np_full_ranking(
      user, table, answers, history, num_items, top_k)
  ranks, items, scores = run_full(user, table, answers, history, num_items, chunk_size, top_k)
  np.testing.assert_array_equal(ranks, want_ranks)
  np.testing.assert_array_equal(items, want_items)
  np.testing.assert_array_equal(scores, want_scores)
  # Ties are exercised: several users' lists hold equal scores.
  assert sum(len(np.unique(s)) < top_k for s in want_scores) >= 3
  got_items, _ = jax.device_get(jax.jit(functools.partial(
      metrics.top_k_items, num_items=num_items, chunk_size=chunk_size, top_k=top_k))(
          user, table, np.where(history != answers[:, None], history, 0)))
  np.testing.assert_array_equal(got_items, want_items)


@pytest.mark.parametrize("width,k", [(256, 5), (512, 20), (160, 10), (100, 3)])
def test_grouped_top_k_equals_lax_top_k(width, k):
  # Coarse values make ties frequent; -inf, 0.0, -0.0 and NaNs of both signs
  # are sprinkled in, and a random candidate mask. The grouped top-k must equal
  # lax.top_k of the masked canonical scores exactly.
  rng = np.random.default_rng(width + k)
  scores = rng.integers(-4, 5, size=(64, width)).astype(np.float32)
  specials = np.array([-np.inf, 0.0, -0.0, np.nan, -np.nan], np.float32)
  where = rng.random(scores.shape) < 0.1
  scores[where] = rng.choice(specials, size=where.sum())
  scores[:4] = -np.inf                       # rows with no candidate at all
  scores[4:8, : width // 2] = np.nan         # rows led by NaNs
  candidate = rng.random(scores.shape) < 0.8
  candidate[8:10] = False                    # rows whose candidates are all masked out
  masked = jax.jit(metrics._candidate_scores)(scores, candidate)
  want_scores, want_columns = jax.device_get(jax.lax.top_k(masked, k))
  counted = rng.random(scores.shape) < 0.3
  got_scores, got_columns, got_picked, got_count = jax.device_get(
      jax.jit(metrics._top_k_columns, static_argnums=2)(scores, candidate, k, counted))
  np.testing.assert_array_equal(got_count, counted.sum(axis=1))
  np.testing.assert_array_equal(got_columns, want_columns)
  np.testing.assert_array_equal(got_scores, want_scores)
  np.testing.assert_array_equal(got_picked, np.take_along_axis(candidate, want_columns, axis=1))


def test_scores_are_float32_products_whatever_the_default_matmul_precision():
  # Ranking and metric matmuls ask for HIGHEST precision, so a backend whose default is
  # bfloat16 passes (TPU) or TF32 (GPU) reports the CPU's metrics.
  rng = np.random.default_rng(0)
  users, items, hidden = 6, 40, 16
  user = jnp.asarray(rng.normal(size=(users, hidden)), jnp.float32)
  table = jnp.asarray(rng.normal(size=(items + 2, hidden)), jnp.float32)
  answers = jnp.asarray(rng.integers(1, items + 1, users), jnp.int32)
  history = jnp.asarray(rng.integers(0, items + 1, (users, 5)), jnp.int32)
  candidates = jnp.concatenate([answers[:, None], history], axis=1)

  def rank_both(user, table, answers, history, candidates):
    full, _, _ = metrics.full_ranking(user, table, answers, history, num_items=items,
                                      chunk_size=16, top_k=5)
    sampled = metrics.rank_of_first(metrics.sampled_scores(user, table, candidates))
    return full, sampled

  args = (user, table, answers, history, candidates)
  text = jax.jit(rank_both).lower(*args).as_text()
  assert text.count("HIGHEST") >= 2, "the scoring products do not ask for float32 precision"
  expected = jax.jit(rank_both)(*args)
  with jax.default_matmul_precision("bfloat16"):
    got = jax.jit(rank_both)(*args)
  for a, b in zip(expected, got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
