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


def test_ruff() -> None:
    """ruff finds nothing to complain about in the package, tests and benchmarks."""
    folders = [f for f in ("bridge", "tests", "bench") if (ROOT / f).is_dir()]
    done = subprocess.run(
        [tool("ruff"), "check", *folders],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format() -> None:
    """The package and tests are formatted as ruff formats them."""
    done = subprocess.run(
        [tool("ruff"), "format", "--check", "bridge", "tests"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_strict() -> None:
    """mypy --strict passes on the package."""
    done = subprocess.run(
        [tool("mypy"), "bridge"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
