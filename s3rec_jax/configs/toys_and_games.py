"""Toys_and_Games with the reference's hyper-parameters (150 pre-training epochs, as the released checkpoint)."""

from s3rec_jax.configs import default
from s3rec_jax.data import fetch


def get_config():
  c = default.get_config()
  c.dataset = "Toys_and_Games"
  c.data_dir = fetch.default_data_dir()   # $S3REC_DATA, else ~/.cache/s3rec_jax/data
  c.pretrain.epochs = 150
  return c
