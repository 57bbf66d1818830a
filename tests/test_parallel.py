"""Host device choice and mesh helpers."""

import jax
import numpy as np

from s3rec_jax.core import parallel


def test_auto_host_devices_is_one_per_core_dividing_every_batch():
  assert parallel.auto_host_devices((100, 256, 1024), cores=2) == 2
  assert parallel.auto_host_devices((100, 256, 1024), cores=8) == 4   # gcd 4
  assert parallel.auto_host_devices((99, 256), cores=4) == 1
  assert parallel.auto_host_devices((60, 120), cores=6) == 6
  assert parallel.auto_host_devices((60, 120), cores=1) == 1


def test_shard_batch_splits_rows_over_the_mesh():
  mesh = parallel.make_mesh()
  batch = {"x": np.arange(8 * 3).reshape(8, 3)}
  placed = parallel.shard_batch(batch, mesh)["x"]
  assert len(placed.addressable_shards) == len(jax.devices())
  np.testing.assert_array_equal(np.asarray(placed), batch["x"])
  rows = [s.data.shape[0] for s in placed.addressable_shards]
  assert rows == [8 // len(jax.devices())] * len(jax.devices())


def test_auto_micro_batches_keeps_cpu_pieces_small_and_accelerators_whole():
  rows = parallel.CPU_MICRO_BATCH_ROWS
  assert parallel.auto_micro_batches("cpu", 0.5) == 1
  assert parallel.auto_micro_batches("cpu", rows) == 1
  assert parallel.auto_micro_batches("cpu", rows + 0.1) == 2
  assert parallel.auto_micro_batches("cpu", 3.5 * rows) == 4
  assert parallel.auto_micro_batches("gpu", 50 * rows) == 1
  assert parallel.auto_micro_batches("tpu", 50 * rows) == 1
