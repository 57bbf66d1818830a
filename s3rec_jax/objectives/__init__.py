"""Objectives: pure loss functions in one registry, for pre-training and fine-tuning.

One file per method family:
- `core`: the registry, the inputs an objective receives, the joint loss;
- `s3rec`: AAP, MIP, MAP and SP (pre-training, `reference` and `infonce` forms);
- `next_item`: fine-tuning's next-item loss (`bce`, `ce`, `sampled_softmax`);
- `contrastive`: the in-batch InfoNCE shared by
- `cl4srec` (augmented views) and `duorec` (dropout and same-target views);
- `encoder_penalty`: the encoder's own regulariser (tvrec's basis orthogonality).

A new method is one module like `cl4srec.py`: its view builders (registered
in s3rec_jax.objectives.views), its loss registered here with the views it reads and the
phases it runs in, and a weight in the config (`pretrain.objectives.<name>`
or `finetune.objectives.<name>`). See the README's "Adding an objective".
"""

from s3rec_jax.objectives.core import FORMS
from s3rec_jax.objectives.core import MEAN_OVER
from s3rec_jax.objectives.core import Objective
from s3rec_jax.objectives.core import ObjectiveInputs
from s3rec_jax.objectives.core import ObjectiveOptions
from s3rec_jax.objectives.core import PHASES
from s3rec_jax.objectives.core import REGISTRY
from s3rec_jax.objectives.core import check_micro_batches
from s3rec_jax.objectives.core import forms_of
from s3rec_jax.objectives.core import get
from s3rec_jax.objectives.core import head_names
from s3rec_jax.objectives.core import joint_loss
from s3rec_jax.objectives.core import losses_of
from s3rec_jax.objectives.core import names
from s3rec_jax.objectives.core import register
from s3rec_jax.objectives.core import resolve
from s3rec_jax.objectives.core import sequence_weights
from s3rec_jax.objectives.core import settings_tuple
from s3rec_jax.objectives.core import views_of
from s3rec_jax.objectives.core import weighted_total
# The built-in families register themselves on import.
from s3rec_jax.objectives import s3rec  # noqa: F401  pylint: disable=g-bad-import-order
from s3rec_jax.objectives import next_item  # noqa: F401
from s3rec_jax.objectives import cl4srec  # noqa: F401
from s3rec_jax.objectives import duorec  # noqa: F401
from s3rec_jax.objectives import encoder_penalty  # noqa: F401
from s3rec_jax.objectives import views  # noqa: F401  (view builders and their settings)
