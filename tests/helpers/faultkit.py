"""What the fault tests share: realistic events, Segment's retry loop, the bridge in-process
against the real fake Dub, and the two checks every scenario ends with (each conversion
RECORDED exactly once, no ledger row left pending or in flight)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask

from bridge.core.outcomes import ACTIVE, State
from bridge.core.settings import Settings
from bridge.ledger.sqlite import SQLiteLedger
from tests.helpers.fakedub import FakeDub, Key, lead_key, sale_key

REPO = Path(__file__).resolve().parents[2]
MAPPINGS = REPO / "mappings"
SALE_MAPPING, LEAD_MAPPING = "order-sale", "signup-lead"
FIGURES: dict[str, dict[str, Any]] = {}


# --- events ----------------------------------------------------------------------------------


def just_now() -> str:
    """Segment's timestamp for an event sent now: the bridge refuses events days old."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def sale_event(n: int | str, *, user: str | None = None, click: bool = True) -> dict[str, Any]:
    traits: dict[str, Any] = {"email": f"buyer{n}@example.com", "name": f"Buyer {n}"}
    if click:
        traits["clickId"] = f"cl_s{n}"
    return {
        "type": "track",
        "event": "Order Completed",
        "messageId": f"msg-sale-{n}",
        "userId": user or f"user-s{n}",
        "timestamp": just_now(),
        "context": {"traits": traits},
        "properties": {"order_id": f"ORD-{n}", "revenue": 19.99, "currency": "USD"},
    }


def lead_event(n: int | str, *, user: str | None = None) -> dict[str, Any]:
    return {
        "type": "track",
        "event": "Sign Up",
        "messageId": f"msg-lead-{n}",
        "userId": user or f"user-l{n}",
        "timestamp": just_now(),
        "context": {"traits": {"email": f"lead{n}@example.com", "clickId": f"cl_l{n}"}},
        "properties": {"plan": "pro"},
    }


def key_for(event: dict[str, Any]) -> Key:
    """The conversion an event should become at Dub (how the fake counts it)."""
    if event["event"] == "Order Completed":
        return sale_key(event["properties"]["order_id"])
    return lead_key(str(event["userId"]), event["event"])


def mixed_batch(count: int, prefix: str) -> list[dict[str, Any]]:
    """``count`` events, alternating sales (distinct order ids) and leads, distinct users."""
    return [
        sale_event(f"{prefix}{i}") if i % 2 == 0 else lead_event(f"{prefix}{i}")
        for i in range(count)
    ]


# --- the bridge under test -------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def outcomes(self) -> list[str]:
        """Every (event, mapping) outcome the answer counts, sorted (the answer keeps no order)."""
        counts = self.body.get("counts", {})
        return sorted(outcome for outcome, n in counts.items() for _ in range(n))


def retryable(status: int) -> bool:
    """What Segment retries: 408, 429, 5xx (and timeouts, which a caller maps to 599)."""
    return status in (408, 429) or status >= 500


def segment_retry(
    post: Callable[[], Answer], *, attempts: int = 15, pause: float = 0.05
) -> list[Answer]:
    """Re-send the same request while the answer says retry, at most ``attempts`` times."""
    answers = [post()]
    while retryable(answers[-1].status) and len(answers) < attempts:
        time.sleep(pause)
        answers.append(post())
    return answers


@dataclass
class Bridge:
    app: Flask
    db: Path
    _ledger: SQLiteLedger | None = None  # the test's own connection, closed at teardown

    def post(self, events: Any) -> Answer:
        body = events if isinstance(events, dict) else {"batch": events}
        client = self.app.test_client()
        started = time.monotonic()
        response = client.post("/segment", data=json.dumps(body), content_type="application/json")
        return Answer(
            response.status_code,
            json.loads(response.data),
            dict(response.headers),
            time.monotonic() - started,
        )

    def deliver(self, events: Any, **kwargs: Any) -> list[Answer]:
        return segment_retry(lambda: self.post(events), **kwargs)

    def ledger(self) -> SQLiteLedger:
        if self._ledger is None:
            self._ledger = SQLiteLedger(self.db)
        return self._ledger

    def close(self) -> None:
        # Waits for background calls, before the fake goes away.
        self.app.extensions["bridge"].close()
        if self._ledger is not None:
            self._ledger.close()

    def state(self, message_id: str, mapping: str) -> str | None:
        row = self.ledger().get(message_id, mapping)
        return None if row is None else row.state


def fault_settings(url: str, db: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "deadline_seconds": 2.0,
        "log_level": "WARNING",
        **overrides,
    }
    return Settings.from_env(
        {},
        dub_api_key="test-key",
        dub_api_url=url,
        db_path=db,
        mappings_dir=MAPPINGS,
        reload_seconds=0,
        **values,
    )


def assert_settled(db: Path) -> dict[State, int]:
    """No row of the ledger is left pending or in flight; returns the counts per state."""
    ledger = SQLiteLedger(db)
    try:
        counts = ledger.counts()
        stuck = {state: n for state, n in counts.items() if state in ACTIVE}
        assert not stuck, f"rows left in a non-final state: {stuck}"
        return counts
    finally:
        ledger.close()


def assert_recorded_once(fake_dub: FakeDub, keys: set[Key]) -> None:
    """Each expected conversion RECORDED exactly once by the fake, and nothing else."""
    recorded = fake_dub.recorded_by_key()
    lost = sorted(k for k in keys if recorded[k] == 0)
    doubled = {k: n for k, n in recorded.items() if n > 1}
    extra = sorted(k for k in recorded if k not in keys)
    assert not lost, f"conversions never recorded: {lost}"
    assert not doubled, f"conversions recorded more than once: {doubled}"
    assert not extra, f"conversions nobody sent: {extra}"


# --- 1. Dub down --------------------------------------------------------------------------------
