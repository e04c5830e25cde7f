"""The layout keeps its promises: the layers hold (import-linter's contracts in pyproject.toml),
the mapping package is pure, and one place builds a ledger."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "bridge"
# Modules that do I/O (files, network, processes, databases, time, threads) or logging.
IO_MODULES = {
    "os", "io", "pathlib", "shutil", "socket", "ssl", "http", "urllib", "requests", "urllib3",
    "sqlite3", "psycopg", "psycopg_pool", "subprocess", "threading", "multiprocessing",
    "concurrent", "asyncio", "time", "logging", "flask", "werkzeug", "gunicorn", "gzip",
    "tempfile", "glob", "fcntl", "select", "signal",
}  # fmt: skip
IO_CALLS = {"open", "print", "input", "exec", "eval", "__import__"}
# compiler.py runs the fast path it writes, after checking its tree against an allow-list
# (tests/test_fast_path.py holds that check to refusing what it must).
EXECUTES_GENERATED = {"compiler.py": {"exec"}}
# Pure parts of I/O packages: urllib.parse splits and decodes text, it opens nothing.
PURE_SUBMODULES = {"urllib.parse"}
# What the pure mapping package may import from the rest of the bridge (pure modules).
PURE_BRIDGE = {"dub.endpoints", "dub.fields", "dub.currencies", "core.masking", "core.outcomes",
               "core.results", "core.items", "core.jsoncodec", "core.errors"}  # fmt: skip


def imports(path: Path) -> set[str]:
    """The absolute names of the modules a file imports (relative imports resolved)."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                found.add(node.module or "")
            else:
                base = package[: len(package) - node.level + 1]
                found.add(".".join([*base, node.module] if node.module else base))
    return found


def pure_modules() -> list[Path]:
    mapping = sorted((PACKAGE / "mapping").glob("*.py"))
    bridge_side = [PACKAGE / f"{name.replace('.', '/')}.py" for name in sorted(PURE_BRIDGE)]
    return mapping + bridge_side


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_mapping_engine_does_no_io(path: Path) -> None:
    """The mapping package, and what it imports from the bridge, neither import nor call I/O."""
    allowed = {f"bridge.{name}" for name in PURE_BRIDGE}
    for name in imports(path):
        if name.startswith("bridge."):
            assert name.startswith("bridge.mapping") or name in allowed, (
                f"{path.name} imports {name}, which may do I/O"
            )
        elif name not in PURE_SUBMODULES:
            assert name.split(".")[0] not in IO_MODULES, f"{path.name} imports {name}"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            allowed_calls = EXECUTES_GENERATED.get(path.name, set())
            if node.func.id not in allowed_calls:
                assert node.func.id not in IO_CALLS, f"{path.name} calls {node.func.id}()"


def test_the_layers_hold() -> None:
    """import-linter's contracts hold: web and cli over service over delivery over ledger over
    mapping, dub and reader over core; no part imports one above it."""
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run(
        [str(lint), "--no-cache"], cwd=PACKAGE.parent, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_only_open_ledger_builds_a_backend() -> None:
    """Backends are constructed in one place: ledger/__init__.py's open_ledger()."""
    builders = {"SQLiteLedger", "MemoryLedger", "PostgresLedger"}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in builders
            ):
                assert path == PACKAGE / "ledger" / "__init__.py", (
                    f"{path.relative_to(PACKAGE)} builds a {node.func.id}"
                )


def test_one_error_shape_is_built_in_one_place() -> None:
    """Every HTTP error body comes from core.errors.error_body: no other module writes the
    {"error": {"code": ..., "message": ...}} shape by hand."""
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "core" / "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = [k.value for k in node.keys if isinstance(k, ast.Constant)]
                inner = [v for k, v in zip(node.keys, node.values, strict=True)
                         if isinstance(k, ast.Constant) and k.value == "error"]  # fmt: skip
                assert not (
                    "error" in keys
                    and any(
                        isinstance(v, ast.Dict)
                        and any(isinstance(k, ast.Constant) and k.value == "code" for k in v.keys)
                        for v in inner
                    )
                ), f"{path.relative_to(PACKAGE)}:{node.lineno} builds an error body by hand"
