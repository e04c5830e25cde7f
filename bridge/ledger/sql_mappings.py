"""Mapping sets kept in the ledger's database: the last good one, and the published one.

Every set that loads cleanly is kept by version, so a worker that starts while the
files on disk are invalid starts from the last good set; ``bridge mappings publish``
and ``rollback`` record activations, which every instance following the database
picks up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..clock import Clock
from ..jsoncodec import dumps_str, loads
from .base import Activation, MappingSet

T = TypeVar("T")
_COLUMNS = "version, files, origin, created_at, loaded_at"
_KEEP = """
INSERT INTO mapping_sets (version, files, origin, created_at, loaded_at)
VALUES (:version, :files, :origin, :now, :now)
ON CONFLICT (version) DO UPDATE SET loaded_at = excluded.loaded_at
"""
_ACTIVE = f"""
SELECT {", ".join("s." + c.strip() for c in _COLUMNS.split(","))} FROM mapping_sets s
JOIN mapping_activations a ON a.version = s.version
ORDER BY a.activated_at DESC LIMIT 1
"""


class MappingSetsSQL:
    """The mapping-set part of the contract, for the SQL backends (a mixin of SQLLedger)."""

    clock: Clock

    def _run(self, work: Callable[[Any], T], *, tx: bool = False, write: bool = True) -> T:
        raise NotImplementedError

    def keep_mapping_set(self, version: str, files: Sequence[tuple[str, str]], origin: str) -> None:
        args = {
            "version": version,
            "files": dumps_str([{"name": n, "text": t} for n, t in files]),
            "origin": origin,
            "now": self.clock.time(),
        }
        self._run(lambda db: db.execute(_KEEP, args))

    def mapping_set(self, version: str) -> MappingSet | None:
        sql = f"SELECT {_COLUMNS} FROM mapping_sets WHERE version = :version"
        return self._one(sql, {"version": version})

    def last_good_mapping_set(self) -> MappingSet | None:
        sql = f"SELECT {_COLUMNS} FROM mapping_sets ORDER BY loaded_at DESC, version LIMIT 1"
        return self._one(sql, {})

    def activate_mapping_set(self, version: str, origin: str) -> None:
        args = {"version": version, "origin": origin, "now": self.clock.time()}
        self._run(
            lambda db: db.execute(
                "INSERT INTO mapping_activations (version, origin, activated_at)"
                " VALUES (:version, :origin, :now)",
                args,
            )
        )

    def active_mapping_set(self) -> MappingSet | None:
        return self._one(_ACTIVE, {})

    def activations(self, limit: int = 20) -> list[Activation]:
        sql = (
            "SELECT version, origin, activated_at FROM mapping_activations"
            " ORDER BY activated_at DESC LIMIT :limit"
        )
        rows = self._run(lambda db: db.execute(sql, {"limit": limit}).fetchall(), write=False)
        return [Activation(v, o, a) for v, o, a in rows]

    def _one(self, sql: str, args: dict[str, Any]) -> MappingSet | None:
        row = self._run(lambda db: db.execute(sql, args).fetchone(), write=False)
        if row is None:
            return None
        version, files, origin, created, loaded = row
        kept = tuple((f["name"], f["text"]) for f in loads(files))
        return MappingSet(version, kept, origin, created, loaded)
