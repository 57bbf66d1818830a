"""Re-evaluate the best fine-tuned checkpoint of a workdir under either protocol.

  s3rec-evaluate --config=lastfm --workdir=runs/lastfm --config.eval.protocol=full

Every config field can be overridden as --config.FIELD=VALUE; s3rec_jax/configs/default.py
lists them all with their meaning (and docs/config.md).
"""

from __future__ import annotations

import sys
from typing import Sequence

from s3rec_jax.tools import cli


def _evaluate(config, workdir: str) -> None:
  from s3rec_jax.training import run as run_lib  # pylint: disable=g-import-not-at-top
  from s3rec_jax.training import setup  # pylint: disable=g-import-not-at-top
  for split, metrics in run_lib.evaluate_best(config, workdir).items():
    if setup.is_main_process():
      print(run_lib.format_table(metrics, f"{split} metrics ({config.eval.protocol})"))


def main(argv: Sequence[str] | None = None) -> int:
  """The `s3rec-evaluate` command; returns its exit status."""
  return cli.main(_evaluate, argv, doc=__doc__)


if __name__ == "__main__":
  sys.exit(main())
