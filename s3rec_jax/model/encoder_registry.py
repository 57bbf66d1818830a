"""The encoder registry: which layer a model stacks (config.model.encoder), and what it needs.

An encoder is one file: a Flax layer with the call of `encoder.TransformerLayer`
((x, bias, token_ids, positions, deterministic, queries) -> the queried tokens' outputs), a
settings record (core/settings.py) if it has settings, and a `register` call. The
embeddings, the stack, the heads and every objective stay as they are; what an encoder
needs of them otherwise (no position embeddings, padding zeroed before each layer, a
regulariser of its own parameters) it declares in its spec.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

# Modules whose import registers the built-in encoders besides `sasrec` (encoder.py).
BUILT_IN = ("s3rec_jax.model.bsarec", "s3rec_jax.model.tvrec")


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """name: config.model.encoder; layer: the Flax layer class (takes the ModelConfig).

  mixes_positions: the layer mixes every position of a row into every other (a Fourier or
    convolutional filter over the whole row), so a later item would leak into an earlier
    position: it trains on prefixes (finetune.targets=last_of_prefixes) and needs one
    sequence per row, left-padded to max_seq_length (no packing), as its authors' code has.
  settings: the plug-in name of its settings record in config.settings (None: none).
  position_embeddings: whether the input adds position embeddings to the items (a layer
    that is itself position-aware, such as a time-variant filter, goes without).
  zero_padding: the stack sets the padding positions of a row to 0 before every layer
    (a filter would otherwise carry the padding embedding into the real positions).
  penalty: (one layer's parameters, the bound settings record) -> a scalar regulariser;
    the `encoder_penalty` objective adds its sum over the layers to the loss, weighted.
  trims_padding: a left-padded row's newest position does not depend on the leading
    padding, so a prefix row may run on its last columns alone (finetune.trim_padding):
    the same outputs for a fraction of the tokens.
  """
  name: str
  layer: Any
  mixes_positions: bool = False
  settings: str | None = None
  position_embeddings: bool = True
  zero_padding: bool = False
  penalty: Callable[[dict, Any], Any] | None = None
  trims_padding: bool = False


REGISTRY: dict[str, EncoderSpec] = {}


def register(spec: EncoderSpec) -> None:
  if spec.name in REGISTRY and REGISTRY[spec.name].layer is not spec.layer:
    raise ValueError(f"encoder {spec.name!r} is registered twice")
  REGISTRY[spec.name] = spec


def load_built_ins() -> None:
  """Imports the built-in encoders (registering them and their settings)."""
  importlib.import_module("s3rec_jax.model.encoder")
  for module in BUILT_IN:
    importlib.import_module(module)


def names() -> tuple[str, ...]:
  load_built_ins()
  return tuple(sorted(REGISTRY))


def get(name: str) -> EncoderSpec:
  load_built_ins()
  if name not in REGISTRY:
    raise ValueError(f"unknown encoder {name!r}; valid encoders: {', '.join(sorted(REGISTRY))}")
  return REGISTRY[name]


def packs(config) -> bool:
  """Whether batches pack several sequences per row: config.pack_sequences, unless the
  encoder mixes the positions of a row (then one left-padded sequence per row)."""
  return bool(config.pack_sequences) and not get(
      config.model.get("encoder", "sasrec")).mixes_positions
