"""LastFM with the reference's hyper-parameters (150 pre-training epochs, as the released checkpoint).

The config itself is s3rec_jax/configs/lastfm.py (installed with the package: `s3rec-train
--config=lastfm` reaches it from anywhere); this file keeps `--config=configs/lastfm.py`
working in a checkout.
"""

from s3rec_jax.configs.lastfm import get_config  # noqa: F401
