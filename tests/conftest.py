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
