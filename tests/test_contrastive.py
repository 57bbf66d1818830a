"""CL4SRec and DuoRec losses against independent numpy computations on small batches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s3rec_jax import objectives
from s3rec_jax.objectives import duorec

H, L = 6, 4


def _nt_xent(a, b, temperature, allowed=None):
  """Numpy: per sequence, the mean over its two directions of -log softmax of the positive."""
  n = len(a)
  z = np.concatenate([a, b]).astype(np.float64)
  losses = []
  for i in range(n):
    per = []
    for query, own, positive in ((a[i], i, n + i), (b[i], n + i, i)):
      logits = z @ np.asarray(query, np.float64) / temperature
      keep = [j for j in range(2 * n) if j != own and (allowed is None or allowed(i, j)
                                                       or j == positive)]
      per.append(np.log(np.sum(np.exp(logits[keep]))) - logits[positive])
    losses.append(np.mean(per))
  return np.array(losses)


def _inputs(last_outputs, batch, settings):
  options = objectives.ObjectiveOptions(mask_id=20, num_items=18,
                                        settings=objectives.settings_tuple(settings))
  as_jax = lambda t: jax.tree_util.tree_map(jnp.asarray, t)
  return objectives.ObjectiveInputs({}, {}, as_jax(batch), {}, jax.random.key(5), options,
                                    last_outputs=as_jax(last_outputs))


def _batch(num, targets=None):
  rows = np.arange(num)
  batch = {"weights": np.ones(num, np.float32), "lengths": np.full(num, L, np.int32),
           "last_index": (rows * L + L - 1).astype(np.int32),
           "token_ids": (rows[:, None] * L + np.arange(L)).astype(np.int32)}
  if targets is not None:
    batch["targets"] = np.zeros((num, L), np.int32)
    batch["targets"][:, -1] = targets
  return batch


@pytest.mark.parametrize("temperature, similarity", [(1.0, "dot"), (0.5, "cosine")])
def test_cl4srec_is_in_batch_nt_xent(temperature, similarity):
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, H)).astype(np.float32), rng.normal(size=(2, H)).astype(np.float32)
  got = objectives.get("cl4srec", "infonce").fn(_inputs(
      {"augment:1": a, "augment:2": b}, _batch(2),
      {"cl4srec": {"temperature": temperature, "similarity": similarity}}))
  if similarity == "cosine":
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
  np.testing.assert_allclose(float(got), _nt_xent(a, b, temperature).sum(), rtol=1e-5)


def test_cl4srec_leaves_out_padding_and_empty_sequences():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(3, H)).astype(np.float32), rng.normal(size=(3, H)).astype(np.float32)
  batch = _batch(3)
  batch["weights"][2] = 0.0      # padding
  batch["lengths"][1] = 0        # a user with an empty input: no representation
  got = objectives.get("cl4srec", "infonce").fn(_inputs(
      {"augment:1": a, "augment:2": b}, batch, {}))
  # Only sequence 0 is left: its positive is its only candidate.
  np.testing.assert_allclose(float(got), 0.0, atol=1e-6)


def test_duorec_unsupervised_when_targets_differ():
  rng = np.random.default_rng(2)
  first, second = (rng.normal(size=(2, H)).astype(np.float32) for _ in range(2))
  got = objectives.get("duorec", "infonce").fn(_inputs(
      {"dropout:1": first, "dropout:2": second}, _batch(2, targets=[7, 9]), {}))
  # No other sequence shares a target: each positive is the sequence's own second encoding.
  np.testing.assert_allclose(float(got), _nt_xent(first, second, 1.0).sum(), rtol=1e-5)


def test_duorec_same_target_positive_and_false_negatives_removed():
  rng = np.random.default_rng(3)
  first, second = (rng.normal(size=(3, H)).astype(np.float32) for _ in range(2))
  targets = np.array([7, 7, 9])
  got = objectives.get("duorec", "infonce").fn(_inputs(
      {"dropout:1": first, "dropout:2": second}, _batch(3, targets=targets),
      {"duorec": {"temperature": 0.7}}))
  # Sequences 0 and 1 share target 7: each one's positive is the other's second
  # encoding; 2 has no partner and takes its own.
  partner = np.array([1, 0, 2])
  positives = second[partner]
  # Candidates j of the same target as i (other than the positive) are false negatives.
  group = np.concatenate([targets, targets])
  want = _nt_xent(first, positives, 0.7, allowed=lambda i, j: group[j] != targets[i])
  np.testing.assert_allclose(float(got), want.sum(), rtol=1e-5)


def test_duorec_partner_is_random_among_same_target_sequences():
  identity = jnp.arange(6, dtype=jnp.uint32) * L + L - 1
  targets = jnp.array([3, 3, 3, 5, 5, 8])
  weights = jnp.ones(6)
  picks = set()
  for s in range(20):
    partner = np.asarray(duorec.same_target_partner(
        identity, targets, weights, jnp.array([s, 7 * s + 1], jnp.uint32), None))
    assert all(targets[p] == targets[i] and (p != i or i == 5) for i, p in enumerate(partner))
    picks.add(int(partner[0]))
  assert picks == {1, 2}          # both other sequences of target 3 get chosen
