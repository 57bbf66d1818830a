"""s3rec_jax.core.provenance: the commit, CPU and library versions a record carries."""

import os
import re
import shutil
import subprocess

import jax
import pytest

from s3rec_jax.core import provenance


def test_commit_is_the_checkout_head():
  if shutil.which("git") is None or not os.path.exists(os.path.join(provenance.REPO, ".git")):
    pytest.skip("not a git checkout: provenance.commit() is None there")
  head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=provenance.REPO,
                        capture_output=True, text=True, check=True).stdout.strip()
  assert provenance.commit() == head


def test_cpu_names_the_core_count():
  assert re.search(rf", {os.cpu_count()} cores$", provenance.cpu())


def test_libraries_are_the_running_versions():
  assert provenance.libraries()["jax"] == jax.__version__
