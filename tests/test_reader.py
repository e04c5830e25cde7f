"""Saved files are streamed, and give exactly the events that reading them whole gave.

``read_whole`` below is the reader as it was before streaming (the whole file in
memory, parsed at once, NDJSON when that failed), kept here as the reference: every
odd input must give the same items, values, notes and problems through the stream,
in big reads and in reads of a few bytes.
"""

from __future__ import annotations

import gzip
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.errors import NoEvents
from bridge.core.inputs import events_in, repair_note
from bridge.core.items import Item, Unreadable
from bridge.core.jsoncodec import JSONDecodeFailure, loads_repaired
from bridge.reader import layout, lines, read_file, records, scan

EVENT = (
    b'{"type":"track","event":"Order Completed","messageId":"m1","userId":"u1",'
    b'"properties":{"revenue":19.99,"currency":"usd"}}'
)
BIG = b"123456789012345678901234567890"


def read_whole(path: Path) -> Iterator[Item]:
    """The reader before streaming, verbatim: the reference the stream must equal."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        yield Item(Unreadable(str(path), f"cannot read: {exc}"))
        return
    if not raw.strip():
        yield Item(Unreadable(str(path), "the file is empty"))
        return
    try:
        data, repairs = loads_repaired(raw)
    except JSONDecodeFailure:
        for number, line in enumerate(raw.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                value, notes = loads_repaired(line)
            except JSONDecodeFailure as exc:
                yield Item(Unreadable(f"{path}:{number}", f"not JSON: {exc}"))
                continue
            yield Item(value, tuple(repair_note(r) for r in notes))
        return
    try:
        yield from events_in(data, repairs)
    except NoEvents as exc:
        yield Item(Unreadable(str(path), exc.message))


def seen(items: Iterator[Item]) -> list[tuple[Any, ...]]:
    """Items as comparable tuples: a value's repr keeps int vs float and big integers."""
    out: list[tuple[Any, ...]] = []
    for item in items:
        if isinstance(item.event, Unreadable):
            out.append(("unreadable", item.event.where, item.event.message))
        else:
            out.append(("event", repr(item.event), type(item.event).__name__, item.notes))
    return out


ODD_INPUTS = {
    "empty": b"",
    "blank": b"  \n\n\t\r\n",
    "form feed only": b"\x0c\n",
    "one event": EVENT,
    "one event, blank lines around": b"\n  \n " + EVENT + b"  \n\n",
    "ndjson": EVENT + b"\n" + EVENT + b"\n",
    "ndjson with a non-JSON line": EVENT + b"\nnot json\n\n" + EVENT,
    "ndjson with carriage returns": EVENT + b"\r" + EVENT + b"\r\nnope\r\n" + EVENT,
    "array": b"[" + EVENT + b"," + EVENT + b"]",
    "array, pretty": b"[\n  " + EVENT + b",\n  " + EVENT + b"\n]\n",
    "truncated array": b"[" + EVENT + b"," + EVENT[:30],
    "truncated array, pretty": b"[\n" + EVENT + b",\n" + EVENT + b"\n",
    "array with a trailing comma": b"[" + EVENT + b",]",
    "array of mismatched brackets": b'[{"a":[1}]]',
    "array, then a line": b"[" + EVENT + b"]\n" + EVENT,
    "arrays as lines": b"[1,2]\n[3]\n",
    "empty array": b"[]",
    "batch": b'{"sentAt":"x","batch":['
    + EVENT
    + b","
    + EVENT
    + b'],"context":{"a":[1,{"b":"]"}]}}',
    "batch, pretty": b'{\n "batch": [\n' + EVENT + b"\n ]\n}\n",
    "batch twice (the last counts)": b'{"batch":['
    + EVENT
    + b'],"batch":['
    + EVENT
    + b","
    + EVENT
    + b"]}",
    "batch key escaped": b'{"b\\u0061tch":[' + EVENT + b"]}",
    "nested batch": b'{"batch":[{"batch":[' + EVENT + b"]}]}",
    "batch, then a line": b'{"batch":[' + EVENT + b"]}\n" + EVENT + b"\n",
    "empty batch": b'{"batch": []}',
    "batch not an array": b'{"batch": 5}',
    "object over lines": b'{\n "type": "track",\n "event": "Order Completed"\n}\n',
    "object split by a carriage return": b'{"a":\r1}',
    "two objects on a line": EVENT + EVENT,
    "a number": b"5",
    "numbers as lines": b"5\n6\n",
    "a string": b'"x"',
    "NaN": b"NaN",
    "NaN as lines": b"NaN\n1\n",
    "lone surrogate in a line": b'{"type":"track","event":"Sign Up","messageId":"s\\ud800"}\n'
    + EVENT,
    "lone surrogate and big integers in an array": b'[{"event":"a\\ud800","n":'
    + BIG
    + b'},{"n":'
    + BIG
    + b"}]",
    "big integers in an array": b'[{"n":' + BIG + b'},{"n":1.5},{"n":-0.0}]',
    "bad byte in a batch, surrogate around it": b'{"batch":[{"e":"a\xffb"},{"n":'
    + BIG
    + b'}],"ctx":"\\udc00"}',
    "bad byte in a line": b'{"e":"a\xffb"}\n{"e":1}',
    "NaN, infinity and big integers": b'[{"x":NaN},{"y":1e400},{"z":' + BIG + b"}]",
    "surrogate in keys": b'{"batch":[{"k\\ud800":1}],"\\ud801":2}',
    "byte order mark": b"\xef\xbb\xbf" + EVENT,
    "unterminated string": b'{"a": "b\n{"c":1}\n',
    "deep nesting": b"[" * 1100 + b"]" * 1100,
    "vertical tab before an array": b"\x0b[1]",
    "form feed after an array": b"[" + EVENT + b"]\n\x0c\n",
}


@pytest.fixture(
    params=[None, 1, 5, 64], ids=["1MiB reads", "1-byte reads", "5-byte reads", "64-byte reads"]
)
def reads(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads of every size: a boundary may fall anywhere in a value, a string or a line."""
    if request.param is not None:
        monkeypatch.setattr(scan, "BLOCK", request.param)
        monkeypatch.setattr(lines, "BLOCK", request.param)
        monkeypatch.setattr(layout, "GROUP", request.param * 3)


@pytest.mark.usefixtures("reads")
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
def test_streamed_files_give_what_reading_them_whole_gave(tmp_path: Path, gz: bool) -> None:
    """Every odd input gives the same items, values, notes and problems as the whole-file read."""
    for name, data in ODD_INPUTS.items():
        path = tmp_path / f"{name}.json{'.gz' if gz else ''}"
        path.write_bytes(gzip.compress(data) if gz else data)
        assert seen(read_file(path)) == seen(read_whole(path)), name


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=60, deadline=None)
@given(
    events=st.lists(json_values, max_size=6),
    form=st.sampled_from(["array", "batch", "ndjson", "pretty"]),
    cut=st.integers(min_value=0, max_value=400),
)
def test_any_document_or_its_cut_short_copy_reads_as_before(
    tmp_path_factory: pytest.TempPathFactory, events: list[Any], form: str, cut: int
) -> None:
    """Random JSON values as an array, a batch, NDJSON or pretty-printed, whole or cut
    anywhere, give the same items as the whole-file read."""
    if form == "ndjson":
        data = "\n".join(json.dumps(e) for e in events).encode()
    elif form == "pretty":
        data = json.dumps(events, indent=1).encode()
    else:
        data = json.dumps({"batch": events} if form == "batch" else events).encode()
    path = tmp_path_factory.mktemp("doc") / "events.json"
    for text in (data, data[: len(data) * cut // 400]):
        path.write_bytes(text)
        assert seen(read_file(path)) == seen(read_whole(path))


def test_a_damaged_gzip_gives_what_came_before_then_the_problem(tmp_path: Path) -> None:
    """A .gz cut part-way: the events before the damage, then one result naming the file."""
    packed = gzip.compress(b"\n".join([EVENT] * 20_000))
    path = tmp_path / "cut.ndjson.gz"
    path.write_bytes(packed[: len(packed) // 2])
    items = list(read_file(path))
    assert all(item.event["messageId"] == "m1" for item in items[:-1]) and len(items) > 1
    last = items[-1].event
    assert isinstance(last, Unreadable) and last.where == str(path)
    assert last.message.startswith("cannot read: Compressed file ended")


def test_a_line_past_the_limit_is_reported_and_the_rest_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A line longer than the limit is one problem naming file:line; later lines still run."""
    for module in (lines, scan, layout, records):
        monkeypatch.setattr(module, "MAX_EVENT_BYTES", 200)
    for module in (scan, lines):
        monkeypatch.setattr(module, "BLOCK", 16)
    path = tmp_path / "long.ndjson"
    path.write_bytes(EVENT + b"\n" + b'{"a":"' + b"x" * 300 + b'"}\n' + EVENT + b"\n")
    got = seen(read_file(path))
    assert [kind for kind, *_ in got] == ["event", "unreadable", "event"]
    assert got[1][1] == f"{path}:2" and "longer than" in got[1][2]


def test_the_reader_is_lazy_on_a_pipe(tmp_path: Path) -> None:
    """NDJSON from a pipe: the first event is given while the writer has not sent the rest."""
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    first_read, writer_done = threading.Event(), threading.Event()

    def write() -> None:
        with open(fifo, "wb", buffering=0) as pipe:
            pipe.write(EVENT + b"\n")
            first_read.wait(timeout=10)  # the rest is sent only once the first event is out
            pipe.write(EVENT.replace(b"m1", b"m2") + b"\n")
        writer_done.set()

    thread = threading.Thread(target=write)
    thread.start()
    items = read_file(fifo)
    first = next(items)
    assert not writer_done.is_set() and first.event["messageId"] == "m1"
    first_read.set()
    assert [item.event["messageId"] for item in items] == ["m2"]
    thread.join(timeout=10)


def test_a_document_from_a_pipe_is_checked_then_streamed(tmp_path: Path) -> None:
    """An array from a pipe (read once) is kept aside while checked, then streamed from there."""
    fifo = tmp_path / "array.fifo"
    os.mkfifo(fifo)
    data = b"[" + b",".join([EVENT] * 3000) + b"]"

    def write() -> None:
        with open(fifo, "wb") as pipe:
            pipe.write(data)

    thread = threading.Thread(target=write)
    thread.start()
    items = list(read_file(fifo))
    thread.join(timeout=10)
    assert len(items) == 3000 and all(item.event["messageId"] == "m1" for item in items)


def test_repaired_text_around_a_batch_notes_no_event() -> None:
    """A lone surrogate in a batch's envelope (sentAt, context) is no event's warning; one
    inside an event is that event's (the webhook and the reader share this)."""
    body = b'{"sentAt":"\\ud800","context":["\\ud801"],"batch":[{"a":"\\ud802"},{"b":1}]}'
    data, repairs = loads_repaired(body)
    items = events_in(data, repairs)
    assert [len(item.notes) for item in items] == [1, 0]
    assert items[0].notes[0].startswith("a: invalid text")
