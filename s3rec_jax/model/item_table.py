"""The item embedding table: replicated on every device, or split by rows over the mesh.

Replicated (the default for small catalogues), every device holds the whole
[item_size, H] table and a lookup is a local gather. Sharded, device i holds
rows [i * S, (i + 1) * S) of a table padded to S * N rows (N devices; the
padding rows are never looked up and never candidates), and so does the
table's optimiser state: the memory a catalogue costs per device falls by N.

A sharded lookup inside `shard_map` gathers every device's ids, lets each
device fill in the rows it owns (zeros elsewhere) and reduce-scatters the
result, so each device gets its own ids' rows: exact, since x + 0 = x. Its
gradient follows by autodiff (the transpose of a reduce-scatter is an
all-gather and vice versa): the block's gradient on each device is already
the sum over every device's tokens, so the table's update needs no gradient
reduction across devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

LAYOUTS = ("auto", "replicated", "sharded")
# Where the table lives in the parameter tree, and its own optimiser state in a
# sharded layout's (train_steps.TrainState).
PARAM_GROUP, PARAM_NAME = "item_embeddings", "embedding"
OPT_STATE_KEY = "item_table"


@dataclasses.dataclass(frozen=True)
class Layout:
  """The chosen layout: rows split over `axis` (None: replicated), and why."""
  axis: str | None
  rows: int            # physical rows of the table (item_size, padded to a multiple of N)
  reason: str

  @property
  def sharded(self) -> bool:
    return self.axis is not None

  def describe(self) -> str:
    return f"item table: {'sharded' if self.sharded else 'replicated'} ({self.reason})"


def padded_rows(item_size: int, num_shards: int) -> int:
  return -(-item_size // num_shards) * num_shards


def choose(requested: str, *, item_size: int, hidden_size: int, num_devices: int, axis: str,
           shard_above_mib: float) -> Layout:
  """The layout `requested` (auto|replicated|sharded) resolves to, with its reason for the log.

  auto shards a table of at least `shard_above_mib` MiB (float32) over more
  than one device: below that, copying it to every device costs little and
  a lookup stays a local gather.
  """
  if requested not in LAYOUTS:
    raise ValueError(f"model.item_table={requested!r} is unknown; expected one of "
                     + ", ".join(LAYOUTS))
  mib = item_size * hidden_size * 4 / 2**20
  size = f"{item_size:,} rows x {hidden_size} float32 = {mib:,.1f} MiB"
  if requested == "auto":
    if num_devices == 1:
      return Layout(None, item_size, f"auto: {size}, one device")
    if mib < shard_above_mib:
      return Layout(None, item_size,
                    f"auto: {size} < model.item_table_shard_above_mib={shard_above_mib:g}")
    requested, why = "sharded", f"auto: {size} >= model.item_table_shard_above_mib={shard_above_mib:g}"
  else:
    why = f"model.item_table={requested}: {size}"
  if requested == "replicated" or num_devices == 1:
    return Layout(None, item_size, why + ("" if requested == "replicated" else ", one device"))
  rows = padded_rows(item_size, num_devices)
  return Layout(axis, rows, f"{why}, {rows // num_devices:,} rows per device over {num_devices}"
                f"{f', {rows - item_size} padding row(s)' if rows > item_size else ''}")


def block_offset(block: jax.Array, axis: str) -> jax.Array:
  """The id of this device's first row."""
  return lax.axis_index(axis) * block.shape[0]


def owned_rows(block: jax.Array, ids: jax.Array, axis: str):
  """(rows of `ids` this device owns, zeros elsewhere [..., H]; owned mask [...])."""
  local = ids - block_offset(block, axis)
  owned = (local >= 0) & (local < block.shape[0])
  rows = jnp.take(block, jnp.clip(local, 0, block.shape[0] - 1), axis=0, mode="clip")
  return jnp.where(owned[..., None], rows, jnp.zeros((), block.dtype)), owned


def lookup(table: jax.Array, ids: jax.Array, axis: str | None = None) -> jax.Array:
  """Rows of `ids` [...] -> [..., H]: a gather, or with `axis` a sharded lookup of this
  device's ids in the table split over `axis` (inside shard_map; see the module docstring).

  mode="clip": ids are in range (checked on load), and the default fill mode
  adds an out-of-range select that costs XLA:CPU about as much as the gather.
  """
  if axis is None:
    return jnp.take(table, ids, axis=0, mode="clip")
  flat = ids.reshape(-1)
  everyone = lax.all_gather(flat, axis, tiled=True)                     # [N * n]
  rows, _ = owned_rows(table, everyone, axis)
  mine = lax.psum_scatter(rows, axis, tiled=True)                       # [n, H]
  return mine.reshape(ids.shape + table.shape[1:])


def lookup_shared(table: jax.Array, ids: jax.Array, axis: str | None = None) -> jax.Array:
  """Rows of `ids` that are the same on every device (e.g. negatives shared by the batch):
  each device contributes the rows it owns and the sum is taken over the axis."""
  if axis is None:
    return jnp.take(table, ids, axis=0, mode="clip")
  rows, _ = owned_rows(table, ids, axis)
  return lax.psum(rows, axis)


def is_table_path(path: str) -> bool:
  """Whether a leaf path (checkpointing's '/'-joined names) is the item table or part of
  its own optimiser state."""
  return path.endswith(f"{PARAM_GROUP}/{PARAM_NAME}") or path.split("/")[0] == OPT_STATE_KEY
