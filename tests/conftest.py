"""Test setup: force several CPU devices before JAX initialises its backend."""

import os

# Must happen before the first JAX operation anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import atexit  # noqa: E402
import fcntl  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# JAX's persistent compilation cache, in a fresh folder for each pytest process (each xdist
# worker makes its own, replacing the one it inherits): many tests build the same tiny steps
# again (a second run, a resumed run, evaluate after train), which are then loaded instead of
# compiled. One writer per folder; the subprocesses a test starts use it in turn (see
# cli_runs.env). S3REC_TEST_COMPILATION_CACHE: "off", or the shortest compile (seconds) worth
# keeping.
_CACHE_SETTING = os.environ.get("S3REC_TEST_COMPILATION_CACHE", "0")
if _CACHE_SETTING != "off":
  _CACHE = tempfile.mkdtemp(prefix="s3rec_jax_test_compilation_cache_")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = _CACHE_SETTING
else:
  os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)

import pytest  # noqa: E402

# The public datasets, released checkpoints and reference logs: the folder S3REC_SHARED_DATA
# names, else the team's shared/data folder beside the checkout (CI lays it there).
SHARED_DATA = pathlib.Path(os.environ.get("S3REC_SHARED_DATA") or (
    pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"))
if (SHARED_DATA / "LastFM.txt").exists():
  os.environ.setdefault("S3REC_SHARED_DATA", str(SHARED_DATA))


@pytest.fixture
def shared_data_dir():
  """The public datasets; skips the test with a reason where they are absent."""
  if not (SHARED_DATA / "LastFM.txt").exists():
    pytest.skip(f"real datasets not found at {SHARED_DATA}: set S3REC_SHARED_DATA to a folder "
                "with the public datasets and released checkpoints")
  return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_reference_run(tmp_path_factory, worker_id):
  """One uninterrupted single-process train.py run of tests/cli_runs.TINY on 4 CPU devices.

  Read-only for the tests. Under pytest-xdist the workers share one run: the
  first to get the lock trains, the others wait and reuse it.
  """
  import cli_runs  # pylint: disable=g-import-not-at-top
  base = tmp_path_factory.getbasetemp()
  root = base if worker_id == "master" else base.parent   # the session's folder, shared
  workdir = root / "tiny_reference" / "run"
  done = pathlib.Path(str(workdir) + ".stderr")   # written last
  with open(root / "tiny_reference.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not done.exists():
      # Its own compilation cache, which test_resume copies for its runs of the same model.
      result = cli_runs.run(str(workdir), devices=4,
                            compilation_cache=cli_runs.compilation_cache_of(str(workdir)))
      assert result.returncode == 0, result.stderr[-3000:]
      # What the user saw, for tests of the console output (kept beside the workdir).
      pathlib.Path(str(workdir) + ".stdout").write_text(result.stdout)
      done.write_text(result.stderr)
  return str(workdir)
