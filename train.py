"""Pre-train, fine-tune and test S3-Rec as the config asks.

The same as the `s3rec-train` command; kept so that `python train.py --config=configs/NAME.py`
works in a checkout. See s3rec_jax/tools/train.py.
"""

import sys

from s3rec_jax.tools import train

if __name__ == "__main__":
  sys.exit(train.main())
