"""data/workers: batches built by worker processes are the batches one process builds."""

import numpy as np
import pytest

from s3rec_jax.data import dataset as data_lib
from s3rec_jax.data import input_pipeline as ip
from s3rec_jax.data import workers


def _same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert set(x) == set(y)
    for name in x:
      np.testing.assert_array_equal(x[name], y[name], err_msg=name)


@pytest.mark.parametrize("kind", ["pretrain", "finetune", "prefixes"])
def test_two_workers_build_what_one_process_builds(kind):
  ds = data_lib.synthetic_dataset(num_users=60, num_items=40, num_attributes=5, seed=1,
                                  num_negatives=None)
  shards = ip.Shards(2, 1, 1)      # the second of two processes: its own pieces only
  if kind == "pretrain":
    builder = ip.PretrainBatches(ds, ip.PretrainSettings(32, 10, 0.2, ds.mask_id), 3, shards)
  elif kind == "finetune":
    builder = ip.FinetuneBatches(ds, data_lib.finetune_splits(ds, 10), 16, ds.max_item, 3,
                                 True, shards)
  else:
    builder = ip.PrefixBatches(ds, 64, 10, ds.max_item, 3, shards)
  here = list(builder.epoch(1, start_step=1))
  builder.workers = 2
  _same(here, list(builder.epoch(1, start_step=1)))
  assert len(here) == builder.steps_per_epoch - 1


def test_the_automatic_count_spares_cpu_devices_their_cores():
  assert workers.auto_workers("cpu", cpus=64) == 0
  assert workers.auto_workers("tpu", cpus=2) == 1
  assert workers.auto_workers("gpu", cpus=96) == 8
