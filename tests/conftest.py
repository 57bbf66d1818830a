"""Test setup: force several CPU devices before JAX initialises its backend."""

import os

# Must happen before the first JAX operation anywhere in the test session.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

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
def tiny_reference_run(tmp_path_factory):
  """One uninterrupted single-process train.py run of tests/cli_runs.TINY on 4 CPU devices."""
  import cli_runs  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  result = cli_runs.run(workdir, devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  # What the user saw, for tests of the console output (kept beside the workdir).
  pathlib.Path(workdir + ".stdout").write_text(result.stdout)
  pathlib.Path(workdir + ".stderr").write_text(result.stderr)
  return workdir
