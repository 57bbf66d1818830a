"""benchmarks/speed.py: its --without profile, on the synthetic set with a few steps."""

import importlib.util
import pathlib
import sys

_BENCHMARKS = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(_BENCHMARKS))  # speed.py imports its sibling gauges.py
_SPEC = importlib.util.spec_from_file_location("speed", _BENCHMARKS / "speed.py")
speed = importlib.util.module_from_spec(_SPEC)
sys.modules["speed"] = speed  # dataclasses look their module up there.
_SPEC.loader.exec_module(speed)

_TINY = ["--dataset", "synthetic", "--devices", "2", "--steps", "2", "--warmup", "1",
         "--layouts", "packed", "--loop_epochs", "0", "--skip_finetune", "--skip_eval"]


def test_without_an_objective_times_the_step_again_and_prints_its_share(capsys):
  assert speed.main(_TINY + ["--without", "sp"]) == 0
  out = capsys.readouterr().out
  line = next(l for l in out.splitlines() if "pre-training without sp:" in l)
  assert "x the rate with it" in line and "% of the step" in line
  # Dropping SP removes its three encoder passes: XLA counts fewer FLOPs per step.
  without, full = (float(x) for x in line.split("(")[-1].split(" GFLOP/step")[0].split(" vs "))
  assert 0 < without < full
  assert "--without sp" in out.split("reproduce:")[-1]


def test_without_an_unknown_or_disabled_objective_is_one_line_and_exit_2(capsys):
  assert speed.main(_TINY + ["--without", "nope"]) == 2
  err = capsys.readouterr()
  text = err.out + err.err
  assert "--without names nope" in text and "Traceback" not in text
