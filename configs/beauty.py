"""Beauty with the reference's hyper-parameters (150 pre-training epochs, as the released checkpoint).

The config itself is s3rec_jax/configs/beauty.py (installed with the package: `s3rec-train
--config=beauty` reaches it from anywhere); this file keeps `--config=configs/beauty.py`
working in a checkout.
"""

from s3rec_jax.configs.beauty import get_config  # noqa: F401
