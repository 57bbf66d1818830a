"""benchmarks/xla_flags.py: its reading of speed.py's summary table and of its own arguments."""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "xla_flags.py"
_SPEC = importlib.util.spec_from_file_location("xla_flags", _PATH)
xla_flags = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(xla_flags)

_SPEED_OUTPUT = """\
[packed] peak RSS so far: 0.80 GiB

| dataset | devices | layout | pretrain seq/s | s/epoch | build share (serial) | \
build hidden by prefetch | compile s | GFLOP/step | GFLOP/s | % of matmul | finetune epoch s | \
eval full s | eval sampled s | peak RSS GiB |
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |
| Beauty | 2 x cpu | packed | 5154 | 29.2 | 6.1% | 100% | 4.7 | 2.052 | 96.1 | 26.4% | 1.85 | - | - | 0.97 |

reproduce: python benchmarks/speed.py
"""


def test_summary_row_reads_the_columns_by_their_header():
  row = xla_flags.summary_row(_SPEED_OUTPUT)
  # Columns speed.py left empty ("-") are left out, not read as numbers.
  assert row == {"pretrain seq/s": 5154.0, "finetune epoch s": 1.85}


def test_summary_row_without_a_table_says_so():
  with pytest.raises(RuntimeError, match="no summary table"):
    xla_flags.summary_row("dense matmul ...: 360.0 GFLOP/s\n")


def test_the_gauge_is_read_from_speed_py_output():
  assert xla_flags.gauge_of("dense matmul [2048,2048]x[2048,2048] f32 on 2 device(s): "
                            "362.5 GFLOP/s (best of 7)") == 362.5
  assert xla_flags.gauge_of("nothing here") is None


def test_arguments_split_at_the_double_dash():
  _, variants, speed_args = xla_flags.parse_args(
      ["--rounds", "2", "--variant", "one=--xla_cpu_multi_thread_eigen=false", "--",
       "--dataset", "Beauty"])
  assert variants == {"default": "", "one": "--xla_cpu_multi_thread_eigen=false"}
  assert speed_args == ["--dataset", "Beauty"]


@pytest.mark.parametrize("bad", [["--variant", "noequals"], ["--variant", "default=--x"],
                                 ["--rounds", "0"]])
def test_bad_arguments_exit_with_a_message(bad, capsys):
  with pytest.raises(SystemExit):
    xla_flags.parse_args(bad)
  assert "error" in capsys.readouterr().err
