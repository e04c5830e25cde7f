"""The one place the object graph is built from settings, for the web app and the CLI alike."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass, field

from ..core.clock import SYSTEM, Clock
from ..core.errors import ConfigError
from ..core.poller import Poller
from ..core.settings import Settings
from ..delivery.deliverer import Deliverer
from ..delivery.outbox import Outbox
from ..delivery.ratelimit import RateLimiter, SharedWindow, SlidingWindow
from ..dub.client import DubClient
from ..ledger import Access, Ledger, open_ledger, retention_of
from ..ledger.maintenance import Maintenance
from .store import MappingStore

# The sender looks for due rows this often when the queue was empty (or Dub's limit full).
OUTBOX_POLL_SECONDS = 1.0

log = logging.getLogger("bridge.service.wiring")


def require_api_key(settings: Settings) -> str:
    if settings.api_key is None:
        raise ConfigError(
            "DUB_API_KEY is not set: the bridge will not run without sending. "
            "Set it to a Dub API key (or use `bridge replay --dry-run`, which needs none)."
        )
    return settings.api_key


def require_signing(settings: Settings) -> None:
    """Unsigned requests are accepted only when that was chosen; with only keyed ways in
    (BRIDGE_WRITE_KEYS, BRIDGE_RUDDERSTACK_TOKEN), POST /segment is off instead."""
    if settings.unsigned and not settings.allow_unsigned and not settings.keyed_ways_in:
        raise ConfigError(
            "SEGMENT_SHARED_SECRET is not set: anyone who can reach the service could post"
            " conversions. Set it to the Webhooks destination's shared secret, or set"
            " BRIDGE_ALLOW_UNSIGNED=1 to accept unsigned requests on purpose (or only"
            " BRIDGE_WRITE_KEYS / BRIDGE_RUDDERSTACK_TOKEN, for the SDKs and RudderStack)."
        )


WEBHOOK_OFF = (
    "SEGMENT_SHARED_SECRET is not set: POST /segment is off (404); the SDK API and"
    " RudderStack take events with their own keys"
)
UNSIGNED_WARNING = (
    "SEGMENT_SHARED_SECRET is not set and BRIDGE_ALLOW_UNSIGNED=1: requests are accepted"
    " without a signature"
)


def require_ledger_choice(settings: Settings) -> None:
    """The Procfile's process does not fall back to a SQLite file of its own."""
    if not settings.ledger_chosen:
        raise ConfigError(
            "neither DATABASE_URL nor BRIDGE_DB is set: each instance would keep its own"
            " SQLite ledger (no exactly-once across instances, no shared rate limit). Set"
            " DATABASE_URL for several instances, or BRIDGE_DB to a file on a persistent disk"
            " for a single one."
        )


def build_deliverer(
    settings: Settings, ledger: Ledger | None, *, clock: Clock = SYSTEM
) -> Deliverer:
    client = DubClient(
        settings.dub_api_url,
        require_api_key(settings),
        pool_size=settings.concurrency,
        connect_timeout=settings.connect_timeout,
        read_timeout=settings.read_timeout,
    )
    return Deliverer(
        client,
        ledger,
        limiter=rate_limiter(settings, ledger, clock=clock),
        clock=clock,
        concurrency=settings.concurrency,
        max_attempts=settings.max_attempts,
        outbox_after=settings.outbox_after_hours * 3600,
        queue_when_limited=settings.queue_when_limited and ledger is not None,
    )


def rate_limiter(
    settings: Settings, ledger: Ledger | None, *, clock: Clock = SYSTEM
) -> RateLimiter:
    """Dub's per-key limit, shared by every process through the ledger; without a ledger
    (benchmarks) each worker takes its share."""
    if ledger is None:
        share = max(1, settings.rate_limit_per_minute // settings.workers)
        return SlidingWindow(share, clock=clock)
    # The window is kept under a hash of the API key, never the key itself.
    key = hashlib.sha256(require_api_key(settings).encode()).hexdigest()[:16]
    return SharedWindow(
        ledger,
        f"dub:{key}",
        settings.rate_limit_per_minute,
        per_second=settings.rate_limit_per_second,
        clock=clock,
    )


@dataclass
class Service:
    """Everything one web worker runs; ``close`` stops its threads and frees what it holds."""

    settings: Settings
    store: MappingStore
    deliverer: Deliverer
    ledger: Ledger | None
    maintenance: Maintenance | None
    outbox: Outbox | None
    jobs: list[Poller] = field(default_factory=list)
    draining: bool = False  # SIGTERM came: finish what is under way, take nothing new
    _closed: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        self.jobs = [self.store.poller]
        if self.maintenance is not None:
            self.jobs.append(self.maintenance.poller)
        if self.outbox is not None:
            self.jobs.append(Poller("outbox", OUTBOX_POLL_SECONDS, self.outbox.drain))

    def start(self) -> None:
        for job in self.jobs:
            job.start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.outbox is not None:
            self.outbox.stop()  # its calls under way finish; the rest is the next sender's
        for job in self.jobs:
            job.stop()
        self.deliverer.close()
        if self.ledger is not None:
            self.ledger.close()
        log.info("service closed: background threads stopped, ledger and Dub pool closed")


def build_service(settings: Settings, *, clock: Clock = SYSTEM) -> Service:
    """The webhook's object graph; raises ``ConfigError`` naming what is wrong."""
    require_api_key(settings)
    ledger = open_ledger(settings, Access.CREATE, clock=clock, background=True)
    try:
        store = MappingStore(
            settings.mappings_dir,
            source=settings.mappings_source,
            ledger=ledger,
            poll_seconds=settings.reload_seconds,
            clock=clock,
        )
    except BaseException:
        if ledger is not None:
            ledger.close()
        raise
    deliverer = build_deliverer(settings, ledger, clock=clock)
    if ledger is None:
        return Service(settings, store, deliverer, None, None, None)
    maintenance = Maintenance(ledger, retention_of(settings), clock=clock)
    outbox = Outbox(
        ledger, deliverer, after_seconds=settings.outbox_after_hours * 3600, clock=clock
    )
    return Service(settings, store, deliverer, ledger, maintenance, outbox)
