"""The encoder: masks, padding and window invariances, initialisation, dropout keys."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s3rec_jax.model import encoder as model

CFG = model.ModelConfig(item_size=30, attribute_size=6, hidden_size=16, num_layers=2, num_heads=2,
                        max_len=8, head_names=("aap", "mip", "map", "sp"))


@pytest.fixture(scope="module")
def params():
  return model.init_params(CFG, jax.random.key(0))


def test_parameter_tree_and_initialisation(params):
  assert set(params) == {"item_embeddings", "attribute_embeddings", "position_embeddings",
                         "input_norm", "encoder", "heads"}
  assert set(params["heads"]) == {"aap", "mip", "map", "sp"}
  big = model.init_params(model.ModelConfig(item_size=4000, attribute_size=6, hidden_size=64),
                          jax.random.key(1))
  table = np.asarray(big["item_embeddings"]["embedding"])
  assert abs(table.std() - 0.02) < 0.001 and abs(table.mean()) < 0.001
  kernel = np.asarray(big["encoder"]["layer_0"]["attention"]["query"]["kernel"])
  assert abs(kernel.std() - 0.02) < 0.002
  np.testing.assert_array_equal(big["encoder"]["layer_0"]["attention"]["query"]["bias"], 0.0)
  np.testing.assert_array_equal(big["input_norm"]["scale"], 1.0)
  np.testing.assert_array_equal(big["input_norm"]["bias"], 0.0)


def test_causal_output_ignores_the_future(params):
  ids = jnp.array([[0, 0, 3, 7, 9, 4, 5, 6]])
  changed = ids.at[0, 5:].set(jnp.array([11, 12, 13]))
  a = model.encode(CFG, params, ids, causal=True)
  b = model.encode(CFG, params, changed, causal=True)
  np.testing.assert_array_equal(a[0, 2:5], b[0, 2:5])        # up to t = 4: unchanged
  assert not np.allclose(a[0, 5:], b[0, 5:])
  # The bidirectional encoder does look ahead.
  a = model.encode(CFG, params, ids, causal=False)
  b = model.encode(CFG, params, changed, causal=False)
  assert not np.allclose(a[0, 2:5], b[0, 2:5])


@pytest.mark.parametrize("causal", [True, False])
def test_padding_invariance(params, causal):
  """Padding keys are ignored: what padding positions hold never changes real outputs."""
  ids = jnp.array([[0, 0, 0, 3, 7, 9, 4, 29]])  # 29 = mask token; attended to in pre-training
  out = model.encode(CFG, params, ids, causal=causal)
  # Trim leading padding: positions stay absolute, outputs at real positions are unchanged.
  trimmed = model.encode(CFG, params, ids[:, 3:], causal=causal)
  np.testing.assert_allclose(out[0, 3:], trimmed[0], atol=1e-6)
  # Another sequence in the batch does not matter either.
  pair = model.encode(CFG, params, jnp.concatenate([ids, jnp.array([[1, 2, 3, 4, 5, 6, 7, 8]])]),
                      causal=causal)
  np.testing.assert_allclose(pair[0, 3:], out[0, 3:], atol=1e-6)


def test_positions_are_absolute(params):
  """The newest item always sits at position max_len - 1, whatever the sequence length."""
  short = model.encode(CFG, params, jnp.array([[0, 0, 0, 0, 0, 0, 0, 5]]), causal=True)
  alone = model.encode(CFG, params, jnp.array([[5]]), causal=True)
  np.testing.assert_allclose(short[0, -1], alone[0, -1], atol=1e-6)
  with pytest.raises(ValueError, match="exceeds model.max_len"):
    model.encode(CFG, params, jnp.ones((1, 9), jnp.int32), causal=True)


def test_attention_bias_values():
  segments = jnp.array([[0, 1, 1]])
  bi = model.attention_bias(segments, causal=False)[0, 0]
  np.testing.assert_array_equal(bi[1:], [[-1e8, 0.0, 0.0]] * 2)   # padding keys hidden
  causal = model.attention_bias(segments, causal=True)[0, 0]
  np.testing.assert_array_equal(causal[1:], [[-1e4, 0, -1e4], [-1e4, 0, 0]])
  # Two packed sequences in a row never see each other.
  packed = model.attention_bias(jnp.array([[1, 1, 2, 2, 0]]), causal=False)[0, 0]
  np.testing.assert_array_equal(packed[:4, :4] == 0, [[1, 1, 0, 0], [1, 1, 0, 0],
                                                     [0, 0, 1, 1], [0, 0, 1, 1]])


@pytest.mark.parametrize("causal", [True, False])
def test_packed_rows_equal_one_sequence_per_row(params, causal):
  """Several sequences packed in one row, each with its absolute positions, encode as if alone."""
  a = jnp.array([[0, 0, 0, 0, 0, 3, 7, 29]])
  b = jnp.array([[0, 0, 0, 0, 0, 0, 11, 12]])
  alone_a = model.encode(CFG, params, a, causal=causal)[0, 5:]
  alone_b = model.encode(CFG, params, b, causal=causal)[0, 6:]
  packed = jnp.array([[3, 7, 29, 11, 12, 0, 0, 0]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0, 0, 0]])
  positions = jnp.array([[5, 6, 7, 6, 7, 0, 0, 0]])
  out = model.encode(CFG, params, packed, causal=causal, segment_ids=segments, positions=positions)
  np.testing.assert_allclose(out[0, :3], alone_a, atol=1e-5)
  np.testing.assert_allclose(out[0, 3:5], alone_b, atol=1e-5)


def test_dropout_is_driven_by_the_key(params):
  ids = jnp.array([[0, 1, 2, 3, 4, 5, 6, 7]])
  k1, k2 = jax.random.key(1), jax.random.key(2)
  a = model.encode(CFG, params, ids, causal=True, dropout_key=k1)
  np.testing.assert_array_equal(a, model.encode(CFG, params, ids, causal=True, dropout_key=k1))
  assert not np.allclose(a, model.encode(CFG, params, ids, causal=True, dropout_key=k2))
  assert not np.allclose(a, model.encode(CFG, params, ids, causal=True))


def test_hidden_size_must_divide_by_heads():
  with pytest.raises(ValueError, match="divisible"):
    model.ModelConfig(item_size=5, attribute_size=2, hidden_size=10, num_heads=3)


def test_encoder_params_drop_heads(params):
  assert "heads" not in model.encoder_params(params)
  assert set(model.encoder_params(params)) == set(model.ENCODER_PARAM_GROUPS)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("dropout", [False, True])
@pytest.mark.parametrize("dense_rows", [0, 1, 2])
def test_queried_tokens_equal_the_full_encoding(params, causal, dropout, dense_rows):
  """Restricting the last layer to some queries changes no value, dropout included."""
  ids = jnp.array([[3, 7, 29, 11, 12, 0, 0, 0],
                   [0, 0, 0, 4, 5, 6, 7, 8],
                   [9, 10, 13, 14, 15, 16, 17, 18]])
  segments = jnp.array([[1, 1, 1, 2, 2, 0, 0, 0], [0, 0, 0, 1, 1, 1, 1, 1], [1] * 8])
  positions = jnp.array([[5, 6, 7, 6, 7, 0, 0, 0], [0, 0, 0, 3, 4, 5, 6, 7], list(range(8))])
  key = jax.random.key(3) if dropout else None
  kwargs = dict(causal=causal, dropout_key=key, segment_ids=segments, positions=positions)
  full = model.encode(CFG, params, ids, **kwargs)
  index = jnp.array([2, 4, 7, 9, 13][:max(0, (3 - dense_rows) * 2)], jnp.int32)  # into rows >= dense_rows
  out = model.encode(CFG, params, ids, queries=model.Queries(dense_rows, index), **kwargs)
  want = jnp.concatenate([full[:dense_rows].reshape(-1, CFG.hidden_size),
                          full[dense_rows:].reshape(-1, CFG.hidden_size)[index]])
  assert out.shape == want.shape
  np.testing.assert_allclose(out, want, atol=1e-5)
