"""Installing the project and the twistd command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.processes import REPO, TWISTD

# What a source tree holds, less what a checkout accumulates: pip builds in the
# tree it is given (build/, *.egg-info), so it is given a copy, not the checkout.
NOT_SOURCE = shutil.ignore_patterns(
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "dropin.cache",
)

# twistd that sees only the plugin directories under the directory named by its
# first argument (the installed copy), not the checkout's or the venv's.
TWISTD_INSTALLED_ONLY = """
import os, sys, twisted.plugins as plugins
target = sys.argv.pop(1)
plugins.__path__[:] = [d for d in plugins.__path__ if os.path.realpath(d).startswith(target)]
from twisted.scripts.twistd import run
run()
"""


def test_pip_install_makes_twistd_list_the_plugin(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(REPO, source, ignore=NOT_SOURCE, symlinks=True)
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(target),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert (target / "twisted" / "plugins" / "idgateway_plugin.py").exists()
    env = dict(os.environ, PYTHONPATH=str(target))
    # Run from an empty directory so only the installed copy can be found.
    result = subprocess.run(
        [sys.executable, "-c", TWISTD_INSTALLED_ONLY, os.path.realpath(target), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "idgateway" in result.stdout


def test_check_prints_a_summary_and_exits_zero(tmp_path: Path) -> None:
    config = tmp_path / "ok.yaml"
    config.write_text(
        "listeners:\n  - address: 127.0.0.1:0\nroutes:\n  - name: app1\n"
        "    hosts: [app1.localhost]\n    upstream: http://127.0.0.1:3000\n"
        "    paths:\n      - {prefix: /api/, upstream: http://127.0.0.1:3001}\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", TWISTD, "idgateway", "--config", str(config), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "app1" in result.stdout
    assert "http://127.0.0.1:3000" in result.stdout
    assert "/api/" in result.stdout
    assert "127.0.0.1:0" in result.stdout


def test_check_reports_every_error_and_exits_one(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(
        "listeners:\n  - address: 127.0.0.1:99999\nroutes:\n  - name: a\n"
        "    hosts: [a.localhost]\n    upstream: ftp://x\n  - name: b\n    hosts: [a.localhost]\n"
        "    upstream: http://127.0.0.1:1\n    preserve_host: maybe\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", TWISTD, "idgateway", "--config", str(config), "--check"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if str(config) in line]
    # port, upstream scheme, duplicate host, boolean: four separate problems
    assert len(errors) >= 4, result.stderr
    assert f"{config}:2" in result.stderr
    assert f"{config}:6" in result.stderr
