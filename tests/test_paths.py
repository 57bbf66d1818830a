"""core/paths: an object-store workdir (gs://b/run) stays a URL through the run's path handling.

The store is faked: etils.epath's backend is mocked to map gs://b/ onto a local folder.
"""

import json
import os

import ml_collections
from etils.epath import testing as epath_testing

from s3rec_jax.core import files
from s3rec_jax.core import paths
from s3rec_jax.data import dataset as data_lib
from s3rec_jax.model import checkpointing
from s3rec_jax.training import metric_writers
from s3rec_jax.training import run as run_lib


def _fake_store(root):
  def local(path):
    path = os.fspath(path)
    assert path.startswith("gs://b/"), f"not a store path: {path}"   # a URL turned local fails
    return os.path.join(root, path[len("gs://b/"):])

  def makedirs(_, path, *args, **kwargs):
    os.makedirs(local(path), exist_ok=True)

  return epath_testing.mock_epath(
      open=lambda _, path, *args, **kwargs: open(local(path), *args, **kwargs),
      exists=lambda _, path: os.path.exists(local(path)),
      isdir=lambda _, path: os.path.isdir(local(path)),
      makedirs=makedirs, mkdir=makedirs)


def test_a_bucket_workdir_stays_a_url():
  assert paths.absolute("gs://b/run") == "gs://b/run"
  assert paths.join("gs://b/run/", "results.json") == "gs://b/run/results.json"
  assert paths.absolute("~/x") == os.path.join(os.path.expanduser("~"), "x")
  assert not paths.is_url("/tmp/run") and paths.is_url("s3://b/run")
  assert checkpointing._abs("gs://b/run/pretrain") == "gs://b/run/pretrain"  # pylint: disable=protected-access


def test_run_files_and_logs_reach_the_store(tmp_path):
  config = ml_collections.ConfigDict({"dataset": "synthetic", "data_dir": "data", "x": 1})
  ds = data_lib.synthetic_dataset(num_users=20, num_items=20, num_attributes=3, num_groups=5,
                                  num_negatives=None)
  with _fake_store(str(tmp_path)):
    paths.makedirs("gs://b/run")
    run_lib.write_run_record(config, ds, "gs://b/run")
    files.write_json_atomic("gs://b/run/results.json", {"NDCG@20": 0.5})
    writer = metric_writers.create_default_writer("gs://b/run", enabled=True)
    writer.write_record({"phase": "finetune", "epoch": 1})
    writer.write_record({"phase": "finetune", "epoch": 2})
    assert paths.exists("gs://b/run/run.json")
  assert json.loads((tmp_path / "run" / "results.json").read_text()) == {"NDCG@20": 0.5}
  assert json.loads((tmp_path / "run" / "run.json").read_text())["item_size"] == ds.item_size
  lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
  assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
