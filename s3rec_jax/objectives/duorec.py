"""DuoRec (Qiu et al., WSDM 2022): contrastive regularisation with dropout and same-target views.

Two encodings of the batch with their own dropout masks (s3rec_jax.objectives.views
`dropout:1`, `dropout:2`): the unsupervised view of a sequence is its first
encoding; its positive is the second encoding of another sequence of the
global batch whose next item is the same (chosen at random among them), or
of itself when no other has that target. In-batch InfoNCE over both views
(objectives.contrastive), with the other sequences of the same target left
out of the negatives: they are false negatives. settings.duorec.temperature
and .similarity. In pre-training no batch has targets, so every positive is
the sequence's own second encoding (the unsupervised half of DuoRec).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from s3rec_jax.core import hashing
from s3rec_jax.core import settings
from s3rec_jax.objectives import contrastive
from s3rec_jax.objectives.core import ObjectiveInputs
from s3rec_jax.objectives.core import register
from s3rec_jax.objectives.core import sequence_weights

VIEWS = ("dropout:1", "dropout:2")


def _gather(x, axis_name):
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, tiled=True)


def same_target_partner(identity: jax.Array, targets: jax.Array, weights: jax.Array,
                        seed: jax.Array, axis_name: str | None) -> jax.Array:
  """[B] global index of a random other sequence with the same target (itself if none).

  The choice hashes the two sequences' identities (their place in the host
  batch), so it does not depend on the layout or the device count.
  """
  all_identity, all_targets, all_weights = (_gather(x, axis_name)
                                            for x in (identity, targets, weights))
  local = identity.shape[0]
  own = jnp.arange(local)
  if axis_name is not None:
    own = own + jax.lax.axis_index(axis_name) * local
  columns = jnp.arange(all_targets.shape[0])
  candidate = ((all_targets[None, :] == targets[:, None]) & (all_weights[None, :] > 0)
               & (columns[None, :] != own[:, None]))
  score = hashing.mix32(hashing.mix32(identity[:, None] ^ seed[0])
                        + all_identity[None, :] * jnp.uint32(0x9E3779B9) + seed[1])
  # Halved, the uint32 scores fit int32 and keep their order; -1 marks non-candidates.
  ranked = jnp.where(candidate, (score >> 1).astype(jnp.int32), -1)
  pick = jnp.argmax(ranked, axis=1)
  return jnp.where(jnp.any(candidate, axis=1), pick, own)



@settings.declare("duorec")
class DuoRecSettings:
  # InfoNCE temperature, and the similarity of two views' representations.
  temperature: float = settings.positive(1.0)
  similarity: str = settings.one_of("dot", ("dot", "cosine"))


@register("duorec", "infonce", last_token_views=VIEWS, whole_batch=True,
          phases=("pretrain", "finetune"), mean_over="sequences")
def duorec(inputs: ObjectiveInputs) -> jax.Array:
  options, batch = inputs.options, inputs.batch
  first, second = inputs.last_token(VIEWS[0]), inputs.last_token(VIEWS[1])
  weights = sequence_weights(batch)
  identity = batch["token_ids"].reshape(-1)[batch["last_index"]].astype(jnp.uint32)
  if "targets" in batch:     # the next item after each sequence's newest input
    targets = batch["targets"].reshape(-1)[batch["last_index"]]
    groups = targets
  else:                      # pre-training: every sequence its own group
    targets = identity.astype(jnp.int32)
    groups = None
  partner = same_target_partner(identity, targets, weights,
                                jax.random.bits(inputs.key, (2,), jnp.uint32), options.axis_name)
  positives = _gather(second, options.axis_name)[partner]
  return contrastive.info_nce(
      first, positives, weights, groups=groups,
      temperature=options.settings_of("duorec").temperature,
      similarity=options.settings_of("duorec").similarity,
      axis_name=options.axis_name)
