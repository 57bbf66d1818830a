"""The built-in synthetic dataset: S3-Rec against plain SASRec in a few minutes on 2 CPU cores.

The config itself is s3rec_jax/configs/synthetic.py (installed with the package: `s3rec-train
--config=synthetic` reaches it from anywhere); this file keeps `--config=configs/synthetic.py`
working in a checkout.
"""

from s3rec_jax.configs.synthetic import get_config  # noqa: F401
