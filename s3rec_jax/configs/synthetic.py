"""The built-in synthetic dataset: S3-Rec against plain SASRec in a few minutes on 2 CPU cores.

The long_tail kind has what S3-Rec is for: short histories, a long tail of
rare items, and successors that follow the item categories (attributes)
rather than the item ids. The run pre-trains, fine-tunes and tests S3-Rec,
then trains plain SASRec on the same data (compare_to_sasrec) and prints both.
"""

from s3rec_jax.configs import default


def get_config():
  c = default.get_config()
  c.dataset = "synthetic"
  c.synthetic.kind = "long_tail"
  c.synthetic.num_users = 2000
  c.synthetic.num_items = 1500
  c.synthetic.num_attributes = 60
  c.synthetic.num_categories = 25
  c.compare_to_sasrec = True
  # 2,000 short sequences make few steps per epoch: smaller batches give the
  # item-attribute objectives the steps they need.
  c.pretrain.epochs = 30
  c.pretrain.batch_size = 64
  c.pretrain.save_every_epochs = 10
  c.finetune.epochs = 150
  c.finetune.patience = 10
  c.eval.batch_size = 256
  return c
