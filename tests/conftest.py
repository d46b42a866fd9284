"""Fixtures shared by every test directory (unit, integration, e2e, security)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.processes import REPO
from tests.redis_process import redis, shared_redis  # noqa: F401 - fixtures
from tests.systemd_helpers import manager, notify_socket  # noqa: F401 - fixtures

# Property tests are derandomized (the same examples every run): no example
# database, and whatever Hypothesis still stores goes to a temporary
# directory, never .hypothesis/ in the checkout.
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", tempfile.mkdtemp(prefix="idgateway-hypothesis-")
)
settings.register_profile("idgateway", database=None)
settings.load_profile("idgateway")

# What a test run may add to the checkout: Python's bytecode caches, and the
# provider's node dependencies that the first test needing them installs (as
# `make venv` installs the Python ones).
MAY_APPEAR = ("__pycache__/", "tests/provider/node_modules/")


def untracked_files() -> set[str] | None:
    """Untracked and ignored paths in the checkout, as git lists them (None: no git)."""
    git = shutil.which("git")
    if git is None:
        return None
    done = subprocess.run(
        [git, "status", "--porcelain", "--ignored"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if done.returncode != 0:  # not a git checkout (an unpacked sdist)
        return None
    listed = {line[3:] for line in done.stdout.splitlines() if line[:2] in ("??", "!!")}
    return {path for path in listed if not any(part in path for part in MAY_APPEAR)}


@pytest.fixture(scope="session", autouse=True)
def checkout_left_as_found() -> Iterator[None]:
    """A test run leaves the checkout as it found it: build output, caches and
    logs go to temporary directories. Fails (as an error in the last test's
    teardown) naming every file the run left behind."""
    before = untracked_files()
    yield
    after = untracked_files()
    if before is None or after is None:
        return
    left = sorted(after - before)
    assert not left, "the test run left files in the checkout:\n  " + "\n  ".join(left)
