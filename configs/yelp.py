"""Yelp with the reference's hyper-parameters (100 pre-training epochs, as the released checkpoint).

The config itself is s3rec_jax/configs/yelp.py (installed with the package: `s3rec-train
--config=yelp` reaches it from anywhere); this file keeps `--config=configs/yelp.py`
working in a checkout.
"""

from s3rec_jax.configs.yelp import get_config  # noqa: F401
