"""ops/fused_ranking.py: one device's block of the catalogue, ranked by the native kernel."""

import numpy as np
import pytest

from s3rec_jax.ops import kernels


@pytest.fixture(scope="module")
def fused_ranking():
  try:
    kernels.load("full_ranking_cpu")
  except kernels.KernelUnavailable as e:
    pytest.skip(f"the native kernel cannot be built here: {e}")
  from s3rec_jax.ops import fused_ranking as module  # pylint: disable=import-outside-toplevel
  return module


def test_a_block_with_an_offset_counts_and_ranks_as_numpy(fused_ranking):
  rng = np.random.default_rng(0)
  users, hidden, block, base, num_items, top_k = 5, 16, 12, 8, 17, 4
  user_repr = rng.normal(size=(users, hidden)).astype(np.float32)
  table = rng.normal(size=(block, hidden)).astype(np.float32)   # ids base..base+block-1
  answers = np.array([9, 12, 3, 17, 0], np.int32)      # 3: held by another device; 0: none
  answer_rows = rng.normal(size=(users, hidden)).astype(np.float32)
  for u, a in enumerate(answers):
    if base <= a < base + block:
      answer_rows[u] = table[a - base]
  history = np.array([[10, 0], [12, 13], [0, 0], [8, 9], [11, 0]], np.int32)
  ranks, top_items, top_scores = fused_ranking.device_ranking(
      user_repr, table, answer_rows, answers, history, base, num_items=num_items, top_k=top_k)
  scores = user_repr @ table.T
  answer_scores = np.sum(user_repr * answer_rows, axis=1)
  ids = base + np.arange(block)
  for u in range(users):
    excluded = set(history[u][history[u] > 0]) - {answers[u]}
    candidates = [(scores[u, i], id_) for i, id_ in enumerate(ids)
                  if 1 <= id_ <= num_items and id_ not in excluded]
    others = [s for s, id_ in candidates if id_ != answers[u]]
    assert ranks[u] == sum(s >= answer_scores[u] for s in others), u
    best = sorted(candidates, key=lambda c: (-c[0], c[1]))[:top_k]
    best += [(-np.inf, 0)] * (top_k - len(best))
    np.testing.assert_array_equal(np.asarray(top_items[u]), [id_ for _, id_ in best])
    np.testing.assert_allclose(np.asarray(top_scores[u]), [s for s, _ in best], rtol=1e-5)
