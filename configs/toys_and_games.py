"""Toys_and_Games with the reference's hyper-parameters (150 pre-training epochs, as the released checkpoint).

The config itself is s3rec_jax/configs/toys_and_games.py (installed with the package: `s3rec-train
--config=toys_and_games` reaches it from anywhere); this file keeps `--config=configs/toys_and_games.py`
working in a checkout.
"""

from s3rec_jax.configs.toys_and_games import get_config  # noqa: F401
