"""Logs: one JSON line per event and mapping; no API key, no plain email, ever."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import pytest
import responses
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.core.logs import JSONFormatter, configure
from bridge.core.masking import mask_emails, mask_value
from tests.conftest import DUB, body_of, order, sale_ok, signup


def capture() -> tuple[io.StringIO, logging.Handler]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter())
    logging.getLogger("bridge").addHandler(handler)
    return stream, handler


def test_one_line_per_event_without_secrets(client: Any, dub: responses.RequestsMock) -> None:
    """Each event and mapping logs one JSON line with its outcome; the key and emails never show."""
    dub.post(f"{DUB}/track/sale", json=sale_ok())
    stream, handler = capture()
    try:
        event = order() | {"context": {"traits": {"email": "jane.doe@example.com"}}}
        bad = signup("s-bad", userId=None)
        bad["context"]["traits"]["email"] = "jane.doe@example.com"
        client.post(
            "/segment",
            data=body_of([event, bad, {"type": "page", "messageId": "p"}]),
            headers={"Content-Type": "application/json"},
        )
    finally:
        logging.getLogger("bridge").removeHandler(handler)
    text = stream.getvalue()
    assert "dub_test_key_123" not in text and "jane.doe@example.com" not in text
    lines = [json.loads(line) for line in text.splitlines()]
    events = [line for line in lines if line["msg"] == "event"]
    assert sorted((e["messageId"], e["outcome"]) for e in events) == [
        ("m-1", "delivered"),
        ("p", "skipped"),
        ("s-bad", "invalid"),
    ]
    delivered = next(e for e in events if e["outcome"] == "delivered")
    assert delivered["mapping"] == "order-sale" and delivered["dubStatus"] == 200
    assert isinstance(delivered["ms"], float)


def test_masking() -> None:
    """Emails are masked in free text and in values, well-formed or not."""
    assert mask_emails("to jane.doe@example.com now") == "to j***@example.com now"
    assert mask_value("customerEmail", "jane@@bad") == "'j***@bad'"
    assert mask_value("customerEmail", "nobody") == "'n***'"
    assert len(mask_value("metadata", "x" * 500)) <= 80


@pytest.mark.slow  # a real clock: the call outlives the real deadline
def test_a_call_finishing_after_the_deadline_is_logged_once_at_its_final_outcome(
    tmp_path: Any, dub: responses.RequestsMock
) -> None:
    """Answered `pending` to Segment, the late call is logged once: `delivered`, never `pending`."""
    import threading

    from bridge.web.app import create_app
    from tests.conftest import make_settings

    release = threading.Event()

    def slow(_: Any) -> tuple[int, dict[str, str], str]:
        assert release.wait(60)
        return 200, {}, json.dumps(sale_ok())

    dub.add_callback(responses.POST, f"{DUB}/track/sale", callback=slow)
    app = create_app(make_settings(tmp_path, deadline_seconds=0.5))
    stream, handler = capture()
    try:
        response = app.test_client().post(
            "/segment", data=body_of(order()), headers={"Content-Type": "application/json"}
        )
        assert response.get_json()["counts"] == {"pending": 1}
        release.set()
        app.extensions["bridge"].close()  # waits for the call still under way
    finally:
        logging.getLogger("bridge").removeHandler(handler)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    lines = [e for e in events if e["msg"] == "event" and e["messageId"] == "m-1"]
    assert [line["outcome"] for line in lines] == ["delivered"]


def test_the_event_line_goes_through_logger_log() -> None:
    """The event line is an ordinary record from Logger.log: handlers and filters see it,
    with its fields in ``extra`` and the level its outcome calls for."""
    from bridge.core import eventlog
    from bridge.core.outcomes import Outcome
    from bridge.core.results import Result

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    keep.addFilter(lambda record: record.__dict__["fields"]["messageId"] != "dropped")
    logger = logging.getLogger("bridge.events")
    logger.addHandler(keep)
    try:
        base = Result("m-1", "Order Completed", "order-sale", "sale", Outcome.DELIVERED)
        eventlog.log_result(base)
        eventlog.log_result(base.replace(message_id="m-2", outcome=Outcome.REJECTED))
        eventlog.log_result(base.replace(message_id="dropped"))
    finally:
        logger.removeHandler(keep)
    assert [r.__dict__["fields"]["messageId"] for r in seen] == ["m-1", "m-2"]
    assert [r.levelno for r in seen] == [logging.INFO, logging.WARNING]
    assert all(r.getMessage() == "event" and r.funcName == "log_result" for r in seen)
    assert all(JSONFormatter().format(r) for r in seen)


def test_configuring_the_logs_changes_no_global_logging_setting() -> None:
    """configure() adds the bridge's handlers and levels, and leaves logging's own global
    switches (caller lookup, threads, processes) as the application set them."""
    switches = (logging.logThreads, logging.logMultiprocessing, logging.logProcesses)
    source = logging._srcfile  # type: ignore[attr-defined]
    configure("INFO")
    assert (logging.logThreads, logging.logMultiprocessing, logging.logProcesses) == switches
    assert logging._srcfile == source  # type: ignore[attr-defined]


def test_an_applications_record_factory_makes_the_event_records(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a record factory or a logger class of the application's own, every event line's
    record is made by it (the template would freeze what it computes per record)."""
    from bridge.core import eventlog
    from bridge.core.results import Result

    made: list[int] = []

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = logging.LogRecord(*args, **kwargs)
        made.append(len(made))
        record.seq = len(made)
        return record

    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    class Numbered(logging.Logger):
        def makeRecord(self, *args: Any, **kwargs: Any) -> logging.LogRecord:
            record = super().makeRecord(*args, **kwargs)
            record.seq = -len(seen) - 1
            return record

    keep = Keep()
    logger = logging.getLogger("bridge.events")
    logger.addHandler(keep)
    logging.setLogRecordFactory(factory)
    try:
        for n in range(3):
            eventlog.log_result(Result(f"m-{n}", "Order Completed", "order-sale", "sale"))
        logging.setLogRecordFactory(logging.LogRecord)
        monkeypatch.setattr(logger, "__class__", Numbered)  # a logger class of its own
        for n in range(2):
            eventlog.log_result(Result(f"n-{n}", "Order Completed", "order-sale", "sale"))
    finally:
        logging.setLogRecordFactory(logging.LogRecord)
        logger.removeHandler(keep)
    assert [getattr(r, "seq", None) for r in seen] == [1, 2, 3, -4, -5]


def test_stray_text_on_stderr_becomes_json_lines() -> None:
    """Text written around the logging becomes JSON lines (a printed traceback one line, its
    last line the message), and a log handler's JSON line passes unchanged."""
    import traceback

    from bridge.core.logs import StrayText

    raw = io.StringIO()
    stray = StrayText(raw)  # type: ignore[arg-type]
    stray.write('{"ts":"t","level":"info","msg":"already JSON"}\n')
    stray.write("cannot boot: ")
    stray.write("boom for jane.doe@example.com\n\n")
    try:
        raise ValueError("bad value")
    except ValueError:
        traceback.print_exc(file=stray)
    stray.write("left without a newline")
    stray.flush()
    lines = [json.loads(line) for line in raw.getvalue().splitlines()]
    assert lines[0] == {"ts": "t", "level": "info", "msg": "already JSON"}
    assert [(x["level"], x["logger"], x["msg"]) for x in lines[1:]] == [
        ("error", "stderr", "cannot boot: boom for j***@example.com"),
        ("error", "stderr", "ValueError: bad value"),
        ("error", "stderr", "left without a newline"),
    ]
    assert lines[2]["exc"].startswith("Traceback (most recent call last):\n")
    assert 'raise ValueError("bad value")' in lines[2]["exc"]


def test_an_uncaught_exception_is_one_json_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once stderr is guarded, an uncaught exception, in the main thread or another, is one
    JSON line at critical level with its traceback."""
    import sys
    import threading

    from bridge.core import logs

    raw = io.StringIO()
    monkeypatch.setattr(sys, "stderr", raw)
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    monkeypatch.setattr(threading, "excepthook", threading.excepthook)
    logs.guard_stderr()
    assert isinstance(sys.stderr, logs.StrayText) and sys.stderr.raw is raw
    try:
        raise KeyError("missing")
    except KeyError as exc:
        sys.excepthook(KeyError, exc, exc.__traceback__)
    thread = threading.Thread(target=lambda: 1 / 0, name="worker-thread")
    thread.start()
    thread.join()
    lines = [json.loads(line) for line in raw.getvalue().splitlines()]
    assert [(x["level"], x["logger"], x["msg"]) for x in lines] == [
        ("critical", "bridge.crash", "crashed: KeyError: 'missing'"),
        ("critical", "bridge.crash", "worker-thread crashed: ZeroDivisionError: division by zero"),
    ]
    assert all(x["exc"].startswith("Traceback (most recent call last):") for x in lines)


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)))
@example(["\x1f@", "0"])  # a control character's JSON escape beside an "@" stays an escape
@settings(max_examples=300, deadline=None)
def test_whatever_is_written_to_guarded_stderr_comes_out_as_json_lines(chunks: list[str]) -> None:
    """Any text, written in any pieces, comes out of the guard as JSON objects, one a line,
    and no plain line is lost (each non-blank one is a record's message, or inside one)."""
    from bridge.core.logs import StrayText

    raw = io.StringIO()
    stray = StrayText(raw)  # type: ignore[arg-type]
    for chunk in chunks:
        stray.write(chunk)
    stray.write("\n")  # the end of whatever was left open
    stray.write("end\n")  # ends a printed traceback left open
    # Lines end at "\n" only, as a log shipper reads them (U+0085 and U+2028 are text).
    out = [json.loads(line) for line in raw.getvalue().split("\n")[:-1]]
    assert all(isinstance(entry, dict) for entry in out)
    lines = "".join(chunks).split("\n")
    plain = not any(x.startswith(('{"', "Traceback (most recent")) or "@" in x for x in lines)
    if plain:  # no log line, traceback or email among them: each line is one record's msg
        assert [e["msg"] for e in out] == [x for x in lines if x.strip()] + ["end"]
