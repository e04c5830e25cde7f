"""What every instance shares through the SQL ledger besides deliveries: Dub's rate limit
(counted per second, so a window is a few dozen rows however high the limit) and the
events each batch signature vouched for when first seen, by content. A mixin of SQLLedger.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, TypeVar

from ..clock import Clock
from ..jsoncodec import dumps_str, loads
from .base import COUNTED_FOR, Sighting
from .statements import PAUSE, TAKE_SLOTS

T = TypeVar("T")


class SharedSQL:
    clock: Clock
    greatest: str  # the two-argument maximum: GREATEST, or MAX in SQLite

    def _run(self, work: Callable[[Any], T], *, tx: bool = False, write: bool = True) -> T:
        raise NotImplementedError

    def _serialise_slots(self, db: Any, key: str) -> None:
        """Make the rate-limit transaction on ``key`` the only one at a time."""

    def take_slots(self, key: str, per_minute: int, count: int) -> tuple[int, float]:
        now = self.clock.time()

        def take(db: Any) -> tuple[int, float]:
            self._serialise_slots(db, key)
            args: dict[str, Any] = {"key": key, "second": math.floor(now)}
            args["edge"] = now - COUNTED_FOR
            db.execute("DELETE FROM rate_buckets WHERE key = :key AND second <= :edge", args)
            paused = db.execute("SELECT until FROM rate_pauses WHERE key = :key", args).fetchone()
            if paused is not None and paused[0] > now:
                return 0, float(paused[0] - now)
            used, oldest = db.execute(
                "SELECT COALESCE(SUM(taken), 0), MIN(second) FROM rate_buckets WHERE key = :key",
                args,
            ).fetchone()
            granted = min(count, per_minute - int(used))
            if granted <= 0:
                return 0, max(float(oldest) + COUNTED_FOR - now, 0.001)
            db.execute(TAKE_SLOTS, args | {"taken": granted})
            return granted, 0.0

        taken: tuple[int, float] = self._run(take, tx=True)
        return taken

    def vouch(self, key: str, sighting: Sighting) -> Sighting:
        args = {
            "key": key,
            "ids": dumps_str(sorted(sighting.message_ids)),
            "digests": dumps_str(sorted(sighting.digests)),
            "keep_until": sighting.keep_until,
            "now": self.clock.time(),
        }

        def first_seen(db: Any) -> Sighting:
            db.execute(
                "INSERT INTO signatures (key, message_ids, digests, first_seen, keep_until)"
                " VALUES (:key, :ids, :digests, :now, :keep_until) ON CONFLICT (key) DO NOTHING",
                args,
            )
            ids, digests, keep_until = db.execute(
                "SELECT message_ids, digests, keep_until FROM signatures WHERE key = :key", args
            ).fetchone()
            # No digests: the release before saw it first, and kept no content to vouch for.
            return Sighting(
                frozenset(loads(ids)),
                frozenset(loads(digests)) if digests is not None else frozenset(),
                float(keep_until) if keep_until is not None else 0.0,
            )

        vouched: Sighting = self._run(first_seen, tx=True)
        return vouched

    def pause(self, key: str, until: float) -> None:
        self._run(
            lambda db: db.execute(
                PAUSE.format(greatest=self.greatest), {"key": key, "until": until}
            )
        )
