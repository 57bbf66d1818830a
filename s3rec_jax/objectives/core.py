"""The objective registry, shared by pre-training and fine-tuning.

An objective is a pure function of `ObjectiveInputs` (the encoder outputs of
the views it declared, the parameters, the batch, lookup tables, a PRNG key
and static options) returning its loss summed over the batch. It declares
the *views* it reads: `views` whose output it needs at every token and
`last_token_views` whose output it needs only at each sequence's newest
token. A view is a batch array the input pipeline built (S3-Rec's
`masked_items`, or `sequence`, the phase's item sequence) or one built on
device by a registered builder (see s3rec_jax/objectives/views.py). The training step
builds and encodes the union of the enabled objectives' views in one batched
pass, bidirectional in pre-training and causal in fine-tuning.

Each objective names the phases it can run in. Pre-training adds the
objectives' sums with their weights (as the reference does); fine-tuning
divides each by its global count first (`mean_over`: target positions or
sequences), so an auxiliary term's weight means the same at any batch size.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import jax

from s3rec_jax.core import settings as settings_lib
from s3rec_jax.model import item_table as item_table_lib

FORMS = ("reference", "infonce")          # the forms of the S3-Rec objectives
PHASES = ("pretrain", "finetune")
MEAN_OVER = ("sequences", "targets")


@dataclasses.dataclass(frozen=True)
class ObjectiveOptions:
  """Static settings an objective may read."""
  mask_id: int
  num_items: int                 # real items are 1..num_items
  temperature: float = 1.0       # infonce forms
  mip_num_negatives: int = 0     # infonce MIP: 0 = every other item, K = K shared samples
  axis_name: str | None = None   # set inside a shard_map: the batch is split over this axis
  # Set when the item table's rows are split over this mesh axis (s3rec_jax.model.item_table):
  # objectives read it through ObjectiveInputs.item_rows / shared_item_rows / item_table.
  item_table_axis: str | None = None
  # The model's compute dtype (model.compute_dtype): "bfloat16" runs the scoring
  # matmuls of `ce` and `sampled_softmax` in bfloat16 (float32 accumulation).
  compute_dtype: str = "float32"
  # Fine-tuning's trained positions (finetune.targets): "all_positions", or
  # "last_of_prefixes" (each sequence of the batch is a prefix; only its newest token has a
  # target).
  targets: str = "all_positions"
  # The model's encoder (config.model.encoder), for objectives that read its parameters.
  encoder: str = "sasrec"
  # Plug-in settings: ((plug-in name, its bound settings record), ...), from config.settings
  # (core.settings.bind_all; see `settings_tuple`).
  settings: tuple = ()

  def settings_of(self, plugin: str) -> Any:
    """Plug-in `plugin`'s settings record (its defaults when the options hold none)."""
    return settings_lib.find(self.settings, plugin)


def settings_tuple(values: Mapping[str, Mapping[str, Any]]) -> tuple:
  """config.settings (name -> {field: value}, fields left out at their defaults) as the
  hashable ObjectiveOptions.settings, checked against the plug-ins' declared records."""
  return settings_lib.bind_all(values)


@dataclasses.dataclass(frozen=True)
class ObjectiveInputs:
  outputs: Mapping[str, jax.Array]   # full view name -> encoder output [R, L, H]
  params: Mapping                    # full parameter tree (embeddings [+ heads])
  # The batch (see input_pipeline): per-token [R, L] arrays laid out alike
  # (one or several sequences per row), per-sequence `last_index` [B] (each
  # sequence's newest token in the flattened R * L tokens) and `weights` [B]
  # (0 = padding). `sequence` is the phase's item sequence.
  batch: Mapping[str, jax.Array]
  tables: Mapping[str, jax.Array]    # replicated lookup tables, e.g. 'attr_ids' [item_size, K]
  key: jax.Array                     # for objectives that sample on device
  options: ObjectiveOptions
  # last-token view name -> encoder output at each sequence's newest token [B, H]
  last_outputs: Mapping[str, jax.Array] = dataclasses.field(default_factory=dict)
  # view name -> that view's own layout (s3rec_jax.objectives.views.View), for views built on device
  layouts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # Values several objectives compute alike, computed once per loss evaluation.
  _shared: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

  def shared(self, key, compute: Callable[[], jax.Array]) -> jax.Array:
    """compute(), once per loss evaluation for each key (later calls reuse it)."""
    if key not in self._shared:
      self._shared[key] = compute()
    return self._shared[key]

  @property
  def item_table(self) -> jax.Array:
    """The item table: all of it, or this device's block when `options.item_table_axis` is set."""
    return self.params[item_table_lib.PARAM_GROUP][item_table_lib.PARAM_NAME]

  def item_rows(self, ids: jax.Array) -> jax.Array:
    """Item embeddings of this device's `ids` [...] -> [..., H], whichever the table's layout."""
    axis = self.options.item_table_axis
    return self.item_table[ids] if axis is None else item_table_lib.lookup(
        self.item_table, ids, axis)

  def shared_item_rows(self, ids: jax.Array) -> jax.Array:
    """Like `item_rows` for ids that are the same on every device (e.g. shared negatives)."""
    axis = self.options.item_table_axis
    return self.item_table[ids] if axis is None else item_table_lib.lookup_shared(
        self.item_table, ids, axis)

  def last_token(self, view: str) -> jax.Array:
    """[B, H] output at each sequence's newest token (0 rows are padding sequences)."""
    if view in self.last_outputs:
      return self.last_outputs[view]
    out = self.outputs[view]
    last_index = (self.layouts[view].last_index if view in self.layouts
                  else self.batch["last_index"])
    return out.reshape(-1, out.shape[-1])[last_index]


def sequence_weights(batch: Mapping[str, jax.Array]) -> jax.Array:
  """[B] weights of the sequences that have tokens: a user whose training input is
  empty has weight 1 but no representation (its last_index points at another's)."""
  weights = batch["weights"]
  if "lengths" in batch:
    weights = weights * (batch["lengths"] > 0).astype(weights.dtype)
  return weights


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
  phases: tuple[str, ...] = ("pretrain",)
  mean_over: str = "sequences"       # fine-tuning's divisor: "sequences" or "targets"
  uses_head: bool = False            # a dense head heads/<name> (pre-training parameters)
  # options -> more last-token views, for views whose number is a setting.
  more_last_token_views: Callable[[ObjectiveOptions], tuple[str, ...]] | None = None

  def last_token_views_for(self, options: ObjectiveOptions | None) -> tuple[str, ...]:
    extra = self.more_last_token_views(options) if (self.more_last_token_views and options) else ()
    return self.last_token_views + tuple(v for v in extra if v not in self.last_token_views)


REGISTRY: dict[tuple[str, str], Objective] = {}


def register(name: str, form: str, views: tuple[str, ...] = (),
             last_token_views: tuple[str, ...] = (), whole_batch: bool = False,
             phases: tuple[str, ...] = ("pretrain",), mean_over: str = "sequences",
             uses_head: bool = False,
             more_last_token_views: Callable[[ObjectiveOptions], tuple[str, ...]] | None = None):
  """Decorator adding `fn` to the registry under (name, form)."""
  if not set(phases) <= set(PHASES) or not phases:
    raise ValueError(f"objective {name!r}: phases must be among {PHASES}, got {phases}")
  if mean_over not in MEAN_OVER:
    raise ValueError(f"objective {name!r}: mean_over must be one of {MEAN_OVER}")

  def wrap(fn: ObjectiveFn) -> ObjectiveFn:
    key = (name, form)
    if key in REGISTRY:
      raise ValueError(f"objective {name!r} form {form!r} is registered twice")
    REGISTRY[key] = Objective(name, form, tuple(views), tuple(last_token_views), fn, whole_batch,
                              tuple(phases), mean_over, uses_head, more_last_token_views)
    return fn
  return wrap


def names(phase: str | None = None) -> tuple[str, ...]:
  return tuple(sorted({o.name for o in REGISTRY.values() if phase is None or phase in o.phases}))


def forms_of(name: str) -> tuple[str, ...]:
  return tuple(sorted(f for n, f in REGISTRY if n == name))


def get(name: str, form: str) -> Objective:
  if (name, form) not in REGISTRY:
    if name not in names():
      raise ValueError(f"unknown objective {name!r}; valid objectives: {', '.join(names())}")
    raise ValueError(f"objective {name!r} has no form {form!r}; valid forms: "
                     f"{', '.join(forms_of(name))}")
  return REGISTRY[(name, form)]


def resolve(weights: Mapping[str, float], form: str | Mapping[str, str],
            phase: str = "pretrain") -> tuple[tuple[Objective, float], ...]:
  """The enabled objectives (weight != 0) of `phase` with their weights, in name order.

  `form` is one form for all, or a mapping name -> form. An objective that
  has only one form takes that one whatever `form` says (the S3-Rec forms
  `reference`/`infonce` do not apply to, say, CL4SRec).
  """
  chosen = []
  for name in sorted(weights):
    weight = float(weights[name])
    if weight == 0.0:
      continue
    wanted = form if isinstance(form, str) else form.get(name, "reference")
    available = forms_of(name)
    if not available:
      raise ValueError(f"unknown objective {name!r}; valid objectives of {phase}: "
                       f"{', '.join(names(phase))}")
    if available and not any(phase in REGISTRY[(name, f)].phases for f in available):
      raise ValueError(f"objective {name!r} does not run in {phase}; objectives of {phase}: "
                       f"{', '.join(names(phase))}")
    objective = get(name, available[0] if len(available) == 1 else wanted)
    if phase not in objective.phases:
      raise ValueError(f"objective {name!r} form {objective.form!r} does not run in {phase}")
    chosen.append((objective, weight))
  if not chosen:
    raise ValueError(f"no objective of {phase} is enabled (all weights are 0)")
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


def views_of(objectives, options: ObjectiveOptions | None = None
             ) -> tuple[tuple[str, ...], tuple[str, ...]]:
  """(views some objective needs at every token, views needed at the newest token only)."""
  full, last = [], []
  for objective, _ in objectives:
    full.extend(v for v in objective.views if v not in full)
  for objective, _ in objectives:
    last.extend(v for v in objective.last_token_views_for(options)
                if v not in full and v not in last)
  return tuple(full), tuple(last)


def head_names(objectives) -> tuple[str, ...]:
  """The dense heads the enabled objectives need (pre-training parameters)."""
  return tuple(o.name for o, _ in objectives if o.uses_head)


def losses_of(objectives, inputs: ObjectiveInputs) -> dict[str, jax.Array]:
  """Each enabled objective's loss (a sum over the batch), by name."""
  return {objective.name: objective.fn(inputs) for objective, _ in objectives}


def weighted_total(objectives, losses: Mapping[str, jax.Array],
                   divisors: Mapping[str, jax.Array] | None = None) -> jax.Array:
  """sum_i w_i * loss_i (/ divisor_i when given: fine-tuning's means)."""
  total = 0.0
  for objective, weight in objectives:
    value = losses[objective.name]
    if divisors is not None:
      value = value / divisors[objective.mean_over]
    total = total + weight * value
  return total


def joint_loss(objectives, inputs: ObjectiveInputs) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Weighted sum of the objectives' losses (pre-training's sums), and each loss by name."""
  losses = losses_of(objectives, inputs)
  return weighted_total(objectives, losses), losses
