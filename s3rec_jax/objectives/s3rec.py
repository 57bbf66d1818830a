"""S3-Rec's four pre-training objectives: AAP, MIP, MAP and SP.

Two estimator forms of each:
- `reference`: the sigmoid forms with summed reduction of the reference code,
  which give the published numbers;
- `infonce`: the paper's mutual-information form, softmax cross-entropy of the
  positive's bilinear score against negatives' scores, divided by a
  temperature, also summed over targets.

They read the views the input pipeline builds for pre-training
(`masked_items`, `segment_context`, `segment_positive`, `segment_negative`)
and each has its own dense head `heads/<name>`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from s3rec_jax.core import settings
from s3rec_jax.model import encoder as model_lib
from s3rec_jax.objectives.core import ObjectiveInputs
from s3rec_jax.objectives.core import register as _register
from s3rec_jax.ops import catalogue_softmax


@settings.declare("infonce")
class InfoNCESettings:
  """The infonce form of the S3-Rec objectives (pretrain.form=infonce)."""
  # AAP/MAP over an item's attributes: "mean" (the paper's expectation over A_i) or "sum"
  # (this project's form before the fix).
  attribute_reduction: str = settings.one_of("mean", ("mean", "sum"))
  # SP's negatives: "same_layout" (sp_num_negatives spans at the positive's own positions,
  # the first being the reference's negative) or "in_batch" (the other sequences' spans).
  sp_negatives: str = settings.one_of("same_layout", ("same_layout", "in_batch"))
  sp_num_negatives: int = settings.positive(1)


def register(name, form, **kwargs):
  return _register(name, form, uses_head=True, **kwargs)


# --- shared pieces ----------------------------------------------------------


def _head(inputs: ObjectiveInputs, name: str, x: jax.Array) -> jax.Array:
  return model_lib.apply_head(inputs.params["heads"][name], x)


def _softplus(x: jax.Array) -> jax.Array:
  """log(1 + e^x), stable; fewer operations than jax.nn.softplus (no infinity
  special cases), which matters on the [positions, attributes] score matrix."""
  return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _attribute_bce_sum(scores: jax.Array, attr_ids: jax.Array) -> jax.Array:
  """Sum over ALL attributes of BCE(sigmoid(score), multi-hot), as the reference does.

  Uses BCE = softplus(s) - y s, so only the item's own attribute ids are
  gathered (no dense multi-hot). scores [..., A]; attr_ids [..., K] padded with 0.
  """
  own = jnp.take_along_axis(scores, attr_ids, axis=-1)
  return jnp.sum(_softplus(scores), -1) - jnp.sum(jnp.where(attr_ids > 0, own, 0.0), -1)


def _attribute_infonce(scores: jax.Array, attr_ids: jax.Array, temperature: float,
                       reduction: str = "mean") -> jax.Array:
  """Per position: over the item's attributes a, -log softmax of a among {a} + non-attributes,
  averaged (`mean`: the paper's expectation over A_i) or summed (`sum`).

  scores [N, A]; attr_ids [N, K] padded with 0 (row/attribute 0 is never a candidate).
  """
  logits = scores / temperature
  rows = jnp.arange(logits.shape[0])[:, None]
  is_own = jnp.zeros(logits.shape, bool).at[rows, attr_ids].set(True)
  is_own = is_own.at[:, 0].set(True)  # attribute 0 is unused: never a negative
  neg_lse = jax.nn.logsumexp(jnp.where(is_own, -jnp.inf, logits), axis=-1)
  pos = jnp.take_along_axis(logits, attr_ids, axis=-1)
  # -log(e^p / (e^p + sum_neg e^n)) = softplus(lse_neg - p); 0 where the item has every attribute.
  per_attr = jax.nn.softplus(neg_lse[:, None] - pos)
  per_attr = jnp.where(jnp.isfinite(neg_lse)[:, None], per_attr, 0.0)
  total = jnp.sum(jnp.where(attr_ids > 0, per_attr, 0.0), -1)
  if reduction == "sum":
    return total
  return total / jnp.maximum(jnp.sum(attr_ids > 0, -1), 1).astype(total.dtype)


def _attribute_scores(inputs: ObjectiveInputs) -> jax.Array:
  """[R, L, A] attribute scores of every token, each from the head of the objective
  that scores that token: AAP's at visible items, MAP's at masked ones.

  The two position sets are disjoint, so one score matrix (and one loss pass
  over it) serves both objectives; the values at each objective's positions
  are exactly those of its own head.
  """
  out = inputs.outputs["masked_items"]
  heads = inputs.params["heads"]
  query = _head(inputs, "aap", out) if "aap" in heads else None
  if "map" in heads:
    query_map = _head(inputs, "map", out)
    query = query_map if query is None else jnp.where(_is_masked(inputs)[..., None] > 0,
                                                      query_map, query)
  return query @ model_lib.attribute_table(inputs.params).T


def _attribute_loss(inputs: ObjectiveInputs, position_mask: jax.Array, form: str) -> jax.Array:
  def per_position():
    scores = inputs.shared("attribute_scores", lambda: _attribute_scores(inputs))
    b, l, _ = scores.shape
    attr_ids = inputs.tables["attr_ids"][inputs.batch["items"]]                 # [B, L, K]
    if form == "reference":
      return _attribute_bce_sum(scores, attr_ids)
    reduction = inputs.options.settings_of("infonce").attribute_reduction
    return _attribute_infonce(scores.reshape(b * l, -1), attr_ids.reshape(b * l, -1),
                              inputs.options.temperature, reduction).reshape(b, l)
  return jnp.sum(inputs.shared(("attribute_loss", form), per_position) * position_mask)


def _is_masked(inputs: ObjectiveInputs) -> jax.Array:
  return (inputs.batch["masked_items"] == inputs.options.mask_id).astype(jnp.float32)


def _is_visible_item(inputs: ObjectiveInputs) -> jax.Array:
  ids = inputs.batch["masked_items"]
  return ((ids != inputs.options.mask_id) & (ids != 0)).astype(jnp.float32)


def _difference_of_sigmoids_loss(pos_logit: jax.Array, neg_logit: jax.Array) -> jax.Array:
  # The reference's quirk: BCE(sigmoid(sigmoid(p) - sigmoid(q)), 1).
  return jax.nn.softplus(-(jax.nn.sigmoid(pos_logit) - jax.nn.sigmoid(neg_logit)))


# --- AAP --------------------------------------------------------------------


@register("aap", "reference", views=("masked_items",))
def aap_reference(inputs: ObjectiveInputs) -> jax.Array:
  """Associated attribute prediction at visible (unmasked, non-padding) positions."""
  return _attribute_loss(inputs, _is_visible_item(inputs), "reference")


@register("aap", "infonce", views=("masked_items",))
def aap_infonce(inputs: ObjectiveInputs) -> jax.Array:
  return _attribute_loss(inputs, _is_visible_item(inputs), "infonce")


# --- MAP --------------------------------------------------------------------


@register("map", "reference", views=("masked_items",))
def map_reference(inputs: ObjectiveInputs) -> jax.Array:
  """Masked attribute prediction: the masked item's attributes from its context."""
  return _attribute_loss(inputs, _is_masked(inputs), "reference")


@register("map", "infonce", views=("masked_items",))
def map_infonce(inputs: ObjectiveInputs) -> jax.Array:
  return _attribute_loss(inputs, _is_masked(inputs), "infonce")


# --- MIP --------------------------------------------------------------------


@register("mip", "reference", views=("masked_items",))
def mip_reference(inputs: ObjectiveInputs) -> jax.Array:
  """Masked item prediction against one sampled negative per masked position."""
  query = _head(inputs, "mip", inputs.outputs["masked_items"])
  pos = jnp.sum(query * inputs.item_rows(inputs.batch["items"]), -1)
  neg = jnp.sum(query * inputs.item_rows(inputs.batch["negative_items"]), -1)
  return jnp.sum(_difference_of_sigmoids_loss(pos, neg) * _is_masked(inputs))


@register("mip", "infonce", views=("masked_items",))
def mip_infonce(inputs: ObjectiveInputs) -> jax.Array:
  """Softmax over the whole catalogue, or over K negatives shared by the batch."""
  opts = inputs.options
  query = _head(inputs, "mip", inputs.outputs["masked_items"]) / opts.temperature
  items = inputs.batch["items"]
  if opts.mip_num_negatives == 0 and opts.item_table_axis is not None:
    # The same cross-entropy over a table split over devices, in one chunk per block.
    per_position = catalogue_softmax.cross_entropy(
        query.reshape(-1, query.shape[-1]), inputs.item_table, items.reshape(-1),
        num_items=opts.num_items, chunk_size=opts.num_items,
        axis_name=opts.item_table_axis).reshape(items.shape)
  elif opts.mip_num_negatives == 0:
    pos = jnp.sum(query * inputs.item_rows(items), -1)
    catalogue = inputs.item_table[1:opts.num_items + 1]                 # real items only
    logits = query @ catalogue.T                                        # [B, L, N]
    # Cross-entropy over the catalogue, which holds the positive once.
    per_position = jax.nn.logsumexp(logits, -1) - pos
  else:
    pos = jnp.sum(query * inputs.item_rows(items), -1)
    negatives = jax.random.randint(inputs.key, (opts.mip_num_negatives,), 1, opts.num_items + 1)
    logits = query @ inputs.shared_item_rows(negatives).T               # [B, L, K]
    logits = jnp.where(negatives[None, None, :] == items[..., None], -jnp.inf, logits)
    per_position = jax.nn.softplus(jax.nn.logsumexp(logits, -1) - pos)
  is_masked = _is_masked(inputs)
  return jnp.sum(jnp.where(is_masked > 0, per_position, 0.0))


# --- SP ---------------------------------------------------------------------

_SEGMENT_VIEWS = ("segment_context", "segment_positive", "segment_negative")


@register("sp", "reference", last_token_views=_SEGMENT_VIEWS)
def sp_reference(inputs: ObjectiveInputs) -> jax.Array:
  """Segment prediction: context vs the true span and a random span of the same length.

  Each sequence is represented by the output at its newest token.
  """
  query = _head(inputs, "sp", inputs.last_token("segment_context"))
  pos = jnp.sum(query * inputs.last_token("segment_positive"), -1)
  neg = jnp.sum(query * inputs.last_token("segment_negative"), -1)
  return jnp.sum(_difference_of_sigmoids_loss(pos, neg) * inputs.batch["weights"])


def segment_negative_views(options) -> tuple[str, ...]:
  """The same-layout negatives SP's infonce form reads: the reference's own
  `segment_negative` and, for settings.infonce.sp_num_negatives = K > 1,
  `segment_negative_2` .. `segment_negative_K` (the input pipeline builds them)."""
  chosen = options.settings_of("infonce")
  if chosen.sp_negatives != "same_layout":
    return ()
  count = chosen.sp_num_negatives
  return ("segment_negative",) + tuple(f"segment_negative_{k}" for k in range(2, count + 1))


@register("sp", "infonce", last_token_views=_SEGMENT_VIEWS[:2], whole_batch=True,
          more_last_token_views=segment_negative_views)
def sp_infonce(inputs: ObjectiveInputs) -> jax.Array:
  """Each context against its own span and negatives, softmax cross-entropy over temperature.

  `same_layout` (settings.infonce.sp_negatives, the default): the negatives
  are spans of the same length at the same positions as the positive's,
  with other items (the reference's negative, and more when
  sp_num_negatives > 1), so nothing but the span's content tells them apart.
  `in_batch`: the other sequences' positive spans of the global batch, which
  differ from the positive in length and mask layout (the earlier form).
  """
  query = _head(inputs, "sp", inputs.last_token("segment_context"))
  positive = inputs.last_token("segment_positive")
  weights = inputs.batch["weights"]
  negatives = segment_negative_views(inputs.options)
  if negatives:
    candidates = jnp.stack([positive] + [inputs.last_token(v) for v in negatives], 1)  # [B, 1+K, H]
    logits = jnp.einsum("bh,bkh->bk", query, candidates) / inputs.options.temperature
    per_row = jax.nn.logsumexp(logits, -1) - logits[:, 0]
    return jnp.sum(jnp.where(weights > 0, per_row, 0.0) * weights)
  all_positive, all_weights, own = positive, weights, jnp.arange(len(weights))
  axis = inputs.options.axis_name
  if axis is not None:  # negatives come from the whole global batch
    all_positive = jax.lax.all_gather(positive, axis, tiled=True)
    all_weights = jax.lax.all_gather(weights, axis, tiled=True)
    own = own + jax.lax.axis_index(axis) * len(weights)
  logits = (query @ all_positive.T) / inputs.options.temperature  # [B_local, B_global]
  logits = jnp.where(all_weights[None, :] > 0, logits, -jnp.inf)   # padding rows are no negatives
  per_row = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, own[:, None], 1)[:, 0]
  return jnp.sum(jnp.where(weights > 0, per_row, 0.0) * weights)
