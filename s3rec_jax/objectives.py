"""Self-supervised pre-training objectives as pure functions in a registry.

An objective maps (encoder outputs, parameters, batch, tables, options) to a
scalar loss summed over the global batch. It declares the encoder *views* it
reads (names of [B, L] id arrays in the pre-training batch): `views` whose
output it needs at every token, and `last_token_views` whose output it needs
only at each sequence's newest token. The training step encodes the union of
the views of the enabled objectives in one batched pass, and computes the
last layer only at the newest tokens of views no objective needs in full.
A new objective is one decorated function here plus a weight in the config
(`config.pretrain.objectives.<name>`); its head `heads/<name>` is created
from that name. An objective whose loss for a sequence reads other sequences
of the batch (in-batch negatives) registers with `whole_batch=True`, which
keeps the training step from splitting the batch into micro-batches.

Two estimator forms exist for each built-in objective:
- `reference`: the sigmoid forms with summed reduction of the reference code,
  which give the published numbers;
- `infonce`: the paper's mutual-information form, softmax cross-entropy of the
  positive's bilinear score against negatives' scores, divided by a
  temperature, also summed over targets.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

from s3rec_jax import model as model_lib

FORMS = ("reference", "infonce")


@dataclasses.dataclass(frozen=True)
class ObjectiveOptions:
  """Static settings an objective may read."""
  mask_id: int
  num_items: int                 # real items are 1..num_items
  temperature: float = 1.0       # infonce forms
  mip_num_negatives: int = 0     # infonce MIP: 0 = every other item, K = K shared samples
  axis_name: str | None = None   # set inside a shard_map: the batch is split over this axis


@dataclasses.dataclass(frozen=True)
class ObjectiveInputs:
  outputs: Mapping[str, jax.Array]   # full view name -> encoder output [R, L, H]
  params: Mapping                    # full parameter tree (embeddings + heads)
  # Pre-training batch (see input_pipeline.PretrainBatches): per-token [R, L]
  # views laid out alike (one or several sequences per row), and per-sequence
  # `last_index` [B] (each sequence's newest token in the flattened R * L
  # tokens) and `weights` [B] (0 = padding).
  batch: Mapping[str, jax.Array]
  tables: Mapping[str, jax.Array]    # replicated lookup tables, e.g. 'attr_ids' [item_size, K]
  key: jax.Array                     # for objectives that sample on device
  options: ObjectiveOptions
  # last-token view name -> encoder output at each sequence's newest token [B, H]
  last_outputs: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
  # Values several objectives compute alike, computed once per loss evaluation.
  _shared: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def shared(self, key, compute: Callable[[], jax.Array]) -> jax.Array:
    """compute(), once per loss evaluation for each key (later calls reuse it)."""
    if key not in self._shared:
      self._shared[key] = compute()
    return self._shared[key]

  def last_token(self, view: str) -> jax.Array:
    """[B, H] output at each sequence's newest token (0 rows are padding sequences)."""
    if view in self.last_outputs:
      return self.last_outputs[view]
    out = self.outputs[view]
    return out.reshape(-1, out.shape[-1])[self.batch["last_index"]]


ObjectiveFn = Callable[[ObjectiveInputs], jax.Array]


@dataclasses.dataclass(frozen=True)
class Objective:
  name: str
  form: str
  views: tuple[str, ...]             # needed at every token
  last_token_views: tuple[str, ...]  # needed at the newest token only
  fn: ObjectiveFn
  # True when a sequence's loss reads other sequences of the global batch
  # (e.g. in-batch negatives): the batch must then be encoded in one piece.
  whole_batch: bool = False


REGISTRY: dict[tuple[str, str], Objective] = {}


def register(name: str, form: str, views: tuple[str, ...] = (),
             last_token_views: tuple[str, ...] = (), whole_batch: bool = False):
  """Decorator adding `fn` to the registry under (name, form)."""
  def wrap(fn: ObjectiveFn) -> ObjectiveFn:
    key = (name, form)
    if key in REGISTRY:
      raise ValueError(f"objective {name!r} form {form!r} is registered twice")
    REGISTRY[key] = Objective(name, form, tuple(views), tuple(last_token_views), fn, whole_batch)
    return fn
  return wrap


def names() -> tuple[str, ...]:
  return tuple(sorted({n for n, _ in REGISTRY}))


def get(name: str, form: str) -> Objective:
  if (name, form) not in REGISTRY:
    if name not in names():
      raise ValueError(f"unknown objective {name!r}; valid objectives: {', '.join(names())}")
    valid = sorted(f for n, f in REGISTRY if n == name)
    raise ValueError(f"objective {name!r} has no form {form!r}; valid forms: {', '.join(valid)}")
  return REGISTRY[(name, form)]


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


def _attribute_infonce(scores: jax.Array, attr_ids: jax.Array, temperature: float) -> jax.Array:
  """Per position: sum over the item's attributes a of -log softmax over {a} + non-attributes.

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
  return jnp.sum(jnp.where(attr_ids > 0, per_attr, 0.0), -1)


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
    return _attribute_infonce(scores.reshape(b * l, -1), attr_ids.reshape(b * l, -1),
                              inputs.options.temperature).reshape(b, l)
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
  table = model_lib.item_table(inputs.params)
  pos = jnp.sum(query * table[inputs.batch["items"]], -1)
  neg = jnp.sum(query * table[inputs.batch["negative_items"]], -1)
  return jnp.sum(_difference_of_sigmoids_loss(pos, neg) * _is_masked(inputs))


@register("mip", "infonce", views=("masked_items",))
def mip_infonce(inputs: ObjectiveInputs) -> jax.Array:
  """Softmax over the whole catalogue, or over K negatives shared by the batch."""
  opts = inputs.options
  query = _head(inputs, "mip", inputs.outputs["masked_items"]) / opts.temperature
  table = model_lib.item_table(inputs.params)
  items = inputs.batch["items"]
  pos = jnp.sum(query * table[items], -1)
  if opts.mip_num_negatives == 0:
    catalogue = table[1:opts.num_items + 1]                            # real items only
    logits = query @ catalogue.T                                        # [B, L, N]
    # Cross-entropy over the catalogue, which holds the positive once.
    per_position = jax.nn.logsumexp(logits, -1) - pos
  else:
    negatives = jax.random.randint(inputs.key, (opts.mip_num_negatives,), 1, opts.num_items + 1)
    logits = query @ table[negatives].T                                 # [B, L, K]
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


@register("sp", "infonce", last_token_views=_SEGMENT_VIEWS[:2], whole_batch=True)
def sp_infonce(inputs: ObjectiveInputs) -> jax.Array:
  """Each context against its own span and the other sequences' spans of the global batch."""
  query = _head(inputs, "sp", inputs.last_token("segment_context"))
  positive = inputs.last_token("segment_positive")
  weights = inputs.batch["weights"]
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


# --- the joint loss ---------------------------------------------------------


def resolve(weights: Mapping[str, float], form: str | Mapping[str, str]) -> tuple[tuple[Objective, float], ...]:
  """The enabled objectives (weight != 0) with their weights, in name order."""
  chosen = []
  for name in sorted(weights):
    weight = float(weights[name])
    if weight == 0.0:
      continue
    chosen_form = form if isinstance(form, str) else form.get(name, "reference")
    chosen.append((get(name, chosen_form), weight))
  if not chosen:
    raise ValueError("config.pretrain.objectives enables no objective (all weights are 0)")
  return tuple(chosen)


def check_micro_batches(objectives, micro_batches: int) -> None:
  """Refuses to split a batch into micro-batches when an enabled objective needs it whole."""
  if micro_batches < 1:
    raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
  coupled = [o.name for o, _ in objectives if o.whole_batch]
  if micro_batches > 1 and coupled:
    raise ValueError(
        f"objective(s) {', '.join(coupled)} compare each sequence with the whole global batch, "
        f"so the whole batch must be encoded in one piece, not in {micro_batches} "
        f"micro-batches; set pretrain.micro_batches=1 (or 0, automatic)")


def views_of(objectives) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(views some objective needs at every token, views needed at the newest token only)."""
  full, last = [], []
  for objective, _ in objectives:
    full.extend(v for v in objective.views if v not in full)
  for objective, _ in objectives:
    last.extend(v for v in objective.last_token_views if v not in full and v not in last)
  return tuple(full), tuple(last)


def joint_loss(objectives, inputs: ObjectiveInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the objectives' losses, and each loss by name."""
  losses = {objective.name: objective.fn(inputs) for objective, _ in objectives}
  total = sum(weight * losses[objective.name] for objective, weight in objectives)
  return total, losses
