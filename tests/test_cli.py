"""train.py, evaluate.py and convert as a user meets them: help, one-line errors, quiet output."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

import cli_runs

REPO = pathlib.Path(cli_runs.REPO)


def _run(args, cwd=REPO, timeout=120):
  return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=cli_runs.env(2),
                        capture_output=True, text=True, timeout=timeout)


def _assert_one_line_error(result, *expected):
  assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
  assert "Traceback" not in result.stderr, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if "error:" in line]
  assert len(errors) == 1, result.stderr
  for text in expected:
    assert text in errors[0], errors[0]
  return errors[0]


def _train(workdir, *overrides, config="configs/synthetic.py"):
  return _run(["train.py", f"--config={config}", f"--workdir={workdir}", *overrides])


def test_help_lists_own_flags_and_points_to_config_fields():
  result = _run(["train.py", "--help"])
  assert result.returncode == 0
  for flag in ("--config", "--workdir", "--host_devices", "--coordinator_address"):
    assert flag in result.stdout
  assert "--config.FIELD=VALUE" in result.stdout and "configs/default.py" in result.stdout
  # The command's own flags only, in sections; no library's (absl's --flagfile, logging).
  assert "run:\n  --config" in result.stdout and "--flagfile" not in result.stdout


def test_in_process_runs_one_after_another_start_from_their_defaults(tmp_path, capsys):
  # The commands keep their own flag set: one process (a notebook, a test) can call them in
  # turn, and a config override of one call does not linger into the next.
  from s3rec_jax.tools import evaluate  # pylint: disable=import-outside-toplevel
  from s3rec_jax.tools import train  # pylint: disable=import-outside-toplevel
  assert train.main(["--help"]) == 0
  assert "--workdir" in capsys.readouterr().out
  assert train.main(["--config=synthetic", f"--workdir={tmp_path}",
                     "--config.pretrain.epochz=1"]) == 2
  assert "config.pretrain has no field 'epochz'" in capsys.readouterr().err
  assert evaluate.main(["--config=synthetic", f"--workdir={tmp_path}",
                        "--config.eval.protocol=ful"]) == 2
  err = capsys.readouterr().err
  assert "config.eval.protocol='ful'" in err and "epochz" not in err
  assert evaluate.main([f"--workdir={tmp_path}"]) == 2
  assert "--config is required" in capsys.readouterr().err


@pytest.mark.parametrize("override, expected", [
    ("--config.pretrain.epochz=3",
     ('--config.pretrain.epochz', "config.pretrain has no field 'epochz'", 'did you mean "epochs"')),
    ("--config.nosuch=1", ("--config.nosuch", "config has no field 'nosuch'")),
    ("--config.pretrain.epochs=abc", ("--config.pretrain.epochs=abc", "invalid literal for int()")),
    ("--config.model.num_heads=3", ("config.model.hidden_size=64", "config.model.num_heads=3")),
    ("--config.eval.protocol=ful", ("config.eval.protocol='ful'", "sampled, full")),
])
def test_config_mistakes_are_one_line(tmp_path, override, expected):
  workdir = tmp_path / "run"
  _assert_one_line_error(_train(workdir, override), *expected)
  assert not workdir.exists()


def test_missing_and_broken_config_files(tmp_path):
  _assert_one_line_error(_train(tmp_path / "a", config="configs/nope.py"),
                         "--config=configs/nope.py: no such config file")
  broken = tmp_path / "broken.py"
  broken.write_text("def get_config(:\n")
  _assert_one_line_error(_train(tmp_path / "b", config=broken), f"--config={broken}",
                         "SyntaxError at line 1")
  assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _dataset(folder, lines, attributes=None):
  folder.mkdir(parents=True, exist_ok=True)
  (folder / "T.txt").write_text("".join(line + "\n" for line in lines))
  (folder / "T_item2attributes.json").write_text(json.dumps(attributes or {"1": [1]}))
  return folder


@pytest.mark.parametrize("lines, expected", [
    (["1 1 2 3", "2 2 abc 4"], ("T.txt:2:", "token 'abc' is not an integer")),
    (["1 1 2 3", "2 2 3"], ("T.txt:2:", "has 2 items; expected at least 3")),
    (["1 1 2 3", "2 2 3 2147483000"], ("T.txt:2:", "item id 2147483000 but only 4 distinct",
                                       "s3rec-prepare")),
])
def test_bad_data_is_one_line_and_writes_nothing(tmp_path, lines, expected):
  data_dir = _dataset(tmp_path / "data", lines)
  before = sorted(os.listdir(data_dir))
  workdir = tmp_path / "run"
  _assert_one_line_error(_train(workdir, f"--config.data_dir={data_dir}", "--config.dataset=T"),
                         *expected)
  assert not workdir.exists()
  assert sorted(os.listdir(data_dir)) == before


def test_evaluate_without_a_finished_run(tmp_path):
  result = _run(["evaluate.py", "--config=configs/synthetic.py", f"--workdir={tmp_path}"])
  _assert_one_line_error(result, "finetune_best", "does not exist")


def test_convert_bad_input_is_one_line(tmp_path):
  bad = tmp_path / "bad.pt"
  bad.write_bytes(b"not a checkpoint")
  result = _run(["-m", "s3rec_jax.model.convert", "--input", bad, "--output", tmp_path / "out",
                 "--item_size", "10", "--attribute_size", "5"])
  _assert_one_line_error(result, str(bad))
  assert not (tmp_path / "out").exists()
  data_dir = _dataset(tmp_path / "data", ["1 1 2 x"])
  result = _run(["-m", "s3rec_jax.model.convert", "--input", bad, "--output", tmp_path / "out",
                 "--dataset", "T", "--data_dir", data_dir])
  _assert_one_line_error(result, "T.txt:1:")


def test_successful_run_prints_only_the_projects_lines(tiny_reference_run):
  # The run restored checkpoints (pre-training -> fine-tuning, best state -> test).
  stderr = pathlib.Path(tiny_reference_run + ".stderr").read_text()
  stdout = pathlib.Path(tiny_reference_run + ".stdout").read_text()
  assert "fine-tuning: loaded embeddings and encoder" in stdout
  # absl's log lines start with a level letter and a date (e.g. "W1201 11:45:39.57 ...").
  library_lines = [line for line in (stdout + stderr).splitlines()
                   if re.match(r"[IWEF]\d{4} \d\d:\d\d:\d\d", line.strip("\r"))]
  assert not library_lines, library_lines[:5]
  assert "could not be restored" not in stderr


def test_a_log_file_gets_whole_lines_without_progress_bars(tiny_reference_run):
  # The run's output went to files, not a terminal: one line per epoch, no bar redraws.
  stderr = pathlib.Path(tiny_reference_run + ".stderr").read_text()
  stdout = pathlib.Path(tiny_reference_run + ".stdout").read_text()
  assert "\r" not in stdout + stderr
  assert "it/s" not in stderr
  assert re.search(r"^finetune epoch 1: loss=", stdout, re.M)


def test_a_packaged_config_is_found_by_name_even_beside_a_folder_of_that_name(tmp_path,
                                                                           monkeypatch):
  from s3rec_jax import configs  # pylint: disable=import-outside-toplevel
  from s3rec_jax.tools import cli  # pylint: disable=import-outside-toplevel
  monkeypatch.chdir(tmp_path)
  (tmp_path / "lastfm").mkdir()                    # e.g. a workdir called lastfm
  (tmp_path / "mine").write_text("def get_config(): ...\n")
  argv = ["s3rec-train", "--config=lastfm", "--config=mine", "--config=nope", "--workdir=w"]
  resolved = cli.resolve_config_names(argv)
  assert resolved[1] == "--config=" + configs.path_of("lastfm")
  assert resolved[2:] == ["--config=mine", "--config=nope", "--workdir=w"]
  assert set(configs.names()) >= {"default", "synthetic", "lastfm", "beauty", "yelp",
                                  "toys_and_games", "sports_and_outdoors"}
