"""Re-evaluate the best fine-tuned checkpoint of a workdir under either protocol.

The same as the `s3rec-evaluate` command; kept so that `python evaluate.py --config=configs/NAME.py`
works in a checkout. See s3rec_jax/tools/evaluate.py.
"""

import sys

from s3rec_jax.tools import evaluate

if __name__ == "__main__":
  sys.exit(evaluate.main())
