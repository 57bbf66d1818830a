"""Sports_and_Outdoors with the reference's hyper-parameters (100 pre-training epochs, as the released checkpoint).

The config itself is s3rec_jax/configs/sports_and_outdoors.py (installed with the package: `s3rec-train
--config=sports_and_outdoors` reaches it from anywhere); this file keeps `--config=configs/sports_and_outdoors.py`
working in a checkout.
"""

from s3rec_jax.configs.sports_and_outdoors import get_config  # noqa: F401
