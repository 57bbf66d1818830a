"""The S3-Rec encoder: item/attribute/position embeddings, a post-LN transformer and dense heads.

The module is used only through its pure `init` / `apply`: parameters and
dropout keys are always passed in explicitly. The layout follows the reference
(see docs in README): LayerNorm with epsilon 1e-12 inside the square root,
exact (erf) GELU, N(0, 0.02) initialisation, dropout after the input
LayerNorm, on the attention probabilities, after the attention output dense
and after the feed-forward block.

Parameter tree (the names the checkpoint converter and the checkpoint hand-off
rely on):

  item_embeddings/embedding            [item_rows, H] (item_size rows; padded when sharded)
  attribute_embeddings/embedding       [attribute_size, H]
  position_embeddings/embedding        [max_len, H]
  input_norm/{scale,bias}
  encoder/layer_{i}/attention/{query,key,value,output}/{kernel,bias}
  encoder/layer_{i}/attention_norm/{scale,bias}
  encoder/layer_{i}/feed_forward/{dense_1,dense_2}/{kernel,bias}
  encoder/layer_{i}/feed_forward_norm/{scale,bias}
  heads/{name}/{kernel,bias}           one H->H dense per pre-training objective
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from s3rec_jax.core import hashing
from s3rec_jax.core import settings as settings_lib
from s3rec_jax.model import encoder_registry
from s3rec_jax.model import item_table as item_table_lib

# Additive attention biases used by the reference.
BIDIRECTIONAL_MASK_VALUE = -1e8
CAUSAL_MASK_VALUE = -10000.0
LAYER_NORM_EPSILON = 1e-12
COMPUTE_DTYPES = ("float32", "bfloat16")

# Parameter groups that make up "the encoder" carried from pre-training into
# fine-tuning; the heads stay behind.
ENCODER_PARAM_GROUPS = (
    "item_embeddings",
    "attribute_embeddings",
    "position_embeddings",
    "input_norm",
    "encoder",
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static shape and regularisation settings of the encoder."""
  item_size: int
  attribute_size: int
  hidden_size: int = 64
  num_layers: int = 2
  num_heads: int = 2
  max_len: int = 50
  hidden_dropout: float = 0.5
  attention_dropout: float = 0.5
  initializer_range: float = 0.02
  head_names: tuple[str, ...] = ()
  # "bfloat16": the encoder's matmuls and attention products in bfloat16, with
  # float32 parameters, LayerNorm statistics and outputs, and softmaxes.
  compute_dtype: str = "float32"
  # The item table split by rows over this mesh axis (None: replicated), and
  # its physical rows (0: item_size); see s3rec_jax.model.item_table.
  item_table_axis: str | None = None
  item_table_rows: int = 0
  # The layer the stack is made of (model/encoder_registry.py) and its bound settings record.
  encoder: str = "sasrec"
  encoder_settings: Any = None

  def __post_init__(self):
    if self.hidden_size % self.num_heads:
      raise ValueError(
          f"model.hidden_size={self.hidden_size} must be divisible by "
          f"model.num_heads={self.num_heads}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"model.compute_dtype={self.compute_dtype!r} is unknown; expected one of "
                       + ", ".join(COMPUTE_DTYPES))
    if self.item_table_rows and self.item_table_rows < self.item_size:
      raise ValueError(f"item_table_rows={self.item_table_rows} < item_size={self.item_size}")

  @property
  def item_rows(self) -> int:
    """Rows of the item table as stored: item_size, or more when padded for sharding."""
    return self.item_table_rows or self.item_size

  @property
  def dtype(self):
    return jnp.dtype(self.compute_dtype)


def layer_norm(name: str) -> nn.LayerNorm:
  # use_fast_variance=False: compute E[(x - mean)^2] as the reference does.
  # float32 in and out whatever the compute dtype: the residual stream stays float32.
  return nn.LayerNorm(epsilon=LAYER_NORM_EPSILON, use_fast_variance=False, dtype=jnp.float32,
                      param_dtype=jnp.float32, name=name)


def _dense(features: int, std: float, name: str, dtype=jnp.float32) -> nn.Dense:
  return nn.Dense(features, kernel_init=nn.initializers.normal(std),
                  bias_init=nn.initializers.zeros, dtype=dtype, param_dtype=jnp.float32,
                  name=name)


def attention_bias(segment_ids: jax.Array, causal: bool) -> jax.Array:
  """Additive attention bias [B, 1, L, L] from segment ids (0 = padding, k > 0 = k-th sequence of a row).

  A query sees the keys of its own sequence: all of them when bidirectional
  (pre-training; mask tokens are attended to), those at or before it when
  causal (fine-tuning). With one sequence per row this is exactly the
  reference's padding mask (-1e8) and causal mask (-10000); several packed
  sequences in one row never see each other.
  """
  same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
  if not causal:
    return jnp.where(same, 0.0, BIDIRECTIONAL_MASK_VALUE)[:, None]
  length = segment_ids.shape[1]
  lower = jnp.tril(jnp.ones((length, length), dtype=bool))
  return jnp.where(same & lower[None], 0.0, CAUSAL_MASK_VALUE)[:, None]


def element_bits(seed: jax.Array, first: jax.Array, second: jax.Array) -> jax.Array:
  """Pseudo-random uint32 per (first, second) id pair under a 2-word seed."""
  h = hashing.mix32(first.astype(jnp.uint32) ^ seed[0])
  return hashing.mix32(h + second.astype(jnp.uint32) * jnp.uint32(0x9E3779B9) + seed[1])


def token_dropout(x: jax.Array, seed: jax.Array | None, rate: float, first: jax.Array,
                  second: jax.Array) -> jax.Array:
  """Dropout whose mask is a function of (seed, token identity, element), not of the layout.

  Each element's keep decision hashes `first` (the token's id: its sequence
  in the global batch and its position) with `second` (the element's index)
  under a 2-word seed. The same token therefore gets the same mask whether its
  sequence is padded alone in a row or packed with others, whichever device
  or process holds it, and whether the layer computes every token of its rows
  or a few selected ones. `seed` None means no dropout.
  """
  if seed is None or rate == 0.0:
    return x
  threshold = jnp.uint32(min(int(rate * 2.0**32), 2**32 - 1))
  keep = element_bits(seed, first, second) >= threshold
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def feature_dropout(x, seed, rate, token_ids):
  """Hidden dropout of [..., H] activations of the tokens `token_ids` [...]."""
  features = jnp.arange(x.shape[-1], dtype=jnp.uint32)
  return token_dropout(x, seed, rate, token_ids[..., None], features)


def dropout_seeds(module: nn.Module, count: int, deterministic: bool):
  """`count` 2-word dropout seeds from the module's 'dropout' stream (None when off)."""
  if deterministic:
    return (None,) * count
  bits = jax.random.bits(module.make_rng("dropout"), (count, 2), jnp.uint32)
  return tuple(bits[i] for i in range(count))


@dataclasses.dataclass(frozen=True)
class Queries:
  """Which tokens a layer computes outputs for.

  Every token of the first `dense_rows` rows (-1: all rows), plus the tokens
  at `index`, flat indices into the remaining rows' [rows * L] tokens.
  Attention still runs over every token (it is the cheap part at these
  sizes); the per-token work after it (output projection, feed-forward, layer
  norms) runs for the queried tokens only. Used for the last layer where a
  loss reads only each sequence's newest token.
  """
  dense_rows: int = -1
  index: jax.Array | None = None


def _lookup(embed: nn.Embed, ids: jax.Array) -> jax.Array:
  return item_table_lib.lookup(embed.embedding, ids)


def gather_tokens(x: jax.Array, queries: Queries) -> jax.Array:
  """[rows, L, ...] -> [T, ...]: the dense rows' tokens, then the indexed ones."""
  dense = x[:queries.dense_rows] if queries.dense_rows >= 0 else x
  flat = dense.reshape((-1,) + x.shape[2:])
  if queries.index is None:
    return flat
  rest = x[dense.shape[0]:].reshape((-1,) + x.shape[2:])
  return jnp.concatenate([flat, rest[queries.index]])


class SelfAttention(nn.Module):
  """Multi-head self-attention with the reference's additive mask.

  Attends over every token of every row, then returns the projected context
  of the queried tokens only, [T, H] (see Queries).
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, token_ids: jax.Array,
               positions: jax.Array, queries: Queries, seed: jax.Array | None) -> jax.Array:
    cfg = self.config
    hidden = x.shape[-1]
    heads, head_dim = cfg.num_heads, hidden // cfg.num_heads
    query, key, value = (_dense(hidden, cfg.initializer_range, name, cfg.dtype)(x)
                         for name in ("query", "key", "value"))              # [b, L, H]
    # One head at a time: plain batched [L, d] x [d, L] products, which XLA:CPU
    # runs faster than one 4-D einsum over all heads (no transposes).
    contexts = []
    for h in range(heads):
      part = slice(h * head_dim, (h + 1) * head_dim)
      scores = jnp.einsum("bqd,bkd->bqk", query[..., part], key[..., part],
                          preferred_element_type=jnp.float32) / math.sqrt(head_dim)
      probs = jax.nn.softmax(scores + bias[:, 0], axis=-1).astype(cfg.dtype)   # softmax in f32
      # Attention weight (query token, key position, head): keys of other
      # sequences are masked out, so a key is identified by its position.
      key_ids = positions[:, None, :] * heads + h
      probs = token_dropout(probs, seed, cfg.attention_dropout, token_ids[:, :, None], key_ids)
      contexts.append(jnp.einsum("bqk,bkd->bqd", probs, value[..., part]))
    context = jnp.concatenate(contexts, axis=-1)                             # [b, L, H]
    return _dense(hidden, cfg.initializer_range, "output", cfg.dtype)(
        gather_tokens(context, queries)).astype(jnp.float32)


class FeedForward(nn.Module):
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.config
    y = _dense(4 * cfg.hidden_size, cfg.initializer_range, "dense_1", cfg.dtype)(x)
    # Exact GELU as the reference writes it, x/2 (1 + erf(x / sqrt 2)): XLA:CPU
    # runs erf as one polynomial, while jax.nn.gelu's erfc form computes two
    # branches and an exp per element.
    y = 0.5 * y * (1.0 + jax.lax.erf(y * (1.0 / math.sqrt(2.0))))
    return _dense(cfg.hidden_size, cfg.initializer_range, "dense_2", cfg.dtype)(y).astype(
        jnp.float32)


class TransformerLayer(nn.Module):
  """Post-LN block: LN(x + drop(attn(x))), then LN(x + drop(ffn(x))).

  Takes [rows, L, H] and returns the queried tokens' outputs [T, H] (see
  Queries), all of them by default.
  """
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, token_ids: jax.Array, positions: jax.Array,
               deterministic: bool, queries: Queries = Queries()) -> jax.Array:
    cfg = self.config
    attention_seed, attended_seed, transformed_seed = dropout_seeds(self, 3, deterministic)
    attended = SelfAttention(cfg, name="attention")(x, bias, token_ids, positions, queries,
                                                    attention_seed)
    out_ids = gather_tokens(token_ids, queries)
    attended = feature_dropout(attended, attended_seed, cfg.hidden_dropout, out_ids)
    y = layer_norm("attention_norm")(gather_tokens(x, queries) + attended)
    transformed = FeedForward(cfg, name="feed_forward")(y)
    transformed = feature_dropout(transformed, transformed_seed, cfg.hidden_dropout, out_ids)
    return layer_norm("feed_forward_norm")(y + transformed)


class Encoder(nn.Module):
  """The stack of layers; the last one computes only the queried tokens."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array, bias: jax.Array, token_ids: jax.Array, positions: jax.Array,
               deterministic: bool, queries: Queries = Queries(),
               padding: jax.Array | None = None) -> jax.Array:
    """`padding` [rows, L] bool marks the padding tokens (used when the spec zeroes them)."""
    spec = encoder_registry.get(self.config.encoder)
    for i in range(self.config.num_layers):
      last = i == self.config.num_layers - 1
      if spec.zero_padding and padding is not None:
        x = jnp.where(padding[..., None], 0.0, x)
      out = spec.layer(self.config, name=f"layer_{i}")(
          x, bias, token_ids, positions, deterministic, queries if last else Queries())
      x = out if last else out.reshape(x.shape)
    return x


# Not trims_padding: a prefix with no items attends to nothing but padding, so its newest
# position averages over however many padding columns its row has.
encoder_registry.register(encoder_registry.EncoderSpec("sasrec", TransformerLayer))


class Heads(nn.Module):
  """One H->H dense per pre-training objective, named after it."""
  config: ModelConfig

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    cfg = self.config
    return {name: _dense(cfg.hidden_size, cfg.initializer_range, name)(x)
            for name in cfg.head_names}


class S3RecModel(nn.Module):
  """Embeddings + encoder + one dense head per pre-training objective."""
  config: ModelConfig

  def setup(self):
    cfg = self.config
    embed_init = nn.initializers.normal(cfg.initializer_range)
    # Split over a mesh axis (inside shard_map), the module sees this device's block.
    item_rows = (cfg.item_rows if cfg.item_table_axis is None
                 else cfg.item_rows // jax.lax.axis_size(cfg.item_table_axis))
    self.item_embeddings = nn.Embed(item_rows, cfg.hidden_size, embedding_init=embed_init)
    self.attribute_embeddings = nn.Embed(cfg.attribute_size, cfg.hidden_size,
                                         embedding_init=embed_init)
    self.position_embeddings = nn.Embed(cfg.max_len, cfg.hidden_size, embedding_init=embed_init)
    self.input_norm = layer_norm("input_norm")
    self.encoder = Encoder(cfg)
    self.heads = Heads(cfg)

  def encode(self, ids: jax.Array, causal: bool, deterministic: bool = True,
             segment_ids: jax.Array | None = None, positions: jax.Array | None = None,
             token_ids: jax.Array | None = None, queries: Queries | None = None):
    """Encodes ids [B, L] (L <= max_len) into [B, L, H].

    With `queries`, returns only the queried tokens' outputs [T, H] (every
    token of the first `queries.dense_rows` rows, then those at
    `queries.index`): the same values, with the last layer's per-token work
    done for those tokens only.

    Without `segment_ids`/`positions` each row is one left-padded sequence
    whose newest item sits at position max_len - 1 (a window trimmed of
    leading padding keeps its absolute positions). Packed rows pass both:
    segment ids tell the sequences of a row apart and positions give each
    token its absolute position in its own max_len window. `token_ids` name
    each token for dropout (default: its place in this array).
    """
    cfg = self.config
    chex.assert_rank(ids, 2)
    batch, length = ids.shape
    if length > cfg.max_len:
      raise ValueError(f"sequence length {length} exceeds model.max_len={cfg.max_len}")
    if segment_ids is None:
      segment_ids = (ids > 0).astype(jnp.int32)
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(cfg.max_len - length, cfg.max_len), ids.shape)
    chex.assert_equal_shape([ids, positions, segment_ids])
    if token_ids is None:
      token_ids = jnp.arange(batch)[:, None] * cfg.max_len + positions
    items = item_table_lib.lookup(self.item_embeddings.embedding, ids, cfg.item_table_axis)
    # The padding row is not trained (the references' padding_idx=0): attention never reads
    # a padding token, but a filter over the whole row does.
    items = jnp.where((ids == 0)[..., None], jax.lax.stop_gradient(items), items)
    if encoder_registry.get(cfg.encoder).position_embeddings:
      items = items + _lookup(self.position_embeddings, positions)
    x = self.input_norm(items)
    (input_seed,) = dropout_seeds(self, 1, deterministic)
    x = feature_dropout(x, input_seed, cfg.hidden_dropout, token_ids)
    out = self.encoder(x, attention_bias(segment_ids, causal), token_ids, positions,
                       deterministic, queries or Queries(), padding=segment_ids == 0)
    return out.reshape(batch, length, -1) if queries is None else out

  def __call__(self, ids: jax.Array) -> jax.Array:
    """Touches every parameter (used by `init`); returns the bidirectional encoding."""
    out = self.encode(ids, causal=False)
    _ = self.attribute_embeddings.embedding
    _ = self.position_embeddings.embedding   # kept in the tree by encoders that do not use it
    self.heads(out)
    return out


def init_params(config: ModelConfig, key: jax.Array) -> dict:
  """Fresh parameters drawn from `key`, the same whatever the item table's layout: its
  padding rows (a sharded table's, past item_size) are zeros."""
  model = S3RecModel(dataclasses.replace(config, item_table_axis=None, item_table_rows=0))
  dummy = jnp.ones((1, config.max_len), jnp.int32)
  # Jitted: one small program instead of dozens of op-by-op ones, each of
  # which would stay compiled (and resident) for the life of the process.
  params = jax.jit(model.init)(key, dummy)["params"]
  return with_item_rows(params, config.item_rows)


def with_item_rows(params: dict, rows: int) -> dict:
  """`params` with the item table cut or zero-padded to `rows` rows (rows past
  item_size are padding: never looked up, never candidates)."""
  table = item_table(params)
  if table.shape[0] == rows:
    return params
  fitted = (table[:rows] if table.shape[0] > rows
            else jnp.pad(table, ((0, rows - table.shape[0]), (0, 0))))
  return dict(params, item_embeddings={"embedding": fitted})


def encode(config: ModelConfig, params: dict, ids: jax.Array, *, causal: bool,
           dropout_key: jax.Array | None = None, segment_ids: jax.Array | None = None,
           positions: jax.Array | None = None, token_ids: jax.Array | None = None,
           queries: Queries | None = None) -> jax.Array:
  """Pure encoder: dropout is on exactly when a key is given. See S3RecModel.encode."""
  deterministic = dropout_key is None
  rngs = {} if deterministic else {"dropout": dropout_key}
  return S3RecModel(config).apply({"params": params}, ids, causal, deterministic, segment_ids,
                                  positions, token_ids, queries, rngs=rngs,
                                  method=S3RecModel.encode)


def apply_head(head_params: dict, x: jax.Array) -> jax.Array:
  """A pre-training head: the dense x W + b."""
  return x @ head_params["kernel"] + head_params["bias"]


def item_table(params: dict) -> jax.Array:
  return params["item_embeddings"]["embedding"]


def attribute_table(params: dict) -> jax.Array:
  return params["attribute_embeddings"]["embedding"]


def encoder_params(params: dict) -> dict:
  """The part of a parameter tree that fine-tuning inherits (everything but the heads)."""
  return {k: params[k] for k in ENCODER_PARAM_GROUPS}


def model_config(config: ml_collections.ConfigDict, sizes,
                 head_names: tuple[str, ...] = (),
                 layout: item_table_lib.Layout | None = None) -> ModelConfig:
  """The encoder's static config from a run config and the data's sizes (item_size,
  attribute_size); `layout` (default: replicated) places the item table."""
  m = config.model
  name = m.get("encoder", "sasrec")
  spec = encoder_registry.get(name)
  bound = (settings_lib.bind(spec.settings, config.settings.to_dict().get(spec.settings, {}))
           if spec.settings else None)
  return ModelConfig(encoder=name, encoder_settings=bound,
      item_size=sizes.item_size, attribute_size=sizes.attribute_size, hidden_size=m.hidden_size,
      num_layers=m.num_layers, num_heads=m.num_heads, max_len=config.max_seq_length,
      hidden_dropout=m.hidden_dropout, attention_dropout=m.attention_dropout,
      initializer_range=m.initializer_range, head_names=tuple(head_names),
      compute_dtype=m.compute_dtype,
      item_table_axis=layout.axis if layout else None,
      item_table_rows=layout.rows if layout and layout.sharded else 0)
