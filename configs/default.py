"""Base configuration: the reference's hyper-parameters. Dataset files override a few fields.

The config itself is s3rec_jax/configs/default.py (installed with the package: `s3rec-train
--config=default` reaches it from anywhere); this file keeps `--config=configs/default.py`
working in a checkout.
"""

from s3rec_jax.configs.default import get_config  # noqa: F401
