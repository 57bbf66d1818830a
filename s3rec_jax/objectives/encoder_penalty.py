"""The encoder's own regulariser as a loss term (tvrec: the orthogonality of its basis).

An encoder that declares a `penalty` in its spec (s3rec_jax/model/encoder_registry.py) gets
it added to the loss by this objective, summed over the layers and weighted by the
objective's weight (`--config.finetune.objectives.encoder_penalty=1e-3`, TV-Rec's
reg_weight). It depends on the parameters alone, so it counts once per step: each device
returns it times its own number of sequences, which fine-tuning's division by the global
number of sequences turns back into the penalty, on any number of devices or micro-batches.
In pre-training (sums over the batch) it is the penalty per sequence.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from s3rec_jax.model import encoder_registry
from s3rec_jax.objectives.core import ObjectiveInputs
from s3rec_jax.objectives.core import ObjectiveOptions
from s3rec_jax.objectives.core import register
from s3rec_jax.objectives.core import sequence_weights


def penalty(params, options: ObjectiveOptions) -> jax.Array:
  """options.encoder's penalty summed over its layers (0.0 for an encoder without one)."""
  spec = encoder_registry.get(options.encoder)
  if spec.penalty is None:
    return jnp.float32(0.0)
  bound = options.settings_of(spec.settings) if spec.settings else None
  layers = params["encoder"]
  return sum(spec.penalty(layers[name], bound) for name in sorted(layers))


@register("encoder_penalty", "sum", phases=("pretrain", "finetune"), mean_over="sequences")
def encoder_penalty(inputs: ObjectiveInputs) -> jax.Array:
  count = jnp.sum(sequence_weights(inputs.batch).astype(jnp.float32))
  return penalty(inputs.params, inputs.options) * count
