"""Parity of the Flax model with an independent float64 numpy forward pass of the reference.

The numpy side is written from the reference's description and reads the
reference's own tensor names and torch layout ([out, in] weights); it shares
no code with `s3rec_jax.model.encoder`. The JAX side runs on the same weights after
`reference_to_params`, so a naming or transposition slip in the converter or
a semantic slip in the model shows up as a mismatch.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from test_convert import torch_layout
import pytest

from s3rec_jax.model import convert
from s3rec_jax.model import encoder as model

# float32 JAX against float64 numpy: the tolerance the converter promises.
TOLERANCE = 1e-5
REFERENCE_HEADS = ("aap", "mip", "map", "sp")

_erf = np.vectorize(math.erf)


# ----------------------------------------------------------------------------
# The reference forward pass, in numpy (float64), on torch-layout tensors.
# ----------------------------------------------------------------------------


def _dense(sd, name, x):
  """torch.nn.Linear: y = x W^T + b with W stored [out, in]."""
  return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def _layer_norm(sd, name, x):
  mean = x.mean(-1, keepdims=True)
  variance = ((x - mean) ** 2).mean(-1, keepdims=True)
  return sd[f"{name}.weight"] * (x - mean) / np.sqrt(variance + 1e-12) + sd[f"{name}.bias"]


def _gelu(x):
  return x * 0.5 * (1.0 + _erf(x / math.sqrt(2.0)))


def _softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _additive_mask(ids, causal):
  """[B, Lq, Lk] additive attention mask as the reference builds it."""
  length = ids.shape[1]
  is_item = (ids > 0)[:, None, :]  # Over keys.
  if not causal:
    return np.where(is_item, 0.0, -1e8) * np.ones((1, length, 1))
  allowed = is_item & (np.arange(length)[None, :] <= np.arange(length)[:, None])[None]
  return np.where(allowed, 0.0, -10000.0)


def reference_encode(sd, ids, causal, num_heads):
  """The reference encoder on left-padded ids [B, L] with L = max_len."""
  batch, length = ids.shape
  x = sd["item_embeddings.weight"][ids] + sd["position_embeddings.weight"][np.arange(length)]
  x = _layer_norm(sd, "LayerNorm", x)
  mask = _additive_mask(ids, causal)[:, None]  # [B, 1, Lq, Lk]
  hidden = x.shape[-1]
  head_dim = hidden // num_heads
  num_layers = len({n.split(".")[2] for n in sd if n.startswith("item_encoder.layer.")})
  for i in range(num_layers):
    prefix = f"item_encoder.layer.{i}"

    def heads(y):
      return y.reshape(batch, length, num_heads, head_dim).transpose(0, 2, 1, 3)

    q = heads(_dense(sd, f"{prefix}.attention.query", x))
    k = heads(_dense(sd, f"{prefix}.attention.key", x))
    v = heads(_dense(sd, f"{prefix}.attention.value", x))
    probs = _softmax(q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim) + mask)
    context = (probs @ v).transpose(0, 2, 1, 3).reshape(batch, length, hidden)
    attended = _dense(sd, f"{prefix}.attention.dense", context)
    x = _layer_norm(sd, f"{prefix}.attention.LayerNorm", x + attended)
    h = _gelu(_dense(sd, f"{prefix}.intermediate.dense_1", x))
    h = _dense(sd, f"{prefix}.intermediate.dense_2", h)
    x = _layer_norm(sd, f"{prefix}.intermediate.LayerNorm", x + h)
  return x


def reference_scores(sd, ids, num_heads):
  """Every score the reference computes from one batch, as a dict of float64 arrays."""
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  bidirectional = reference_encode(sd, ids, False, num_heads)
  causal = reference_encode(sd, ids, True, num_heads)
  items, attributes = sd["item_embeddings.weight"], sd["attribute_embeddings.weight"]
  last = bidirectional[:, -1]
  return {
      "encode_bidirectional": bidirectional,
      "encode_causal": causal,
      "aap": _sigmoid(_dense(sd, "aap_norm", bidirectional) @ attributes.T),
      "mip": _sigmoid(_dense(sd, "mip_norm", bidirectional) @ items.T),
      "map": _sigmoid(_dense(sd, "map_norm", bidirectional) @ attributes.T),
      # Every (context, segment) pair of sequences in the batch.
      "sp": _sigmoid(_dense(sd, "sp_norm", last) @ last.T),
      "finetune": causal[:, -1] @ items.T,
  }


# ----------------------------------------------------------------------------
# The same scores from the Flax model.
# ----------------------------------------------------------------------------


def jax_scores(config, params, ids):
  ids = jnp.asarray(ids, jnp.int32)
  # 'highest' so that accelerators would not drop to reduced-precision matmuls.
  with jax.default_matmul_precision("highest"):
    bidirectional = model.encode(config, params, ids, causal=False)
    causal = model.encode(config, params, ids, causal=True)
    items, attributes = model.item_table(params), model.attribute_table(params)
    heads = params["heads"]
    last = bidirectional[:, -1]
    scores = {
        "encode_bidirectional": bidirectional,
        "encode_causal": causal,
        "aap": jax.nn.sigmoid(model.apply_head(heads["aap"], bidirectional) @ attributes.T),
        "mip": jax.nn.sigmoid(model.apply_head(heads["mip"], bidirectional) @ items.T),
        "map": jax.nn.sigmoid(model.apply_head(heads["map"], bidirectional) @ attributes.T),
        "sp": jax.nn.sigmoid(model.apply_head(heads["sp"], last) @ last.T),
        "finetune": causal[:, -1] @ items.T,
    }
  return {k: np.asarray(v, np.float64) for k, v in scores.items()}


def max_diffs(ids, ours, reference):
  """Max abs difference per output; per-position outputs are compared at item positions.

  Padding positions are left out: no loss or score reads them, and a padding
  query attends to no sequence (every key is masked), so its output is an
  arbitrary uniform average in any implementation.
  """
  real = ids > 0
  diffs = {}
  for name, value in reference.items():
    if name.startswith("encode") or name in ("aap", "mip", "map"):
      diffs[name] = float(np.abs(ours[name][real] - value[real]).max())
    else:
      diffs[name] = float(np.abs(ours[name] - value).max())
  return diffs


def make_ids(item_size, max_len, seed=0):
  """Left-padded sequences with mask tokens (mask_id = item_size - 1) and padding prefixes."""
  rng = np.random.default_rng(seed)
  mask_id = item_size - 1
  lengths = [max_len, max_len - max_len * 2 // 5, min(4, max_len), 1]
  ids = np.zeros((len(lengths), max_len), np.int64)
  for row, n in enumerate(lengths):
    seq = rng.integers(1, mask_id, size=n)
    seq[rng.random(n) < 0.2] = mask_id
    seq[-1] = mask_id if row % 2 else seq[-1]
    ids[row, max_len - n:] = seq
  return ids



def spread_params(params, seed):
  """Init params with non-trivial biases and norms, and weights big enough to matter."""
  rng = np.random.default_rng(seed)

  def spread(path, x):
    leaf = path[-1].key
    if leaf == "kernel":
      return rng.normal(0.0, 1.0 / math.sqrt(x.shape[0]), x.shape).astype(np.float32)
    if leaf == "embedding":
      return rng.normal(0.0, 1.0, x.shape).astype(np.float32)
    if leaf == "scale":
      return (1.0 + rng.normal(0.0, 0.2, x.shape)).astype(np.float32)
    return rng.normal(0.0, 0.2, x.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(spread, params)


def test_reference_gelu_is_the_erf_form():
  # Guards the numpy side itself: erf GELU, not the tanh approximation.
  x = np.array([-3.0, -1.0, 0.0, 0.5, 2.0])
  expected = [x_ * 0.5 * (1 + math.erf(x_ / math.sqrt(2))) for x_ in x]
  np.testing.assert_allclose(_gelu(x), expected, rtol=0, atol=1e-15)
  assert abs(_gelu(np.array([1.0]))[0] - 0.8413447460685429) < 1e-12


def test_parity_random_tiny_model():
  config = model.ModelConfig(item_size=23, attribute_size=9, hidden_size=16, num_layers=2,
                             num_heads=4, max_len=12, head_names=REFERENCE_HEADS)
  params = spread_params(model.init_params(config, jax.random.PRNGKey(0)), seed=1)
  sd = torch_layout(params, config.num_layers)
  converted = convert.reference_to_params(sd, config)
  # The hand-written layout and the converter agree leaf for leaf.
  jax.tree_util.tree_map(np.testing.assert_array_equal, converted,
                         jax.tree_util.tree_map(np.asarray, params))

  ids = make_ids(config.item_size, config.max_len)
  diffs = max_diffs(ids, jax_scores(config, converted, ids),
                    reference_scores(sd, ids, config.num_heads))
  print("random tiny model, max abs diffs:", diffs)
  assert all(d <= TOLERANCE for d in diffs.values()), diffs


def test_parity_masks_differ():
  # The two masks must give different outputs, or the parity test would not tell them apart.
  config = model.ModelConfig(item_size=23, attribute_size=9, hidden_size=16, num_layers=1,
                             num_heads=2, max_len=12, head_names=REFERENCE_HEADS)
  params = spread_params(model.init_params(config, jax.random.PRNGKey(1)), seed=2)
  ids = make_ids(config.item_size, config.max_len, seed=3)
  ours = jax_scores(config, params, ids)
  real = ids > 0
  gap = np.abs(ours["encode_bidirectional"][real] - ours["encode_causal"][real]).max()
  assert gap > 1e-2


def test_parity_lastfm_checkpoint(shared_data_dir):
  path = shared_data_dir / "reference_checkpoints" / "LastFM-epochs-150.pt"
  if not path.exists():
    pytest.skip(f"{path} not found")
  sd = convert.read_torch_legacy_state_dict(path)
  config = model.ModelConfig(item_size=3648, attribute_size=389, head_names=REFERENCE_HEADS)
  params = convert.reference_to_params(sd, config)

  ids = make_ids(config.item_size, config.max_len, seed=4)
  diffs = max_diffs(ids, jax_scores(config, params, ids),
                    reference_scores(sd, ids, config.num_heads))
  print("LastFM checkpoint, max abs diffs:", diffs)
  assert all(d <= TOLERANCE for d in diffs.values()), diffs
