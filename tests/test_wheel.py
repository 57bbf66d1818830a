"""The built wheel, installed outside the checkout: its commands, packaged configs and kernels.

Builds the wheel, installs it (without dependencies) into a fresh virtual environment in a
temporary folder that borrows this environment's installed dependencies, and runs from there:
every command's --help, a short synthetic run by packaged config name with the native ranking
kernel (compiled from the wheel's sources), and s3rec-recommend on the result.
"""

import json
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

import cli_runs

COMMANDS = ("s3rec-train", "s3rec-evaluate", "s3rec-prepare", "s3rec-data", "s3rec-recommend",
            "s3rec-export", "s3rec-convert", "s3rec-experiment", "s3rec-plot")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  root = tmp_path_factory.mktemp("wheel")
  built = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(root / "dist"),
       cli_runs.REPO], capture_output=True, text=True, cwd=root)
  if built.returncode != 0:
    pytest.fail(f"pip wheel failed: {built.stderr[-3000:]}")
  wheel = next((root / "dist").glob("s3rec_jax-*.whl"))
  venv = root / "venv"
  subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
  python = venv / "bin" / "python"
  # The dependencies come from this environment (a plain path line: its .pth files, such as
  # an editable install of the checkout, are not processed).
  purelib = pathlib.Path(subprocess.check_output(
      [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
      text=True).strip())
  (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                  str(wheel)], check=True, cwd=root)
  return root, venv, wheel


def _env(root):
  env = cli_runs.env(devices=2)
  env.pop("PYTHONPATH", None)
  env.pop("S3REC_KERNEL_CACHE", None)
  env["S3REC_DATA"] = str(root / "data")
  env["HOME"] = str(root / "home")   # the kernel cache and any user folder: fresh
  return env


def test_the_wheel_ships_the_configs_and_the_kernel_sources(installed):
  _, _, wheel = installed
  names = zipfile.ZipFile(wheel).namelist()
  for name in ("s3rec_jax/configs/synthetic.py", "s3rec_jax/configs/beauty.py",
               "s3rec_jax/ops/kernels/full_ranking_cpu.cc", "s3rec_jax/ops/kernels/cpu_tiles.h",
               "s3rec_jax/ops/kernels/cpu_parallel.h",
               "s3rec_jax/ops/kernels/catalogue_softmax_cpu.cc"):
    assert name in names, name
  assert not [n for n in names if n.startswith(("tests/", "configs/", "benchmarks/"))]


def test_every_command_answers_help_from_outside_the_checkout(installed):
  root, venv, _ = installed
  for command in COMMANDS:
    result = subprocess.run([str(venv / "bin" / command), "--help"], capture_output=True,
                            text=True, cwd=root, env=_env(root))
    assert result.returncode == 0, (command, result.stderr[-2000:])
    assert "usage" in (result.stdout + result.stderr).lower() or "--" in result.stdout, command
  where = subprocess.check_output([str(venv / "bin" / "python"), "-c",
                                   "import s3rec_jax; print(s3rec_jax.__file__)"], text=True,
                                  cwd=root, env=_env(root))
  assert where.startswith(str(venv)), where


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="no C++ compiler: the fused_cpu kernels cannot be built")
def test_train_by_config_name_with_the_native_ranking_then_recommend(installed):
  root, venv, _ = installed
  workdir = root / "run"
  settings = dict(cli_runs.TINY, **{"pretrain.epochs": 1, "finetune.epochs": 2,
                                    "eval.protocol": "full", "eval.ranking": "fused_cpu"})
  result = subprocess.run(
      [str(venv / "bin" / "s3rec-train"), "--config=synthetic", f"--workdir={workdir}"]
      + [f"--config.{k}={v}" for k, v in settings.items()],
      capture_output=True, text=True, cwd=root, env=_env(root))
  assert result.returncode == 0, result.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert results["config"]["eval"]["ranking"] == "fused_cpu" and 0 <= results["NDCG@20"] <= 1
  # The kernel was compiled from the installed sources, into the fresh user cache.
  assert list((root / "home").rglob("*.so")), "no native kernel was built"
  recommended = subprocess.run(
      [str(venv / "bin" / "s3rec-recommend"), f"--workdir={workdir}", "--history", "1 2 3",
       "--k", "5"], capture_output=True, text=True, cwd=root, env=_env(root))
  assert recommended.returncode == 0, recommended.stderr[-3000:]
  assert len(json.loads(recommended.stdout.strip().splitlines()[-1])["items"]) == 5


def test_a_missing_public_dataset_names_the_fetch_command(installed):
  root, venv, _ = installed
  result = subprocess.run(
      [str(venv / "bin" / "s3rec-train"), "--config=lastfm", f"--workdir={root / 'lastfm'}"],
      capture_output=True, text=True, cwd=root, env=_env(root))
  assert result.returncode == 2, result.stderr[-2000:]
  assert "s3rec-data fetch LastFM" in result.stderr and "Traceback" not in result.stderr
  assert not (root / "lastfm").exists()
