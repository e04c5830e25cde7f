"""A background job run every N seconds in a daemon thread, that can be stopped cleanly.

Used for mapping reloads and ledger maintenance. ``stop`` wakes the thread at
once and waits for it; a job that raises is logged and the poller goes on.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("bridge.core.poller")


class Poller:
    def __init__(self, name: str, interval: float, job: Callable[[], object]):
        self.name = name
        self.interval = interval
        self.job = job
        self.ticks = 0  # jobs run so far
        self._stop = threading.Event()
        self._ticked = threading.Condition()
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wait_ticks(self, count: int, timeout: float) -> bool:
        """Wait until the job ran ``count`` times in all; False when it did not in time."""
        with self._ticked:
            return self._ticked.wait_for(lambda: self.ticks >= count, timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.job()
            except Exception:  # the poller must outlive any surprise
                log.exception("background job failed", extra={"job": self.name})
            with self._ticked:
                self.ticks += 1
                self._ticked.notify_all()
