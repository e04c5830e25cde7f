"""The code base stays lint-clean and type-checked (mypy strict), as pyproject.toml says."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    if not path.exists():
        found = shutil.which(name)
        if found is None:
            pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
        return found
    return str(path)


def assert_clean(*command: str) -> None:
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff() -> None:
    """ruff finds nothing to complain about in the package, tests and benchmarks."""
    folders = [f for f in ("bridge", "tests", "bench") if (ROOT / f).is_dir()]
    assert_clean(tool("ruff"), "check", *folders)


def test_ruff_format() -> None:
    """The package and tests are formatted as ruff formats them."""
    assert_clean(tool("ruff"), "format", "--check", "bridge", "tests")


def test_mypy_strict() -> None:
    """mypy --strict passes on the package."""
    assert_clean(tool("mypy"), "bridge")
