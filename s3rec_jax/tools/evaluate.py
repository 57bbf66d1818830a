"""Re-evaluate the best fine-tuned checkpoint of a workdir under either protocol.

  s3rec-evaluate --config=lastfm --workdir=runs/lastfm --config.eval.protocol=full

Every config field can be overridden as --config.FIELD=VALUE; s3rec_jax/configs/default.py
lists them all with their meaning (and docs/config.md).
"""

from s3rec_jax.tools import cli


def _main(argv):
  del argv
  cli.start()
  from s3rec_jax.training import run as run_lib  # pylint: disable=g-import-not-at-top
  from s3rec_jax.training import setup  # pylint: disable=g-import-not-at-top
  config = cli.CONFIG.value
  for split, metrics in run_lib.evaluate_best(config, cli.WORKDIR.value).items():
    if setup.is_main_process():
      print(run_lib.format_table(metrics, f"{split} metrics ({config.eval.protocol})"))


def main() -> None:
  """The `s3rec-evaluate` command."""
  cli.run(_main)


if __name__ == "__main__":
  main()
