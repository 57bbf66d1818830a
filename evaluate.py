"""Re-evaluate the best fine-tuned checkpoint of a workdir under either protocol.

  python evaluate.py --config=configs/lastfm.py --workdir=runs/lastfm --config.eval.protocol=full
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The workdir of a finished train.py run.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  del argv
  # Orbax logs every file operation at INFO; keep the console to our own lines.
  logging.set_verbosity(logging.WARNING)
  from s3rec_jax import train_lib
  results = train_lib.evaluate_best(_CONFIG.value, _WORKDIR.value)
  for split, metrics in results.items():
    print(train_lib.format_table(metrics, f"{split} metrics ({_CONFIG.value.eval.protocol})"))


if __name__ == "__main__":
  app.run(main)
