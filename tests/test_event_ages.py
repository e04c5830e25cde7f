"""Every event has an age: read from any of Segment's times, in any form Segment writes, and
an event whose age cannot be read is never sent (it could be replayed for ever)."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import responses
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from bridge.cli import main
from bridge.core.items import Item
from bridge.core.outcomes import Outcome
from bridge.mapping.batch import (
    CLOCK_SKEW,
    NO_TIME,
    TIME_KEYS,
    event_time,
    plan_all,
    read_time,
)
from bridge.mapping.engine import Engine
from bridge.mapping.events import SegmentEvent, well_formed
from tests.conftest import DUB, order, sale_ok
from tests.helpers.fakes import ManualClock

DAY = 86400.0
EIGHT_DAYS = 8 * DAY
NOW = 1_800_000_000.0


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def rfc2822(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000")


def untimed(message_id: str, **times: Any) -> dict[str, Any]:
    """An order with exactly these time fields (conftest's `order` carries a timestamp)."""
    event = order(message_id)
    del event["timestamp"]
    return event | times


def post(client: Any, events: list[dict[str, Any]]) -> dict[str, Any]:
    answer = client.post("/segment", data=json.dumps(events), content_type="application/json")
    assert answer.status_code == 200, answer.get_data(as_text=True)
    data: dict[str, Any] = answer.get_json()
    return data


def sent(dub: responses.RequestsMock) -> list[str]:
    return [json.loads(call.request.body)["invoiceId"] for call in dub.calls]


def test_events_replayed_eight_days_later_are_refused_whatever_time_they_carry(
    client: Any, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """Only originalTimestamp or sentAt, epoch seconds or milliseconds, a future receivedAt
    beside an old timestamp: each event 8 days old is `too_old`, none is sent."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    then = clock.time() - EIGHT_DAYS
    events = [
        untimed("original", originalTimestamp=iso(then)),
        untimed("sent-at", sentAt=iso(then)),
        untimed("epoch-ms", timestamp=int(then * 1000)),
        untimed("epoch-s", receivedAt=then),
        untimed("future-received", receivedAt=iso(clock.time() + 365 * DAY), timestamp=iso(then)),
        untimed("unreadable-first", receivedAt="yesterday", originalTimestamp=iso(then)),
    ]
    answer = post(client, events)
    assert answer["counts"] == {"too_old": len(events)}
    assert len(dub.calls) == 0


def test_an_event_without_a_readable_time_is_invalid_never_sent(
    client: Any, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """No time, RFC 2822 text, numeric text, NaN: `invalid`, saying its age cannot be checked."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    now = clock.time()
    events = [
        untimed("none"),
        untimed("rfc2822", receivedAt=rfc2822(now), timestamp=rfc2822(now)),
        untimed("numeric-text", timestamp=str(int(now))),
        untimed("boolean", sentAt=True),
    ]
    answer = post(client, events)
    assert answer["counts"] == {"invalid": len(events)}
    for result in answer["results"]:
        assert result["reason"] == NO_TIME
    assert len(dub.calls) == 0


def test_fresh_and_future_times_in_any_form_are_sent(
    client: Any, dub: responses.RequestsMock, clock: ManualClock
) -> None:
    """A fresh time in any key and form, or a time in the future (counts as now): delivered."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    now = clock.time()
    events = [
        untimed("ms", timestamp=int(now * 1000)),
        untimed("seconds-float", receivedAt=now - 60.5),
        untimed("sent-at", sentAt=iso(now - DAY)),
        untimed("future", timestamp=iso(now + 30 * DAY)),
        untimed("skewed", receivedAt=iso(now + CLOCK_SKEW / 2), timestamp=iso(now - EIGHT_DAYS)),
    ]
    answer = post(client, events)
    assert answer["counts"] == {"delivered": len(events)}
    assert sorted(sent(dub)) == sorted(f"o-{e['messageId']}" for e in events)  # sent in parallel


def test_a_timeless_event_no_mapping_takes_is_still_skipped(
    client: Any, dub: responses.RequestsMock
) -> None:
    """Nothing would be sent for a page view: without a time it is skipped, not a dead letter."""
    page = {"type": "page", "messageId": "p-1", "userId": "u"}
    assert post(client, [page])["counts"] == {"skipped": 1}


def test_an_event_the_signature_does_not_vouch_for_stays_unverified_without_a_time(
    engine: Engine,
) -> None:
    """A forged event without a time is `unverified` (kept apart from redrive), not `invalid`."""
    items = [Item(order("real")), Item(untimed("forged"))]
    results, _ = plan_all(
        engine, items, not_before=NOW - 6 * DAY, now=NOW, unvouched={1: "not vouched for"}
    )
    assert [r.outcome for r in results] == [Outcome.READY, Outcome.UNVERIFIED]


def test_replay_send_refuses_a_timeless_event_unless_accept_old(
    tmp_path: Path, dub: responses.RequestsMock
) -> None:
    """`replay --send` finds an event without a time invalid, as the webhook does;
    `--accept-old` (a deliberate backfill) sends it."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    path = tmp_path / "timeless.ndjson"
    path.write_text(json.dumps(untimed("timeless")))
    env = {"DUB_API_KEY": "k", "DUB_API_URL": DUB, "BRIDGE_DB": str(tmp_path / "l.db")}
    refused = CliRunner().invoke(main, ["replay", "--send", str(path)], env=env)
    line = json.loads(refused.stdout)
    assert line["outcome"] == "invalid" and NO_TIME in line["errors"] and len(dub.calls) == 0
    accepted = CliRunner().invoke(main, ["replay", "--send", "--accept-old", str(path)], env=env)
    assert json.loads(accepted.stdout)["outcome"] == "delivered" and len(dub.calls) == 1


def test_a_numeric_timestamp_is_a_well_formed_event() -> None:
    """Epoch milliseconds in `timestamp` are a time Segment's senders write, not a malformed event."""
    event = untimed("ms", timestamp=1_800_000_000_000)
    assert well_formed(event, "ms")
    SegmentEvent.model_validate(event)


# --- reading one time -------------------------------------------------------------------------------

OFFSETS = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(lambda m: timedelta(minutes=m))


@given(
    moment=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offset=OFFSETS,
)
def test_iso_8601_text_reads_as_the_moment_it_names(moment: datetime, offset: timedelta) -> None:
    """ISO 8601 with any offset (none: UTC), any precision, reads as its epoch seconds."""
    aware = moment.replace(tzinfo=timezone(offset))
    assert read_time(aware.isoformat()) == aware.timestamp()
    assert read_time(moment.isoformat()) == moment.replace(tzinfo=UTC).timestamp()


@given(st.integers(0, 253402300799))
def test_epoch_numbers_read_as_seconds_or_milliseconds(seconds: int) -> None:
    """A number is epoch seconds, or milliseconds when past 1e11 (as seconds: after 5138)."""
    if seconds < 1e11:
        assert read_time(seconds) == seconds
        assert read_time(float(seconds)) == seconds
    if seconds * 1000 >= 1e11:
        assert read_time(seconds * 1000) == seconds


JSON_ANY = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.sampled_from(["Thu, 03 Dec 2026 10:00:00 +0000", "now", "1800000000", "", "2026-13-01"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)


@given(JSON_ANY)
def test_any_value_reads_as_a_time_in_range_or_as_nothing(value: Any) -> None:
    """Whatever a time field holds, reading it never raises: a finite time of years 1-9999, or None."""
    when = read_time(value)
    assert when is None or (
        math.isfinite(when) and -62135596800 - DAY <= when <= 253402300799 + DAY
    )


# --- which time counts ------------------------------------------------------------------------------

TIMES = st.one_of(
    st.floats(NOW - 30 * DAY, NOW + 30 * DAY).map(iso),
    st.integers(int(NOW - 30 * DAY), int(NOW + 30 * DAY)),
    st.sampled_from(["", "later", "Thu, 03 Dec 2026 10:00:00 +0000", None]),
)


@given(st.fixed_dictionaries({}, optional={key: TIMES for key in TIME_KEYS}))
def test_the_age_counts_from_the_first_believable_time_and_never_from_the_future(
    times: dict[str, Any],
) -> None:
    """The first readable time in the order receivedAt, timestamp, originalTimestamp, sentAt
    that is not past the clock's skew, capped at now; all further ahead: now; none: None."""
    event = untimed("m", **times)
    readable = [read_time(times.get(key)) for key in TIME_KEYS]
    readable_times = [t for t in readable if t is not None]
    believable = [t for t in readable_times if t <= NOW + CLOCK_SKEW]
    got = event_time(event, NOW)
    if believable:
        assert got == min(believable[0], NOW)
    elif readable_times:
        assert got == NOW
    else:
        assert got is None
    assert got is None or got <= NOW
