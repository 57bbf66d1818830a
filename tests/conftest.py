"""Test setup: force several CPU devices before JAX initialises its backend."""

import os

# Must happen before the first JAX operation anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import fcntl  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def shared_data_dir():
  """The public datasets; skips the test with a reason where they are absent."""
  if not (SHARED_DATA / "LastFM.txt").exists():
    pytest.skip(f"real datasets not found at {SHARED_DATA} (CI and developers have them at ../shared/data)")
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
      result = cli_runs.run(str(workdir), devices=4)
      assert result.returncode == 0, result.stderr[-3000:]
      # What the user saw, for tests of the console output (kept beside the workdir).
      pathlib.Path(str(workdir) + ".stdout").write_text(result.stdout)
      done.write_text(result.stderr)
  return str(workdir)
