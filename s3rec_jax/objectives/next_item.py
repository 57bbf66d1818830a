"""The next-item loss of fine-tuning, in three forms (config finetune.loss).

At every target position t of the causal encoding h_t of the `sequence` view,
with target item y_t:

- `bce` (the reference's): -log s(h_t . e_y) - log(1 - s(h_t . e_n)), one
  negative n per position sampled by the input pipeline outside the user's
  sequence.
- `ce`: softmax cross-entropy over the whole catalogue,
  log sum_j exp(h_t . e_j) - h_t . e_y over the real items j = 1..num_items (and the
  padding row j = 0 too with settings.next_item.padding_class, as BSARec's code has),
  computed in chunks of the catalogue (s3rec_jax.ops.catalogue_softmax), so memory
  does not grow with the catalogue. With model.compute_dtype=bfloat16 its
  scoring matmuls take bfloat16 operands (float32 accumulation and softmax).
- `sampled_softmax`: K negatives drawn on device from the items' training
  frequency Q and shared by the batch, with the log-Q correction of the
  sampling bias: scores s_j - log(K Q(j)) for the target and the negatives
  (a negative equal to the target is dropped), then softmax cross-entropy.
  Its [T, K] scoring matmul follows model.compute_dtype as `ce`'s do.

Each is a sum over target positions; fine-tuning divides it by the global
number of target positions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from s3rec_jax.core import settings
from s3rec_jax.objectives.core import ObjectiveInputs
from s3rec_jax.objectives.core import register
from s3rec_jax.ops import catalogue_softmax

FORMS = ("bce", "ce", "sampled_softmax")
DEFAULT_NUM_NEGATIVES = 1024


@settings.declare("next_item")
class NextItemSettings:
  # ce: catalogue rows scored at a time (memory does not grow with the catalogue).
  chunk_size: int = settings.positive(catalogue_softmax.DEFAULT_CHUNK_SIZE)
  # sampled_softmax: shared negatives per step, drawn by training frequency.
  num_negatives: int = settings.positive(DEFAULT_NUM_NEGATIVES)
  # ce: "scan" (XLA, chunks of chunk_size rows) or "fused_cpu" (a native CPU kernel whose
  # tiles of logits never leave the registers; float32, CPU devices only; the same losses up
  # to float rounding).
  ce_method: str = settings.one_of("scan", ("scan", "fused_cpu"))
  # ce: row 0 (padding) is one more class of the softmax, as the BSARec and TV-Rec code
  # score it (CrossEntropyLoss over the whole embedding table): it is never a target, and
  # its embedding, which the padding positions read, is trained through the output.
  padding_class: bool = False


def _register(form: str):
  return register("next_item", form, views=("sequence",), phases=("finetune",),
                  mean_over="targets")


def _scored(inputs: ObjectiveInputs):
  """(outputs [T, H], targets [T], is_target [T], flat index [T]) of the scored tokens: every
  token (packed rows are mostly targets; the others get weight 0), or with
  options.targets == "last_of_prefixes" each sequence's newest token only."""
  out, targets = inputs.outputs["sequence"], inputs.batch["targets"]
  if inputs.options.targets == "last_of_prefixes":
    index = inputs.batch["last_index"]
    out = inputs.last_token("sequence")
  else:
    index = jnp.arange(targets.size)
    out = out.reshape(-1, out.shape[-1])
  targets = targets.reshape(-1)[index]
  return out, targets, (targets > 0).astype(jnp.float32), index


@_register("bce")
def next_item_bce(inputs: ObjectiveInputs) -> jax.Array:
  out, targets, is_target, index = _scored(inputs)
  negatives = inputs.batch["negatives"].reshape(-1)[index]
  pos = jnp.sum(out * inputs.item_rows(targets), -1)
  neg = jnp.sum(out * inputs.item_rows(negatives), -1)
  per_position = jax.nn.softplus(-pos) + jax.nn.softplus(neg)  # -log s(pos) - log(1 - s(neg))
  return jnp.sum(per_position * is_target)


@_register("ce")
def next_item_ce(inputs: ObjectiveInputs) -> jax.Array:
  out, targets, is_target, _ = _scored(inputs)
  # Non-target tokens score any valid id; their weight is 0.
  per_position = catalogue_softmax.cross_entropy(
      out, inputs.item_table, jnp.where(targets > 0, targets, 1),
      num_items=inputs.options.num_items,
      chunk_size=inputs.options.settings_of("next_item").chunk_size,
      axis_name=inputs.options.item_table_axis, matmul_dtype=inputs.options.compute_dtype,
      method=inputs.options.settings_of("next_item").ce_method)
  if inputs.options.settings_of("next_item").padding_class:
    # logsumexp over {0} and the items = lse + softplus(s_0 - lse), lse = ce + s_target.
    lse = per_position + jnp.sum(out * inputs.item_rows(jnp.where(targets > 0, targets, 1)), -1)
    padding_row = inputs.shared_item_rows(jnp.zeros((1,), jnp.int32))[0]
    per_position = per_position + jax.nn.softplus(out @ padding_row - lse)
  return jnp.sum(per_position * is_target)


@_register("sampled_softmax")
def next_item_sampled_softmax(inputs: ObjectiveInputs) -> jax.Array:
  """Needs tables['item_log_q'] [item_size]: log of each item's sampling probability."""
  flat, flat_targets, is_target, _ = _scored(inputs)
  log_q = inputs.tables["item_log_q"]
  k = inputs.options.settings_of("next_item").num_negatives
  # Inverse-CDF draws, shared by the batch (jax.random.categorical's Gumbel
  # trick would draw K x catalogue random numbers every step).
  cdf = jnp.cumsum(jnp.exp(log_q))
  u = jax.random.uniform(inputs.key, (k,)) * cdf[-1]
  negatives = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 1, log_q.shape[0] - 2)
  correction = jnp.log(float(k)) + log_q
  # Non-target positions score item 1 (Q(0) = 0 would make them inf - inf).
  flat_targets = jnp.where(flat_targets > 0, flat_targets, 1)
  pos = jnp.sum(flat * inputs.item_rows(flat_targets), -1) - correction[flat_targets]
  neg = (catalogue_softmax.matmul(flat, inputs.shared_item_rows(negatives).T,
                                  inputs.options.compute_dtype)
         - correction[negatives][None, :])                                            # [T, K]
  neg = jnp.where(negatives[None, :] == flat_targets[:, None], -jnp.inf, neg)
  per_position = jax.nn.logsumexp(jnp.concatenate([pos[:, None], neg], axis=1), axis=1) - pos
  return jnp.sum(jnp.where(is_target > 0, per_position, 0.0))


def item_log_q(train_targets, item_size: int, smoothing: float = 1.0):
  """log Q over the item rows from the training targets' frequencies (numpy, host side).

  Padding (row 0) and the mask row are never drawn; every real item keeps a
  pseudo-count of `smoothing`, so none has probability 0.
  """
  import numpy as np  # pylint: disable=g-import-not-at-top
  counts = np.zeros(item_size, np.float64)
  for start in range(0, len(train_targets), 1 << 16):   # rows a block at a time
    block = np.asarray(train_targets[start:start + (1 << 16)]).reshape(-1)
    counts += np.bincount(block, minlength=item_size)[:item_size]
  counts[0] = 0.0
  counts[1:item_size - 1] += smoothing
  counts[item_size - 1] = 0.0
  with np.errstate(divide="ignore"):
    return np.log(counts / counts.sum()).astype(np.float32)
