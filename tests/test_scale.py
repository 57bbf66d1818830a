"""benchmarks/scale.py: the generated log, and its prepare and load stages at a tiny size."""

import csv
import importlib.util
import pathlib
import sys

import numpy as np

_BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
_SPEC = importlib.util.spec_from_file_location("scale", _BENCHMARKS / "scale.py")
scale = importlib.util.module_from_spec(_SPEC)
sys.modules["scale"] = scale
_SPEC.loader.exec_module(scale)


def test_user_lengths_sum_to_the_interactions_with_a_long_user():
  lengths = scale.user_lengths(300_000, np.random.default_rng(0))
  assert lengths.sum() == 300_000 and lengths.min() >= 5 and lengths.max() >= 10_000


def test_the_generated_log_prepares_and_loads_as_memory_mapped_arrays(tmp_path, capsys):
  assert scale.main(["--workdir", str(tmp_path), "--interactions", "20000", "--items", "500",
                     "--stages", "generate,prepare,load"]) == 0
  out = capsys.readouterr().out
  with open(tmp_path / "interactions.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 20_000 and rows[0]["user"].startswith("u") and rows[0]["item"][0] == "i"
  users = {}
  for row in rows:   # each user's times increase
    assert int(row["time"]) > users.get(row["user"], 0)
    users[row["user"]] = int(row["time"])
  assert (tmp_path / "data" / "Scale.txt").exists()
  assert (tmp_path / "data" / "Scale.arrays" / "items.npy").exists()
  for stage in ("| generate |", "| prepare |", "| load (first: converts) |", "| load (maps) |"):
    assert stage in out
  assert "command: python benchmarks/scale.py --workdir" in out
