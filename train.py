"""Pre-train, fine-tune and test S3-Rec as the config asks.

  python train.py --config=configs/lastfm.py --workdir=runs/lastfm \
      --config.pretrain.epochs=0 --config.eval.protocol=full
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Folder for checkpoints, logs and results.json.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # Orbax logs every file operation at INFO; keep the console to our own lines.
  logging.set_verbosity(logging.WARNING)
  from s3rec_jax import train_lib  # after flag parsing: jax initialises lazily
  train_lib.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
