"""Views built on device: pure functions of the batch and a PRNG key, in a registry.

A view is one encoder input laid out like the batch's rows: item ids,
segment ids and positions [R, L], and each sequence's newest token
`last_index` [B] (see input_pipeline.Packer). Objectives name the views they
read (`objectives.register(..., views=...)`). A name is either an array the
input pipeline built (e.g. S3-Rec's `masked_items`, or `sequence`: the
phase's own item sequence) or `BUILDER[:TAG]`, a view built here on device by
the registered builder; views of one builder with different tags get
independent randomness (CL4SRec's two augmentations are `augment:1` and
`augment:2`).

Builders only move, drop or replace tokens inside each sequence's own span of
its row, so any view keeps the packed layout valid: a sequence never spills
into a neighbour's tokens. Their randomness is a hash of (seed, token or
sequence identity), like dropout's, so a view does not depend on how the
batch is packed or split over devices.

A new builder:

  @views.register("shuffle")
  def shuffle(batch, seed, options) -> views.View:
    ...
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, Mapping

import chex
import jax
import jax.numpy as jnp

from s3rec_jax.core import hashing
from s3rec_jax.core import settings


@chex.dataclass(frozen=True)
class View:
  ids: jax.Array           # [R, L] item ids (0 = padding)
  segment_ids: jax.Array   # [R, L] 0 = padding, k = the row's k-th sequence
  positions: jax.Array     # [R, L] absolute positions, the newest item of each at L - 1
  last_index: jax.Array    # [B] each sequence's newest token in the flat R * L tokens


# (batch, 2-word uint32 seed, objectives.ObjectiveOptions) -> View
ViewBuilder = Callable[[Mapping[str, jax.Array], jax.Array, object], View]
REGISTRY: dict[str, ViewBuilder] = {}


def register(name: str):
  """Decorator adding a view builder under `name` (used as `name` or `name:tag`)."""
  def wrap(fn: ViewBuilder) -> ViewBuilder:
    if name in REGISTRY:
      raise ValueError(f"view builder {name!r} is registered twice")
    if ":" in name:
      raise ValueError(f"view builder names cannot contain ':', got {name!r}")
    REGISTRY[name] = fn
    return fn
  return wrap


def builder_of(view: str) -> str:
  return view.split(":", 1)[0]


def is_built_on_device(view: str) -> bool:
  return builder_of(view) in REGISTRY


def base(batch: Mapping[str, jax.Array], name: str = "sequence") -> View:
  """A batch array as a view in the batch's own layout."""
  return View(ids=batch[name], segment_ids=batch["segment_ids"], positions=batch["positions"],
              last_index=batch["last_index"])


def build(view: str, batch: Mapping[str, jax.Array], key: jax.Array, options) -> View:
  """The view `view` of this batch: built on device, or the batch's own array."""
  if not is_built_on_device(view):
    return base(batch, view)
  # A stable per-name salt (Python's hash() of a str changes between processes).
  salted = jax.random.fold_in(key, zlib.crc32(view.encode()) & 0x7FFFFFFF)
  seed = jax.random.bits(salted, (2,), jnp.uint32)
  out = REGISTRY[builder_of(view)](batch, seed, options)
  chex.assert_equal_shape([out.ids, out.segment_ids, out.positions, batch["segment_ids"]])
  chex.assert_equal_shape([out.last_index, batch["last_index"]])
  return out


# --- the token layout of a packed batch ---------------------------------------


@chex.dataclass(frozen=True)
class Layout:
  """Where each token's sequence is: per token [R * L] and per sequence [B] arrays."""
  sequence: jax.Array   # [T] local sequence index of each token, -1 for padding
  step: jax.Array       # [T] index of the token within its sequence (0 = oldest)
  length: jax.Array     # [B] tokens per sequence (0 for padding sequences)
  first: jax.Array      # [B] flat index of each sequence's oldest token
  identity: jax.Array   # [B] uint32 identity of each sequence, the same in any layout


def layout_of(batch: Mapping[str, jax.Array]) -> Layout:
  segment_ids, positions = batch["segment_ids"], batch["positions"]
  last_index = batch["last_index"]
  rows, length_l = segment_ids.shape
  num_sequences = last_index.shape[0]
  flat_segment = segment_ids.reshape(-1)
  # Sequences with no tokens (padding, or a user whose training input is
  # empty) own no token; their last_index 0 points at another's.
  real = batch["lengths"] > 0
  # (row, segment) of each sequence's newest token -> its index; padding
  # sequences (no tokens) are dropped from the map.
  owner = jnp.full((rows, length_l + 1), -1, jnp.int32).at[
      jnp.where(real, last_index // length_l, rows), flat_segment[last_index]].set(
          jnp.arange(num_sequences, dtype=jnp.int32), mode="drop")
  token_row = jnp.arange(rows * length_l, dtype=jnp.int32) // length_l
  sequence = jnp.where(flat_segment > 0, owner[token_row, flat_segment], -1)
  # Padding tokens go to index B, out of bounds (a -1 would wrap to the last sequence).
  length = jnp.zeros(num_sequences, jnp.int32).at[
      jnp.where(sequence >= 0, sequence, num_sequences)].add(1, mode="drop")
  # Positions run L - length .. L - 1 within each sequence.
  step = positions.reshape(-1) - (length_l - length[jnp.maximum(sequence, 0)])
  identity = batch["token_ids"].reshape(-1)[last_index].astype(jnp.uint32)
  return Layout(sequence=sequence, step=jnp.where(sequence >= 0, step, 0), length=length,
                first=last_index - jnp.maximum(length - 1, 0), identity=identity)


def _uniform(bits: jax.Array) -> jax.Array:
  """uint32 -> float32 in [0, 1)."""
  return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def token_uniform(batch, seed: jax.Array, salt: int) -> jax.Array:
  """[R * L] uniforms keyed on each token's identity (its sequence and position)."""
  token_ids = batch["token_ids"].reshape(-1).astype(jnp.uint32)
  return _uniform(hashing.mix32(hashing.mix32(token_ids ^ seed[0]) + seed[1] + jnp.uint32(salt)))


def sequence_uniform(layout: Layout, seed: jax.Array, salt: int) -> jax.Array:
  """[B] uniforms keyed on each sequence's identity."""
  return _uniform(hashing.mix32(hashing.mix32(layout.identity ^ seed[1]) + seed[0]
                                + jnp.uint32(0x9E3779B9 * (salt + 1) & 0xFFFFFFFF)))


def rank_within_sequence(layout: Layout, keys: jax.Array, member: jax.Array,
                         length_l: int) -> jax.Array:
  """[T] rank of each member token's key among its sequence's member tokens (ties by index).

  Sequences never leave their row, so the comparison is row-local: [R, L, L].
  """
  seq = jnp.where(member, layout.sequence, -1).reshape(-1, length_l)
  k = keys.reshape(-1, length_l)
  col = jnp.arange(length_l)
  same = (seq[:, :, None] == seq[:, None, :]) & (seq[:, None, :] >= 0)
  before = (k[:, None, :] < k[:, :, None]) | ((k[:, None, :] == k[:, :, None])
                                              & (col[None, None, :] < col[None, :, None]))
  return jnp.sum(same & before, axis=-1).reshape(-1)


# --- the built-in builders ---------------------------------------------------


@register("dropout")
def dropout_view(batch, seed, options) -> View:
  """The sequence itself: encoded again, it gets its own dropout masks (DuoRec, SimCSE)."""
  del seed, options
  return base(batch)


def crop(batch, layout: Layout, seed, ratio: float) -> View:
  """A random contiguous span of floor(ratio * n) items (at least 1), re-based so its
  newest item sits at L - 1 (CL4SRec's item crop)."""
  n = layout.length
  keep_n = jnp.maximum(jnp.floor(ratio * n).astype(jnp.int32), 1)
  start = jnp.floor(sequence_uniform(layout, seed, 0) * (n - keep_n + 1)).astype(jnp.int32)
  after = n - (start + keep_n)                  # items dropped after the span
  seq = jnp.maximum(layout.sequence, 0)
  kept = ((layout.sequence >= 0) & (layout.step >= start[seq])
          & (layout.step < (start + keep_n)[seq]))
  shape = batch["segment_ids"].shape
  positions = batch["positions"].reshape(-1) + after[seq]
  return View(ids=jnp.where(kept, batch["sequence"].reshape(-1), 0).reshape(shape),
              segment_ids=jnp.where(kept, batch["segment_ids"].reshape(-1), 0).reshape(shape),
              positions=jnp.where(kept, positions, 0).reshape(shape),
              last_index=jnp.where(n > 0, batch["last_index"] - after, batch["last_index"]))


def mask(batch, layout: Layout, seed, ratio: float, mask_id: int) -> View:
  """floor(ratio * n) items of each sequence, chosen uniformly, become the mask token
  (CL4SRec's item mask)."""
  length_l = batch["segment_ids"].shape[1]
  member = layout.sequence >= 0
  count = jnp.floor(ratio * layout.length).astype(jnp.int32)
  rank = rank_within_sequence(layout, token_uniform(batch, seed, 1), member, length_l)
  masked = member & (rank < count[jnp.maximum(layout.sequence, 0)])
  ids = jnp.where(masked, mask_id, batch["sequence"].reshape(-1))
  return dataclasses.replace(base(batch), ids=ids.reshape(batch["segment_ids"].shape))


def reorder(batch, layout: Layout, seed, ratio: float) -> View:
  """A random contiguous span of floor(ratio * n) items is shuffled in place
  (CL4SRec's item reorder)."""
  length_l = batch["segment_ids"].shape[1]
  n = layout.length
  width = jnp.floor(ratio * n).astype(jnp.int32)
  start = jnp.floor(sequence_uniform(layout, seed, 2) * (n - width + 1)).astype(jnp.int32)
  seq = jnp.maximum(layout.sequence, 0)
  inside = ((layout.sequence >= 0) & (layout.step >= start[seq])
            & (layout.step < (start + width)[seq]))
  rank = rank_within_sequence(layout, token_uniform(batch, seed, 3), inside, length_l)
  flat = jnp.arange(layout.sequence.shape[0], dtype=jnp.int32)
  # The token of rank k moves to the window's k-th slot.
  destination = jnp.where(inside, layout.first[seq] + start[seq] + rank, flat)
  ids = jnp.zeros_like(batch["sequence"].reshape(-1)).at[destination].set(
      batch["sequence"].reshape(-1))
  return dataclasses.replace(base(batch), ids=ids.reshape(batch["segment_ids"].shape))


AUGMENTATIONS = ("crop", "mask", "reorder")


@settings.declare("augment")
class AugmentSettings:
  """CL4SRec's augmentations: the share of a sequence each one crops, masks or reorders."""
  crop: float = settings.probability(0.6)
  mask: float = settings.probability(0.3)
  reorder: float = settings.probability(0.6)


@register("augment")
def augment_view(batch, seed, options) -> View:
  """One of crop, mask and reorder per sequence, chosen uniformly (CL4SRec).

  Ratios: options.settings_of("augment").crop / .mask / .reorder.
  """
  layout = layout_of(batch)
  ratios = options.settings_of("augment")
  candidates = [crop(batch, layout, seed, ratios.crop),
                mask(batch, layout, seed, ratios.mask, options.mask_id),
                reorder(batch, layout, seed, ratios.reorder)]
  choice = jnp.minimum(jnp.floor(sequence_uniform(layout, seed, 4) * 3).astype(jnp.int32), 2)
  token_choice = choice[jnp.maximum(layout.sequence, 0)].reshape(batch["segment_ids"].shape)

  def pick(per_token: bool, field: str):
    which = token_choice if per_token else choice
    out = getattr(candidates[0], field)
    for i in (1, 2):
      out = jnp.where(which == i, getattr(candidates[i], field), out)
    return out

  return View(ids=pick(True, "ids"), segment_ids=pick(True, "segment_ids"),
              positions=pick(True, "positions"), last_index=pick(False, "last_index"))


@register("crop")
def crop_view(batch, seed, options) -> View:
  return crop(batch, layout_of(batch), seed, options.settings_of("augment").crop)


@register("mask")
def mask_view(batch, seed, options) -> View:
  return mask(batch, layout_of(batch), seed, options.settings_of("augment").mask,
              options.mask_id)


@register("reorder")
def reorder_view(batch, seed, options) -> View:
  return reorder(batch, layout_of(batch), seed, options.settings_of("augment").reorder)
