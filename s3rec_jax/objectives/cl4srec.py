"""CL4SRec (Xie et al., ICDE 2022): contrast two random augmentations of each sequence.

Each sequence gets two views, each one of item crop, item mask and item
reorder chosen at random per sequence (s3rec_jax.objectives.views `augment`: ratios
settings.augment.crop / mask / reorder, CL4SRec's eta, gamma, beta), and
the representations at the views' newest tokens are contrasted with in-batch
InfoNCE (objectives.contrastive; settings.cl4srec.temperature and
.similarity). In fine-tuning it is CL4SRec's auxiliary term next to the
next-item loss (`--config.finetune.objectives.cl4srec=0.1`); in pre-training
an objective like any other.
"""

from __future__ import annotations

import jax

from s3rec_jax.core import settings
from s3rec_jax.objectives import contrastive
from s3rec_jax.objectives.core import ObjectiveInputs
from s3rec_jax.objectives.core import register
from s3rec_jax.objectives.core import sequence_weights

VIEWS = ("augment:1", "augment:2")



@settings.declare("cl4srec")
class CL4SRecSettings:
  # InfoNCE temperature, and the similarity of two views' representations.
  temperature: float = settings.positive(1.0)
  similarity: str = settings.one_of("dot", ("dot", "cosine"))


@register("cl4srec", "infonce", last_token_views=VIEWS, whole_batch=True,
          phases=("pretrain", "finetune"), mean_over="sequences")
def cl4srec(inputs: ObjectiveInputs) -> jax.Array:
  options = inputs.options
  return contrastive.info_nce(
      inputs.last_token(VIEWS[0]), inputs.last_token(VIEWS[1]), sequence_weights(inputs.batch),
      temperature=options.settings_of("cl4srec").temperature,
      similarity=options.settings_of("cl4srec").similarity,
      axis_name=options.axis_name)
