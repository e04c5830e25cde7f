"""Node packages for the end-to-end tests that drive real JavaScript clients.

Each driver folder (``tests/segment_e2e``, ``tests/sdk_e2e``) pins its packages with a
``package-lock.json``; ``npm ci`` installs them into a cache folder outside the repository
(``$SEGMENT_E2E_CACHE``, else ``<tmp>/segment-dub-bridge-e2e``), keyed by the hash of the
package files, so a second run installs nothing. Without ``node`` or ``npm``, or when the
install fails, the tests skip and say why; when the folder's ``required_by`` variable is
set (``.ci/run`` sets it) they fail instead, so CI never passes without having run them.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

import pytest

PACKAGE_FILES = ("package.json", "package-lock.json", ".npmrc")


def unavailable(reason: str, required_by: str) -> NoReturn:
    """Skip where the Node side cannot be had; fail where it is required (CI)."""
    if os.environ.get(required_by):
        pytest.fail(f"{required_by} is set, so this test must run, but: {reason}")
    pytest.skip(f"{reason} (set {required_by}=1 to make this a failure)")


def cache_root() -> Path:
    configured = os.environ.get("SEGMENT_E2E_CACHE")
    return (
        Path(configured) if configured else Path(tempfile.gettempdir()) / "segment-dub-bridge-e2e"
    )


def install(npm: str, node_dir: Path, required_by: str) -> Path:
    """``npm ci`` a driver folder's packages into a cache folder keyed by its files' hash."""
    digest = hashlib.sha256()
    for name in PACKAGE_FILES:
        digest.update(name.encode() + b"\0" + (node_dir / name).read_bytes() + b"\0")
    root = cache_root()
    prefix = root / digest.hexdigest()[:16]
    done = prefix / ".installed"
    if done.is_file():
        return prefix
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{prefix.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a concurrent run waits for this install
        if done.is_file():
            return prefix
        staging = Path(tempfile.mkdtemp(prefix=f"{prefix.name}.", dir=root))
        for name in PACKAGE_FILES:
            shutil.copyfile(node_dir / name, staging / name)
        # No install scripts: the drivers load no native module, and native builds (an SFTP
        # destination's ssh2, a Redis client's msgpackr) would only cost time.
        command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        try:
            proc = subprocess.run(command, cwd=staging, capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            shutil.rmtree(staging, ignore_errors=True)
            unavailable(
                "npm ci did not finish within 600 s (is a package registry reachable?)",
                required_by,
            )
        if proc.returncode != 0:
            shutil.rmtree(staging, ignore_errors=True)
            said = [
                line for line in (proc.stderr or proc.stdout).splitlines() if " at " not in line
            ]
            reason = "\n".join(said[:6])
            unavailable(
                f"npm ci failed (exit {proc.returncode}); no registry reachable?\n{reason}",
                required_by,
            )
        (staging / ".installed").write_text(" ".join(command) + "\n")
        if prefix.exists():  # a half-made folder from an interrupted run
            shutil.rmtree(prefix)
        staging.rename(prefix)
    return prefix


def node_prefix(node_dir: Path, required_by: str, what: str) -> Path:
    """Where ``node_dir``'s node_modules are, installed; skips (CI: fails) without Node 20."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable(f"node and npm are needed for {what}; not on PATH", required_by)
    version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    if int(version.lstrip("v").split(".")[0] or 0) < 20:
        unavailable(f"Node 20 or newer is needed for {what}; found {version}", required_by)
    return install(npm, node_dir, required_by)
