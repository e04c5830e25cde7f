"""When the request a thread handles began to arrive, as the gunicorn worker saw it.

The worker (``worker.py``) reads each request whole in its event loop, then hands it to
a thread, where it may wait its turn: the request's time budget starts at its arrival,
not at that turn. Standard library only: the worker imports it in gunicorn's master.
"""

from __future__ import annotations

import threading

handling = threading.local()  # ``arrived``: set by the worker around each request


def arrival() -> float | None:
    """When the request this thread handles began to arrive (``time.monotonic``); None
    outside the worker (the test client, another server)."""
    at: float | None = getattr(handling, "arrived", None)
    return at
