"""Mapping sets kept in the ledger's database: the last good one, and the published one.

Every set that loads cleanly is kept by version, so a worker that starts while the
files on disk are invalid starts from the last good set; ``bridge mappings publish``
and ``rollback`` record activations, which every instance following the database
picks up. Activations are ordered as the database took them and stamped with its
clock: a publisher whose clock runs ahead must not pin its set above later ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ..core.clock import Clock
from ..core.jsoncodec import dumps_str, loads
from .base import Activation, MappingSet

T = TypeVar("T")
_COLUMNS = "version, files, origin, created_at, loaded_at"
_KEEP = """
INSERT INTO mapping_sets (version, files, origin, created_at, loaded_at)
VALUES (:version, :files, :origin, :now, :now)
ON CONFLICT (version) DO UPDATE SET loaded_at = excluded.loaded_at
"""
# The order the database took activations in (see migration 7), and its clock, per backend.
_ORDER = {"sqlite": "rowid", "postgres": "seq"}
_NOW = {
    "sqlite": "(julianday('now') - 2440587.5) * 86400.0",
    "postgres": "CAST(EXTRACT(EPOCH FROM clock_timestamp()) AS DOUBLE PRECISION)",
}


class MappingSetsSQL:
    """The mapping-set part of the contract, for the SQL backends (a mixin of SQLLedger)."""

    clock: Clock
    kind: str

    def _run(
        self, work: Callable[[Any], T], *, tx: bool = False, write: bool = True,
        pipeline: bool = False,
    ) -> T:  # fmt: skip
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
        found = self._sets(sql, {"version": version})
        return found[0] if found else None

    def last_good_mapping_set(self) -> MappingSet | None:
        found = self.mapping_sets(1)
        return found[0] if found else None

    def mapping_sets(self, limit: int = 20) -> list[MappingSet]:
        sql = f"SELECT {_COLUMNS} FROM mapping_sets ORDER BY loaded_at DESC, version LIMIT :limit"
        return self._sets(sql, {"limit": limit})

    def activate_mapping_set(
        self, version: str, origin: str, *, author: str | None = None, message: str | None = None
    ) -> None:
        args = {"version": version, "origin": origin, "author": author, "message": message}
        sql = (
            "INSERT INTO mapping_activations (version, origin, activated_at, author, message)"
            f" VALUES (:version, :origin, {_NOW[self.kind]}, :author, :message)"
        )
        self._run(lambda db: db.execute(sql, args))

    def active_mapping_set(self) -> MappingSet | None:
        columns = ", ".join("s." + c.strip() for c in _COLUMNS.split(","))
        sql = (
            f"SELECT {columns} FROM mapping_sets s"
            " JOIN mapping_activations a ON a.version = s.version"
            f" ORDER BY a.{_ORDER[self.kind]} DESC LIMIT 1"
        )
        found = self._sets(sql, {})
        return found[0] if found else None

    def activations(self, limit: int = 20) -> list[Activation]:
        sql = (
            "SELECT version, origin, activated_at, author, message FROM mapping_activations"
            f" ORDER BY {_ORDER[self.kind]} DESC LIMIT :limit"
        )
        rows = self._run(lambda db: db.execute(sql, {"limit": limit}).fetchall(), write=False)
        return [Activation(*row) for row in rows]

    def _sets(self, sql: str, args: dict[str, Any]) -> list[MappingSet]:
        rows = self._run(lambda db: db.execute(sql, args).fetchall(), write=False)
        return [
            MappingSet(version, tuple((f["name"], f["text"]) for f in loads(files)), origin,
                       created, loaded)
            for version, files, origin, created, loaded in rows
        ]  # fmt: skip
