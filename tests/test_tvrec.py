"""The tvrec encoder against numpy (the authors' graph-Fourier route), its penalty, the
padding class of `ce`, TV-Rec's prefixes and the encoder_penalty objective over devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import numpy_layers

from s3rec_jax import objectives
from s3rec_jax.configs import default
from s3rec_jax.core import parallel
from s3rec_jax.core import settings
from s3rec_jax.data import dataset as data_lib
from s3rec_jax.data import input_pipeline as ip
from s3rec_jax.model import encoder as model
from s3rec_jax.model import tvrec
from s3rec_jax.training import config_validation
from s3rec_jax.training import steps as train_steps

H, L = 8, 6


def _numpy_filter(coefficients, basis, x, order):
  """The filter as the authors compute it: the eigenvectors V and eigenvalues lambda of the
  directed cycle of P nodes, H = c (B / |B|), F = V * (H Lambda^T), y = Re(F V^-1 x_pad)."""
  n = x.shape[1]
  period = n + order - 1
  cycle = np.zeros((period, period))
  cycle[0, -1] = 1
  cycle[np.arange(1, period), np.arange(period - 1)] = 1
  eigenvalues, vectors = np.linalg.eig(cycle)
  powers = np.stack([eigenvalues ** k for k in range(order + 1)], axis=1)     # [P, K + 1]
  b = basis[..., 0] + 1j * basis[..., 1]
  taps = coefficients @ (b / np.linalg.norm(b, axis=1, keepdims=True))        # [P, K + 1]
  f = vectors * (taps @ powers.T)
  padded = np.concatenate([x, np.zeros((x.shape[0], order - 1, x.shape[2]))], axis=1)
  return np.real(np.einsum("ts,bsh->bth", f @ np.linalg.inv(vectors), padded))[:, :n]


def _numpy_layer(p, x, order):
  y = numpy_layers.layer_norm(p["filter_norm"],
                              x + _numpy_filter(p["coefficients"], p["basis"], x, order))
  return numpy_layers.feed_forward_block(p, y)


def _cfg(basis_size, order, **kw):
  return model.ModelConfig(item_size=20, attribute_size=3, hidden_size=H, num_heads=2,
                           max_len=L, encoder="tvrec", encoder_settings=settings.bind(
                               "tvrec", {"basis_size": basis_size, "order": order}), **kw)


@pytest.mark.parametrize("basis_size, order", [(3, 4), (2, 1), (4, 9)])
def test_the_layer_matches_the_graph_fourier_computation(basis_size, order):
  cfg = _cfg(basis_size, order)
  rng = np.random.default_rng(order)
  x = jnp.asarray(rng.normal(size=(3, L, H)), jnp.float32)
  positions = jnp.broadcast_to(jnp.arange(L), (3, L))
  token_ids = jnp.arange(3)[:, None] * L + positions
  bias = jnp.zeros((3, 1, L, L))
  layer = tvrec.TVRecLayer(cfg)
  params = layer.init(jax.random.key(0), x, bias, token_ids, positions, True)["params"]
  # Filters well away from their 1e-3 start, so that every tap counts.
  params = dict(params, coefficients=jnp.asarray(rng.normal(size=params["coefficients"].shape),
                                                 jnp.float32))
  got = layer.apply({"params": params}, x, bias, token_ids, positions, True)
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  want = _numpy_layer(p, np.asarray(x, np.float64), order)
  np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, rtol=2e-4, atol=2e-5)
  assert params["basis"].shape == (basis_size, order + 1, 2)
  assert params["coefficients"].shape == (L + order - 1, basis_size)


def test_the_newest_position_reads_no_later_one_and_padding_and_positions_do_not_count():
  cfg = _cfg(3, 50)
  params = model.init_params(cfg, jax.random.key(1))
  w = tvrec.filter_matrix(jnp.asarray(np.random.default_rng(0).normal(size=(L + 49, 3)),
                                      jnp.float32), params["encoder"]["layer_0"]["basis"], L)
  # Lower triangular but for the cycle's wrap at (0, L - 1).
  upper = np.triu(np.asarray(w), 1)
  assert upper[0, L - 1] != 0 and np.count_nonzero(upper) == 1
  ids = jnp.array([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 7, 8]])
  out = model.encode(cfg, params, ids, causal=True)
  changed = dict(params,
                 position_embeddings={"embedding": params["position_embeddings"]["embedding"] + 1},
                 item_embeddings={"embedding": params["item_embeddings"]["embedding"].at[0].add(3)})
  np.testing.assert_allclose(model.encode(cfg, changed, ids, causal=True), out, atol=1e-6)


def test_the_penalty_matches_numpy():
  basis = np.random.default_rng(2).normal(size=(4, 7, 2))
  want = 0.0
  for part in (0, 1):
    rows = basis[..., part] / np.linalg.norm(basis[..., part], axis=1, keepdims=True)
    want += ((rows @ rows.T - np.eye(4)) ** 2).sum()
  got = tvrec.basis_orthogonality({"basis": jnp.asarray(basis, jnp.float32)})
  np.testing.assert_allclose(float(got), want, rtol=1e-5)


def _small():
  return data_lib.synthetic_dataset(num_users=12, num_items=15, num_attributes=4, min_len=3,
                                    max_len=12, num_groups=5, seed=3, num_negatives=None)


def test_prefixes_with_one_item_at_least_are_tvrec_s():
  ds, max_len = _small(), 5
  batches = ip.PrefixBatches(ds, batch_size=7, max_len=max_len, negative_high=ds.max_item,
                             seed=0, min_items=1)
  want = []
  for u in range(ds.num_users):
    s = ds.items[ds.offsets[u]:ds.offsets[u + 1]].tolist()
    t = s[-(max_len + 3):-2]
    want += [(t[:i][-max_len:], t[i]) for i in range(1, len(t))]
  assert batches.num_samples == len(want)
  got = []
  for batch in batches.epoch(0):
    for row in range(7):
      if batch["weights"][row]:
        got.append(([int(v) for v in batch["inputs"][row] if v], int(batch["targets"][row, -1])))
        assert batch["lengths"][row] == len(got[-1][0]) >= 1
  assert got == [want[i] for i in batches.order(0)]


def test_the_padding_class_adds_row_0_to_the_softmax():
  rng = np.random.default_rng(4)
  table = rng.normal(size=(12, H))                      # rows 0..10 scored, 11 the mask row
  out, targets = rng.normal(size=(5, H)), np.array([3, 1, 10, 0, 7])
  losses = {}
  for padding_class in (False, True):
    options = objectives.ObjectiveOptions(
        mask_id=11, num_items=10, targets="last_of_prefixes", settings=objectives.settings_tuple(
            {"next_item": {"padding_class": padding_class, "chunk_size": 4}}))
    # Five one-token rows; the last has no target.
    batch = {"targets": jnp.asarray(targets[:, None], jnp.int32), "last_index": jnp.arange(5)}
    inputs = objectives.ObjectiveInputs(
        {"sequence": jnp.asarray(out[:, None], jnp.float32)},
        {"item_embeddings": {"embedding": jnp.asarray(table, jnp.float32)}}, batch, {},
        jax.random.key(0), options)
    losses[padding_class] = float(objectives.get("next_item", "ce").fn(inputs))
  scores = out @ table.T
  for padding_class, first in ((False, 1), (True, 0)):
    logits = scores[:, first:11]
    lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    want = sum(lse[i] - scores[i, targets[i]] for i in range(5) if targets[i] > 0)
    np.testing.assert_allclose(losses[padding_class], want, rtol=1e-5)


def test_the_encoder_penalty_counts_once_on_any_number_of_devices():
  ds, max_len = _small(), L
  record = settings.bind("tvrec", {"basis_size": 3, "order": 4})
  cfg = model.ModelConfig(item_size=ds.item_size, attribute_size=ds.attribute_size,
                          hidden_size=H, num_heads=2, max_len=max_len, num_layers=2,
                          encoder="tvrec", encoder_settings=record)
  weights = {"next_item": 1.0, "encoder_penalty": 0.5}
  chosen = objectives.resolve(weights, {"next_item": "ce"}, phase="finetune")
  options = objectives.ObjectiveOptions(
      mask_id=ds.mask_id, num_items=ds.max_item, targets="last_of_prefixes", encoder="tvrec",
      settings=objectives.settings_tuple({"tvrec": {"basis_size": 3, "order": 4}}))
  params = model.init_params(cfg, jax.random.key(0))
  params["encoder"]["layer_1"]["basis"] = params["encoder"]["layer_1"]["basis"] * 50 + 0.01
  params = jax.tree_util.tree_map(np.asarray, params)   # host copies: each step donates its own
  want = sum(float(tvrec.basis_orthogonality(params["encoder"][f"layer_{i}"])) for i in (0, 1))
  tx = train_steps.make_optimizer(1e-2, 0.9, 0.999)
  results = []
  for n, micro in ((1, 1), (2, 1), (2, 2)):
    mesh = parallel.make_mesh(jax.devices()[:n])
    shards = ip.Shards(*parallel.local_shards(mesh), micro_batches=micro)
    batches = ip.PrefixBatches(ds, batch_size=8, max_len=max_len, negative_high=ds.max_item,
                               seed=0, shards=shards)
    state = train_steps.create_state(params, tx, mesh)
    step = train_steps.make_train_step(cfg, chosen, options, tx, mesh, phase="finetune",
                                       micro_batches=micro)
    _, out = step(state, parallel.shard_batch(batches.batch_at(0, 0), mesh), {},
                  jax.random.key(0))
    results.append((float(out["encoder_penalty"]), float(out["loss"])))
  for penalty, loss in results:
    np.testing.assert_allclose(penalty, want, rtol=1e-5)
    np.testing.assert_allclose(loss, results[0][1], rtol=1e-5)


def test_the_config_checks_of_tvrec():
  config = default.get_config()
  config.finetune.objectives.encoder_penalty = 1e-3
  with pytest.raises(config_validation.ConfigError, match="encoder 'sasrec' has no penalty"):
    config_validation.validate(config)
  config.model.encoder = "tvrec"
  config.finetune.targets = "last_of_prefixes"
  config_validation.validate(config)
  config.finetune.prefix_min_items = -1
  with pytest.raises(config_validation.ConfigError, match="prefix_min_items must be a non"):
    config_validation.validate(config)
