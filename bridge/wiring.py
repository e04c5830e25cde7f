"""The one place the object graph is built from settings, for the web app and the CLI alike."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from .clock import SYSTEM, Clock
from .delivery.deliverer import Deliverer
from .delivery.ratelimit import SlidingWindow
from .dub.client import DubClient
from .errors import ConfigError
from .ledger import Access, Ledger, open_ledger
from .ledger.maintenance import Maintenance
from .settings import Settings
from .store import MappingStore

log = logging.getLogger("bridge.wiring")


def require_api_key(settings: Settings) -> str:
    if settings.api_key is None:
        raise ConfigError(
            "DUB_API_KEY is not set: the bridge will not run without sending. "
            "Set it to a Dub API key (or use `bridge replay --dry-run`, which needs none)."
        )
    return settings.api_key


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
    # With several workers, each takes its share of Dub's per-key limit.
    share = max(1, settings.rate_limit_per_minute // settings.workers)
    return Deliverer(
        client,
        ledger,
        limiter=SlidingWindow(share, clock=clock),
        clock=clock,
        concurrency=settings.concurrency,
        max_attempts=settings.max_attempts,
    )


@dataclass
class Service:
    """Everything one web worker runs; ``close`` stops its threads and frees what it holds."""

    settings: Settings
    store: MappingStore
    deliverer: Deliverer
    ledger: Ledger | None
    maintenance: Maintenance | None
    _closed: bool = field(default=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def start(self) -> None:
        self.store.start()
        if self.maintenance is not None:
            self.maintenance.start()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.store.stop()
        if self.maintenance is not None:
            self.maintenance.stop()
        self.deliverer.close()
        if self.ledger is not None:
            self.ledger.close()
        log.info("service closed: background threads stopped, ledger and Dub pool closed")


def build_service(settings: Settings, *, clock: Clock = SYSTEM) -> Service:
    """The webhook's object graph; raises ``ConfigError`` naming what is wrong."""
    require_api_key(settings)
    store = MappingStore(settings.mappings_dir, poll_seconds=settings.reload_seconds, clock=clock)
    ledger = open_ledger(settings, Access.CREATE, clock=clock, background=True)
    maintenance = (
        Maintenance(ledger, retention_days=settings.retention_days, clock=clock)
        if ledger is not None
        else None
    )
    return Service(
        settings, store, build_deliverer(settings, ledger, clock=clock), ledger, maintenance
    )
