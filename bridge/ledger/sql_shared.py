"""What every instance shares through the SQL ledger besides deliveries: Dub's rate limit
(counted per second, so a window is a few dozen rows however high the limit) and the
events each batch signature vouched for when first seen, by content. A mixin of SQLLedger.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from ..core.clock import Clock
from ..core.jsoncodec import dumps_str, loads
from .base import COUNTED_FOR, Sighting, Slots, room
from .statements import PAUSE, TAKE_SLOTS

T = TypeVar("T")


class SharedSQL:
    clock: Clock
    greatest: str  # the two-argument maximum: GREATEST, or MAX in SQLite

    def _run(
        self, work: Callable[[Any], T], *, tx: bool = False, write: bool = True,
        pipeline: bool = False,
    ) -> T:  # fmt: skip
        raise NotImplementedError

    def _serialise_slots(self, db: Any, key: str) -> None:
        """Make the rate-limit transaction on ``key`` the only one at a time."""

    def take_slots(
        self, key: str, per_minute: int, count: int, *, per_second: int | None = None,
        spare: int = 0,
    ) -> Slots:  # fmt: skip
        now = self.clock.time()
        second = math.floor(now)

        def take(db: Any) -> Slots:
            self._serialise_slots(db, key)
            args: dict[str, Any] = {"key": key, "second": second, "edge": now - COUNTED_FOR}
            # One read while the key is locked: the pause and the window (seconds that left
            # it are pruned by housekeeping, ``prune_slots``, off the request path). Seconds
            # whose slots were all given back count for nothing, and free nothing.
            paused, used, oldest, this_second = db.execute(
                "SELECT (SELECT until FROM rate_pauses WHERE key = :key),"
                " COALESCE(SUM(taken), 0), MIN(second),"
                " COALESCE(SUM(CASE WHEN second = :second THEN taken ELSE 0 END), 0)"
                " FROM rate_buckets WHERE key = :key AND taken > 0 AND second > :edge",
                args,
            ).fetchone()
            if paused is not None and paused > now:
                return Slots(0, float(paused - now), second)
            granted, wait = room(
                now, count, per_minute, per_second, used, oldest, this_second, spare
            )
            if granted:
                db.execute(TAKE_SLOTS, args | {"taken": granted})
            return Slots(granted, wait, second)

        taken: Slots = self._run(take, tx=True, pipeline=True)
        return taken

    def prune_slots(self) -> None:
        """Forget the seconds that left every window (housekeeping: a key keeps at most a
        row a second until then, read through its index)."""
        edge = self.clock.time() - COUNTED_FOR
        self._run(
            lambda db: db.execute("DELETE FROM rate_buckets WHERE second <= :edge", {"edge": edge})
        )

    def give_back_slots(self, key: str, second: int, count: int) -> None:
        # A second already out of the window has nothing left to give back to.
        self._run(
            lambda db: db.execute(
                "UPDATE rate_buckets SET taken = taken - :count"
                " WHERE key = :key AND second = :second AND taken >= :count",
                {"key": key, "second": second, "count": count},
            )
        )

    def vouch(self, key: str, sighting: Sighting) -> Sighting:
        args = {
            "key": key,
            "ids": dumps_str(sorted(sighting.message_ids)),
            "digests": dumps_str(sorted(sighting.digests)),
            "keep_until": sighting.keep_until,
            "now": self.clock.time(),
        }

        def first_seen(db: Any) -> Sighting:
            # One statement: a new signature is stored; a known one is left as it is (the
            # update sets nothing new) and read back, whoever stored it first.
            ids, digests, keep_until = db.execute(
                "INSERT INTO signatures (key, message_ids, digests, first_seen, keep_until)"
                " VALUES (:key, :ids, :digests, :now, :keep_until)"
                " ON CONFLICT (key) DO UPDATE SET key = excluded.key"
                " RETURNING message_ids, digests, keep_until",
                args,
            ).fetchone()
            # No digests: the release before saw it first, and kept no content to vouch for.
            return Sighting(
                frozenset(loads(ids)),
                frozenset(loads(digests)) if digests is not None else frozenset(),
                float(keep_until) if keep_until is not None else 0.0,
            )

        vouched: Sighting = self._run(first_seen)
        return vouched

    def pause(self, key: str, until: float) -> None:
        self._run(
            lambda db: db.execute(
                PAUSE.format(greatest=self.greatest), {"key": key, "until": until}
            )
        )
