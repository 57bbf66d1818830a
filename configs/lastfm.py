"""LastFM with the reference's hyper-parameters (150 pre-training epochs, as the released checkpoint)."""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = "LastFM"
  c.data_dir = "../shared/data"
  c.pretrain.epochs = 150
  return c
