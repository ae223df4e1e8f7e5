"""The code base is formatted and linted with ruff (configuration in pyproject.toml)."""

from __future__ import annotations

import sys

from conftest import REPO, run


def test_ruff_check() -> None:
    result = run([sys.executable, "-m", "ruff", "check", str(REPO)], cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format() -> None:
    result = run([sys.executable, "-m", "ruff", "format", "--check", str(REPO)], cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
