"""Pre-train, fine-tune and test S3-Rec as the config asks.

  python train.py --config=configs/lastfm.py --workdir=runs/lastfm \\
      --config.pretrain.epochs=0 --config.eval.protocol=full

Every config field can be overridden as --config.FIELD=VALUE; configs/default.py
lists them all with their meaning (and the README's "Config fields" table).
"""

from absl import flags

from s3rec_jax import cli

flags.adopt_module_key_flags(cli)


def main(argv):
  del argv
  cli.start()
  from s3rec_jax import train_lib  # pylint: disable=g-import-not-at-top
  train_lib.run(cli.CONFIG.value, cli.WORKDIR.value)


if __name__ == "__main__":
  cli.run(main)
