"""Pre-train, fine-tune and test S3-Rec as the config asks.

  s3rec-train --config=lastfm --workdir=runs/lastfm \\
      --config.pretrain.epochs=0 --config.eval.protocol=full

Every config field can be overridden as --config.FIELD=VALUE; s3rec_jax/configs/default.py
lists them all with their meaning (and docs/config.md).
"""

from __future__ import annotations

import sys
from typing import Sequence

from s3rec_jax.tools import cli


def _train(config, workdir: str) -> None:
  from s3rec_jax.training import run as run_lib  # pylint: disable=g-import-not-at-top
  run_lib.run(config, workdir)


def main(argv: Sequence[str] | None = None) -> int:
  """The `s3rec-train` command; returns its exit status."""
  return cli.main(_train, argv, doc=__doc__)


if __name__ == "__main__":
  sys.exit(main())
