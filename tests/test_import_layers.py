"""tools/import_layers: imports run downwards only, and serving never imports training."""

import shutil

from s3rec_jax.tools import import_layers


def test_the_package_has_no_upward_import():
  assert import_layers.violations(import_layers.os.path.dirname(
      import_layers.os.path.dirname(import_layers.__file__))) == []


def _copy(tmp_path):
  root = tmp_path / "s3rec_jax"
  source = import_layers.os.path.dirname(import_layers.os.path.dirname(import_layers.__file__))
  shutil.copytree(source, root, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
  return root


def test_a_planted_upward_import_and_serving_importing_training_are_found(tmp_path):
  root = _copy(tmp_path)
  with open(root / "data" / "dataset.py", "a") as f:
    f.write("\nfrom s3rec_jax.evaluation import metrics  # planted\n")
  with open(root / "serving" / "recommend.py", "a") as f:
    f.write("\n\ndef _planted():\n  from s3rec_jax.training import run  # planted\n")
  found = import_layers.violations(str(root))
  assert len(found) == 2, found
  dataset, recommend = sorted(found)
  assert "data/dataset.py" in dataset and "imports s3rec_jax.evaluation.metrics" in dataset
  assert "serving/recommend.py" in recommend and "serving never imports training" in recommend
  assert import_layers.main([str(root)]) == 1


def test_a_subpackage_without_a_layer_is_named(tmp_path):
  root = _copy(tmp_path)
  (root / "extras").mkdir()
  (root / "extras" / "__init__.py").write_text("")
  found = import_layers.violations(str(root))
  assert len(found) == 1 and "'extras' has no layer" in found[0]
