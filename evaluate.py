"""Re-evaluate the best fine-tuned checkpoint of a workdir under either protocol.

  python evaluate.py --config=configs/lastfm.py --workdir=runs/lastfm --config.eval.protocol=full

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
  config = cli.CONFIG.value
  for split, metrics in train_lib.evaluate_best(config, cli.WORKDIR.value).items():
    if train_lib.is_main_process():
      print(train_lib.format_table(metrics, f"{split} metrics ({config.eval.protocol})"))


if __name__ == "__main__":
  cli.run(main)
