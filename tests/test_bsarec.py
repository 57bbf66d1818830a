"""The bsarec encoder against numpy, prefix training, and the config checks around them."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import numpy_layers

from s3rec_jax import objectives
from s3rec_jax.configs import default
from s3rec_jax.core import settings
from s3rec_jax.data import dataset as data_lib
from s3rec_jax.data import input_pipeline as ip
from s3rec_jax.model import bsarec
from s3rec_jax.model import encoder as model
from s3rec_jax.model import encoder_registry
from s3rec_jax.training import config_validation

H, HEADS, L = 8, 2, 6


def _numpy_layer(p, x, bias, alpha, c):
  """One BSARec layer in float64 numpy, written from the paper's code (torch.fft, ortho)."""
  a = p["attention"]
  q, k, v = (numpy_layers.dense(a[n], x) for n in ("query", "key", "value"))
  d = H // HEADS
  contexts = []
  for h in range(HEADS):
    part = slice(h * d, (h + 1) * d)
    scores = q[..., part] @ np.swapaxes(k[..., part], -1, -2) / math.sqrt(d) + bias[:, 0]
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    contexts.append(probs @ v[..., part])
  attention = numpy_layers.layer_norm(p["attention_norm"], x + numpy_layers.dense(a["output"], np.concatenate(contexts, -1)))
  spectrum = np.fft.rfft(x, axis=1, norm="ortho")
  spectrum[:, c // 2 + 1:, :] = 0
  low = np.fft.irfft(spectrum, n=x.shape[1], axis=1, norm="ortho")
  filtered = numpy_layers.layer_norm(p["filter_norm"], x + low + p["sqrt_beta"] ** 2 * (x - low))
  y = alpha * filtered + (1 - alpha) * attention
  return numpy_layers.feed_forward_block(p, y)


@pytest.mark.parametrize("alpha, c", [(0.7, 5), (0.9, 3), (0.0, 1), (1.0, 11)])
def test_the_layer_matches_numpy(alpha, c):
  record = settings.bind("bsarec", {"alpha": alpha, "c": c})
  cfg = model.ModelConfig(item_size=20, attribute_size=3, hidden_size=H, num_heads=HEADS,
                          max_len=L, encoder="bsarec", encoder_settings=record)
  rng = np.random.default_rng(c)
  x = jnp.asarray(rng.normal(size=(3, L, H)), jnp.float32)
  segment_ids = jnp.asarray([[0, 0, 1, 1, 1, 1], [1] * L, [0, 0, 0, 0, 0, 1]], jnp.int32)
  bias = model.attention_bias(segment_ids, causal=True)
  positions = jnp.broadcast_to(jnp.arange(L), (3, L))
  token_ids = jnp.arange(3)[:, None] * L + positions
  layer = bsarec.BSARecLayer(cfg)
  params = layer.init(jax.random.key(0), x, bias, token_ids, positions, True)["params"]
  got = layer.apply({"params": params}, x, bias, token_ids, positions, True)
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params)
  want = _numpy_layer(p, np.asarray(x, np.float64), np.asarray(bias, np.float64), alpha, c)
  np.testing.assert_allclose(np.asarray(got).reshape(want.shape), want, rtol=2e-4, atol=2e-5)
  # The filter's beta starts from N(0, 1), as torch.randn: not the dense layers' 0.02.
  assert np.std(p["sqrt_beta"]) > 0.2


def test_the_low_pass_keeps_the_lowest_frequencies():
  x = np.random.default_rng(1).normal(size=(L, 2))
  low = bsarec.low_pass_matrix(L, 3) @ x
  spectrum = np.fft.rfft(low, axis=0)
  assert np.abs(spectrum[2:]).max() < 1e-5
  np.testing.assert_allclose(spectrum[:2], np.fft.rfft(x, axis=0)[:2], rtol=1e-5, atol=1e-6)


def _small():
  return data_lib.synthetic_dataset(num_users=12, num_items=15, num_attributes=4, min_len=4,
                                    max_len=9, num_groups=5, seed=3, num_negatives=None)


def test_prefix_samples_are_every_prefix_of_the_training_part():
  ds, max_len = _small(), 5
  batches = ip.PrefixBatches(ds, batch_size=7, max_len=max_len, negative_high=ds.max_item, seed=0)
  want = []
  for u in range(ds.num_users):
    s = ds.items[ds.offsets[u]:ds.offsets[u + 1]].tolist()
    t = s[-(max_len + 2):-2]
    want += [(t[:i], t[i]) for i in range(len(t))]
  assert batches.num_samples == len(want)
  got = []
  for step, batch in enumerate(batches.epoch(0)):
    assert batch["inputs"].shape == (7, max_len)
    for row in range(7):
      if batch["weights"][row]:
        inputs = [int(v) for v in batch["inputs"][row] if v]
        got.append((inputs, int(batch["targets"][row, -1])))
        assert not batch["targets"][row, :-1].any()
        assert batch["last_index"][row] == row * max_len + max_len - 1
  order = batches.order(0)
  assert [tuple(map(tuple, [g[0]])) + (g[1],) for g in got] == [
      tuple(map(tuple, [want[i][0]])) + (want[i][1],) for i in order]


def _prefix_ce(cfg, params, ds, batch):
  """The `ce` loss of a prefix batch (its sum over the batch's weighted samples)."""
  out = model.encode(cfg, params, jnp.asarray(batch["inputs"]), causal=True,
                     segment_ids=jnp.asarray(batch["segment_ids"]),
                     positions=jnp.asarray(batch["positions"]))
  options = objectives.ObjectiveOptions(mask_id=ds.mask_id, num_items=ds.max_item,
                                        targets="last_of_prefixes")
  inputs = objectives.ObjectiveInputs(
      {"sequence": out}, params, {k: jnp.asarray(v) for k, v in batch.items()}, {},
      jax.random.key(0), options)
  return float(objectives.get("next_item", "ce").fn(inputs))


@pytest.mark.parametrize("encoder", ["sasrec", "bsarec"])
def test_a_batch_of_prefixes_loses_what_its_prefixes_lose_one_by_one(encoder):
  ds, max_len = _small(), 6
  record = settings.bind("bsarec", {"alpha": 0.6, "c": 3}) if encoder == "bsarec" else None
  cfg = model.ModelConfig(item_size=ds.item_size, attribute_size=ds.attribute_size,
                          hidden_size=H, num_heads=HEADS, max_len=max_len, encoder=encoder,
                          encoder_settings=record)
  params = model.init_params(cfg, jax.random.key(1))
  batches = ip.PrefixBatches(ds, batch_size=9, max_len=max_len, negative_high=ds.max_item, seed=2)
  samples = batches.order(0)[:9]
  together = _prefix_ce(cfg, params, ds, batches.batch(samples, 0))
  one = np.ones(1, np.float32)
  alone = sum(_prefix_ce(cfg, params, ds, batches.rows(samples[i:i + 1], one, 0, np.array([i])))
              for i in range(9))
  assert together > 0
  np.testing.assert_allclose(together, alone, rtol=1e-5)


@pytest.mark.parametrize("shards", [ip.Shards(2, 0, 2), ip.Shards(2, 0, 2, micro_batches=2),
                                    ip.Shards(4, 2, 2)])
def test_each_piece_of_a_prefix_batch_loses_what_the_whole_batch_does(shards):
  # A device (or micro-batch) sees its own piece: its `last_index` must point into it.
  ds, max_len = _small(), 6
  cfg = model.ModelConfig(item_size=ds.item_size, attribute_size=ds.attribute_size,
                          hidden_size=H, num_heads=HEADS, max_len=max_len, encoder="bsarec",
                          encoder_settings=settings.bind("bsarec", {"alpha": 0.6, "c": 3}))
  params = model.init_params(cfg, jax.random.key(1))
  split = ip.PrefixBatches(ds, batch_size=16, max_len=max_len, negative_high=ds.max_item,
                           seed=2, shards=shards)
  whole = ip.PrefixBatches(ds, batch_size=16, max_len=max_len, negative_high=ds.max_item,
                           seed=2)
  samples = split.order(0)[:16]
  batch, rows = split.batch(samples, 0), split.num_rows
  pieces = [{k: v[i:i + rows] for k, v in batch.items()}
            for i in range(0, len(batch["inputs"]), rows)]
  assert all(piece["last_index"].max() < rows * max_len for piece in pieces)
  first = shards.first_local * shards.micro_batches * rows
  local = samples[first:first + len(batch["inputs"])]
  one = np.ones(1, np.float32)
  expected = sum(_prefix_ce(cfg, params, ds, whole.rows(local[i:i + 1], one, 0, np.array([i])))
                 for i in range(len(local)))
  np.testing.assert_allclose(sum(_prefix_ce(cfg, params, ds, piece) for piece in pieces),
                             expected, rtol=1e-5)


def test_a_filter_encoder_must_train_on_prefixes_and_is_never_packed():
  config = default.get_config()
  config.model.encoder = "bsarec"
  with pytest.raises(config_validation.ConfigError, match="finetune.targets=last_of_prefixes"):
    config_validation.validate(config)
  config.finetune.targets = "last_of_prefixes"
  config_validation.validate(config)
  assert config.pack_sequences and not encoder_registry.packs(config)
  config.model.encoder = "bsarek"
  with pytest.raises(config_validation.ConfigError, match="unknown encoder 'bsarek'"):
    config_validation.validate(config)
  config.model.encoder = "bsarec"
  config.settings.bsarec.alpha = 1.5
  with pytest.raises(settings.SettingsError, match="bsarec.alpha=1.5: expected a value in"):
    config_validation.validate(config)


def test_model_config_binds_the_encoder_settings():
  config = default.get_config()
  config.model.encoder = "bsarec"
  config.settings.bsarec.alpha = 0.9
  config.settings.bsarec.c = 3
  sizes = ml_collections.ConfigDict({"item_size": 10, "attribute_size": 2})
  cfg = model.model_config(config, sizes)
  assert cfg.encoder == "bsarec" and (cfg.encoder_settings.alpha, cfg.encoder_settings.c) == (0.9, 3)
  params = model.init_params(cfg, jax.random.key(0))
  assert "sqrt_beta" in params["encoder"]["layer_0"] and "filter_norm" in params["encoder"]["layer_1"]
