"""Sports_and_Outdoors with the reference's hyper-parameters (100 pre-training epochs, as the released checkpoint)."""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = "Sports_and_Outdoors"
  c.data_dir = "../shared/data"
  c.pretrain.epochs = 100
  return c
