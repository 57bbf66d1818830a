"""Pre-train, fine-tune and test S3-Rec as the config asks.

  s3rec-train --config=lastfm --workdir=runs/lastfm \\
      --config.pretrain.epochs=0 --config.eval.protocol=full

Every config field can be overridden as --config.FIELD=VALUE; s3rec_jax/configs/default.py
lists them all with their meaning (and docs/config.md).
"""

from s3rec_jax.tools import cli


def _main(argv):
  del argv
  cli.start()
  from s3rec_jax.training import run as run_lib  # pylint: disable=g-import-not-at-top
  run_lib.run(cli.CONFIG.value, cli.WORKDIR.value)


def main() -> None:
  """The `s3rec-train` command."""
  cli.run(_main)


if __name__ == "__main__":
  main()
