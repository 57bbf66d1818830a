"""The built-in synthetic dataset: the whole pipeline in a few minutes on 2 CPU cores."""

from configs import default


def get_config():
  c = default.get_config()
  c.dataset = "synthetic"
  c.pretrain.epochs = 3
  c.pretrain.save_every_epochs = 1
  c.finetune.epochs = 30
  c.finetune.patience = 5
  c.eval.batch_size = 256
  return c
