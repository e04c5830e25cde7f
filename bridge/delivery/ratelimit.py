"""Client-side rate limiting, shaped like Dub's per-key limit: a sliding one-minute window.

``SharedWindow`` keeps the window in the ledger's database, so every worker and
instance together stay under Dub's limit, and a 429 pauses them all; ``SlidingWindow``
is one process's own window, used only without a ledger (benchmarks).

Only calls made count. A slot is taken for one call, right before it is sent (or, while the
window is less than half used, a few at once for the calls a worker is about to make: see
``SharedWindow``); a slot whose call never left (no connection to Dub could be opened) is
given back. A call Dub answered
429 keeps its slot: Dub saw it, its documentation does not say whether its window counts
a refused request, and counting it costs at most the calls in flight when the 429 pauses
every instance, while not counting it could put the bridge over the limit.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

from ..core.clock import SYSTEM, Clock
from ..core.errors import LedgerError
from ..core.metrics import metrics
from ..dub.client import DubAnswer, Failure
from ..ledger.base import USE_WITHIN, RateWindow

WINDOW = 60.0
# The most slots a worker takes ahead of its calls (SharedWindow's lease).
LEASE_MOST = 32
log = logging.getLogger("bridge.delivery")


@dataclass(frozen=True, slots=True)
class Grant:
    """What ``acquire`` came to: a slot (``wait`` 0), or the seconds until one may free."""

    wait: float = 0.0
    # Where the limiter counts the slot (the ledger's second, or this process's moment):
    # what ``give_back`` needs to return it to the count it came from.
    counted_at: float | None = None

    @property
    def granted(self) -> bool:
        return self.counted_at is not None


def serves(second: int, now: float) -> bool:
    """Whether a slot counted in ``second`` may serve a call made at ``now`` (the clock's
    time): only within that second (see ``Reserved``)."""
    return now < second + 1


def never_sent(answer: DubAnswer) -> bool:
    """No connection to Dub was opened: Dub never saw the call."""
    return answer.failure is Failure.UNREACHABLE


class Reserved:
    """Slots taken at once, in one round trip, for calls about to be made (a request's,
    ``SharedWindow.reserve``, or a busy worker's next ones, its lease): each goes to one call
    made within the second of the clock they count in. A slot of second s counts until
    s + COUNTED_FOR, so a call made before s + 1 reaches Dub (within USE_WITHIN) while it
    still counts a minute: Dub's minute never sees more than the window counted. Past that
    second, or once none is left, a call takes its own. What no call used is given back
    (``RateLimiter.release``)."""

    def __init__(self, second: int, count: int):
        self.second = second
        self.left = count
        self._lock = threading.Lock()

    def take(self, now: float) -> Grant | None:
        """One of the slots, for a call made now (the clock's time, not monotonic); None when
        none is left or their second is over."""
        with self._lock:
            if self.left <= 0 or not serves(self.second, now):
                return None
            self.left -= 1
            return Grant(counted_at=self.second)

    def unused(self) -> int:
        """The slots no call took: none is handed out after this."""
        with self._lock:
            left, self.left = self.left, 0
            return left


class RateLimiter(Protocol):
    def acquire(self, deadline: float) -> Grant:
        """Take one slot, for one call made at once, waiting until ``deadline`` (monotonic)
        at most; when none is taken, ``wait`` says how long until one frees (then no call
        is made, and none is counted)."""

    def give_back(self, grant: Grant) -> None:
        """The call of a granted slot was not made after all: it no longer counts."""

    def after_call(self, grant: Grant, answer: DubAnswer) -> None:
        """The call of ``grant`` got ``answer``: a call that never left gives its slot
        back; any other (a 429 included) keeps it."""

    def pause(self, seconds: float) -> None:
        """Give no slot for this long (Dub answered 429 with a Retry-After)."""

    def reserve(self, count: int) -> Reserved | None:
        """Up to ``count`` slots at once, for calls about to be made (None: none, or this
        limiter takes them one at a time)."""

    def release(self, reserved: Reserved) -> None:
        """Give back the reserved slots no call took."""

    def drop_lease(self) -> None:
        """Give back the slots taken ahead of calls and not used (the worker stops)."""


class SlidingWindow:
    """Within one process: at most ``per_minute`` slots in any ``window`` seconds."""

    def __init__(self, per_minute: int, *, window: float = WINDOW, clock: Clock = SYSTEM):
        self.per_minute = max(1, per_minute)
        self.window = window
        self.clock = clock
        self._sent: deque[float] = deque()
        self._paused_until = 0.0
        self._lock = threading.Lock()

    def acquire(self, deadline: float) -> Grant:
        while True:
            with self._lock:
                now = self.clock.monotonic()
                while self._sent and self._sent[0] <= now - self.window:
                    self._sent.popleft()
                full = len(self._sent) >= self.per_minute
                if now >= self._paused_until and not full:
                    self._sent.append(now)
                    return Grant(counted_at=now)
                free_at = max(self._paused_until, self._sent[0] + self.window if full else now)
            metrics().rate_limit_waits.inc()
            if free_at > deadline:
                return Grant(wait=free_at - now)
            self.clock.sleep(min(free_at - now, 0.5))

    def after_call(self, grant: Grant, answer: DubAnswer) -> None:
        if never_sent(answer):
            self.give_back(grant)

    def give_back(self, grant: Grant) -> None:
        with self._lock:
            if grant.counted_at is not None and grant.counted_at in self._sent:
                self._sent.remove(grant.counted_at)

    def pause(self, seconds: float) -> None:
        with self._lock:
            until = self.clock.monotonic() + seconds
            self._paused_until = max(self._paused_until, until)

    def reserve(self, count: int) -> Reserved | None:
        return None  # in process: a slot at a time costs nothing

    def release(self, reserved: Reserved) -> None:
        return None

    def drop_lease(self) -> None:
        return None  # none is taken ahead


class SharedWindow:
    """Every process's calls with one API key, counted in the ledger's database.

    One slot per call, taken in one short transaction right before the call, or, for a
    request's calls, all at once right before the first (``reserve``). While fewer than
    half of the minute's calls are used, a transaction takes as many slots as this worker
    was handed in the last USE_WITHIN (at most LEASE_MOST), and its next calls use them (the
    lease): a worker busy with single-event requests takes its slots a transaction per
    dozens of calls, not per call, and its calls stop queueing on the key's lock. Past
    half, every slot is taken on its own again, so no worker holds slots another needs
    near the limit. A slot taken ahead serves only a call made within the second it counts
    in (``Reserved``); what no call used is given back when the worker next takes slots,
    when a 429 pauses it, or when it stops (an idle worker's leftovers, at most
    LEASE_MOST - 1 and only while the window is under half used, count until then).
    ``per_second``: the most calls in any one second of the clock, when Dub's plan states
    such an allowance (None: the minute alone; then no lease, as for ``reserve``).
    """

    def __init__(
        self,
        ledger: RateWindow,
        key: str,
        per_minute: int,
        *,
        per_second: int | None = None,
        clock: Clock = SYSTEM,
    ):
        self.ledger = ledger
        self.key = key  # a hash of the API key, never the key
        self.per_minute = max(1, per_minute)
        self.per_second = per_second
        self.clock = clock
        self._lease: Reserved | None = None
        # When this worker's last slots were handed out (monotonic): what the next lease
        # takes is how many of them are recent, so no more than LEASE_MOST are remembered.
        self._handed: deque[float] = deque(maxlen=LEASE_MOST)
        self._paused_until = 0.0  # monotonic: a 429 this worker was told of
        self._leasing = threading.Lock()

    def acquire(self, deadline: float) -> Grant:
        leased = self._from_lease()
        if leased is not None:
            return leased
        while True:
            want = self._ahead()
            slots = self.ledger.take_slots(
                self.key, self.per_minute, want, per_second=self.per_second,
                spare=self.per_minute // 2,
            )  # fmt: skip
            if slots.granted and not serves(slots.second, self.clock.time()):
                # The transaction ended in the next second: a call made now could reach Dub
                # after its slot stops counting. Back, and again (it counts in this second).
                self._give_back_many(slots.second, slots.granted)
                continue
            if slots.granted:
                self._handed_out()
                if slots.granted > 1:
                    self._keep(Reserved(slots.second, slots.granted - 1))
                return Grant(counted_at=slots.second)
            metrics().rate_limit_waits.inc()
            if self.clock.monotonic() + slots.wait > deadline:
                return Grant(wait=slots.wait)
            self.clock.sleep(slots.wait)

    def _from_lease(self) -> Grant | None:
        """A slot of the lease, for a call made now; a lease used up or past its second is
        dropped (and what it holds given back). A 429 drops it too (``pause``), and none is
        kept while the pause lasts (``_keep``)."""
        if self.per_second is not None:
            return None
        with self._leasing:
            lease = self._lease
            if lease is None:
                return None
            grant = lease.take(self.clock.time())
            if grant is not None:
                self._handed.append(self.clock.monotonic())
                return grant
            self._lease = None
        self.release(lease)
        return None

    def _ahead(self) -> int:
        """How many slots to take now: as many as this worker was handed in the last
        USE_WITHIN (the calls it is likely to make while they serve), at most LEASE_MOST;
        one with a per-second allowance (none is recorded then: ``_handed_out``)."""
        edge = self.clock.monotonic() - USE_WITHIN
        with self._leasing:
            while self._handed and self._handed[0] < edge:
                self._handed.popleft()
            return max(1, len(self._handed))

    def _handed_out(self) -> None:
        if self.per_second is None:  # only a lease reads it
            with self._leasing:
                self._handed.append(self.clock.monotonic())

    def _keep(self, lease: Reserved) -> None:
        """``lease`` serves the next calls (not while a 429's pause lasts); the one it
        replaces, taken by another thread meanwhile, gives back what it holds."""
        with self._leasing:
            if self.clock.monotonic() < self._paused_until:
                old: Reserved | None = lease
            else:
                old, self._lease = self._lease, lease
        if old is not None:
            self.release(old)

    def drop_lease(self) -> None:
        """Give back the slots taken ahead and not used (a 429, or the worker stopping)."""
        with self._leasing:
            old, self._lease = self._lease, None
        if old is not None:
            self.release(old)

    def after_call(self, grant: Grant, answer: DubAnswer) -> None:
        if never_sent(answer):
            self.give_back(grant)

    def give_back(self, grant: Grant) -> None:
        if grant.counted_at is None:
            return
        try:
            self.ledger.give_back_slots(self.key, int(grant.counted_at), 1)
        except LedgerError as exc:  # the slot counts a minute too long: the safe side
            log.warning("could not give a rate-limit slot back", extra={"error": exc.message})

    def pause(self, seconds: float) -> None:
        self.ledger.pause(self.key, self.clock.time() + seconds)
        # Dub's window is full, whatever this one says: no slot taken ahead serves a call
        # before the pause ends (other workers' serve theirs at most to the end of their
        # second, as a request's reserved slots always could).
        with self._leasing:
            self._paused_until = max(self._paused_until, self.clock.monotonic() + seconds)
        self.drop_lease()

    def reserve(self, count: int) -> Reserved | None:
        """A request's slots in one transaction instead of one each (a round trip each, on
        PostgreSQL, all queued on the key's lock). Not with a per-second allowance: calls
        spread over the next second could put that second over it."""
        if count < 2 or self.per_second is not None:
            return None
        try:
            slots = self.ledger.take_slots(self.key, self.per_minute, count)
        except LedgerError as exc:  # each call takes its own, as without a reservation
            log.warning("could not reserve rate-limit slots", extra={"error": exc.message})
            return None
        if not slots.granted:
            return None
        reserved = Reserved(slots.second, slots.granted)
        if not serves(slots.second, self.clock.time()):  # their second is over already
            self.release(reserved)
            return None
        return reserved

    def release(self, reserved: Reserved) -> None:
        left = reserved.unused()
        if left:
            self._give_back_many(reserved.second, left)

    def _give_back_many(self, second: int, count: int) -> None:
        try:
            self.ledger.give_back_slots(self.key, second, count)
        except LedgerError as exc:  # they count a minute too long: the safe side
            log.warning("could not give rate-limit slots back", extra={"error": exc.message})
