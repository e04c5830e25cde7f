"""``bridge replay --dry-run --jobs N``: planning on N processes, output in input order.

Reading a file (finding its lines and events) is cheap and must go in order, so the
parent does it, and writes. Parsing and planning are the costly part: they run on
chunks of raw records (about ``CHUNK_BYTES`` of input each) in worker processes, each
of which builds the engine once, and send back the chunk's output lines already
serialized plus a ``Tally`` for the summary. The parent hands out chunks and takes
the results back oldest first, with at most ``IN_FLIGHT_PER_JOB`` chunks per worker
outstanding, so memory stays flat whatever the input's size.

``--jobs 1`` runs the same ``plan_chunk`` in this process: output, summary and exit
code are the same whatever N. A small input (one chunk) never starts a worker. A
worker that dies (killed, out of memory) or fails ends the replay with one clear
error; the lines written before it are complete, in order. Ctrl-C stops the parent;
workers ignore it and end once their current chunk is done.
"""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import BridgeError
from ..core.jsoncodec import dumps
from ..core.outcomes import Outcome
from ..core.results import Result
from ..mapping.batch import plan_all
from ..mapping.engine import Engine
from ..reader import WAIT, Record, Wait, decode, weight
from ..service.mapping_files import load_directory
from .summary import Tally

CHUNK_BYTES = 1 << 20  # a chunk of input (about 800 Segment events) handed on at once
IN_FLIGHT_PER_JOB = 2  # chunks outstanding per worker: one being planned, one waiting


@dataclass(frozen=True, slots=True)
class Done:
    """A chunk planned: its replay lines (JSON, one per line) and what the summary needs."""

    output: bytes
    tally: Tally


class WorkerFailed(BridgeError):
    """A worker process died or raised: the replay stops, with what was written so far."""

    code = "worker_failed"


def plan_chunk(engine: Engine, records: list[Record], accept_dub_source: bool = False) -> Done:
    """Parse, plan and serialize one chunk, as a dry run: nothing is sent.
    ``accept_dub_source``: BRIDGE_ACCEPT_DUB_SOURCE, as the webhook and ``--send`` read it."""
    items = [item for record in records for item in decode(record)]
    planned, _ = plan_all(engine, items, accept_dub_source=accept_dub_source)
    results = [_dry(result) for result in planned]
    lines = [dumps(result.to_line()) for result in results]
    lines.append(b"")
    return Done(b"\n".join(lines), Tally.of(results, len(items)))


def _dry(result: Result) -> Result:
    return result.finish(Outcome.DRY_RUN) if result.outcome is Outcome.READY else result


def chunks(records: Iterable[Record | Wait], size: int) -> Iterator[list[Record] | Wait]:
    """Records grouped by about ``size`` bytes of input; a pause of the input cuts one short."""
    chunk: list[Record] = []
    held = 0
    for record in records:
        if isinstance(record, Wait):
            if chunk:
                yield chunk
                chunk, held = [], 0
            yield WAIT
            continue
        chunk.append(record)
        held += weight(record)
        if held >= size:
            yield chunk
            chunk, held = [], 0
    if chunk:
        yield chunk


def dry_run(
    engine: Engine,
    records: Iterable[Record | Wait],
    jobs: int,
    mappings_dir: Path,
    emit: Callable[[Done], None],
    *,
    accept_dub_source: bool = False,
) -> None:
    """Plan every record; ``emit`` gets each chunk's result in input order."""
    pieces = chunks(records, CHUNK_BYTES)
    for piece in pieces:
        if isinstance(piece, Wait):
            continue
        # The first chunk is planned here: an input of one chunk never starts a worker.
        emit(plan_chunk(engine, piece, accept_dub_source))
        if jobs > 1:
            _on_workers(engine, pieces, jobs, mappings_dir, emit, accept_dub_source)
            return


def _on_workers(
    engine: Engine,
    pieces: Iterator[list[Record] | Wait],
    jobs: int,
    mappings_dir: Path,
    emit: Callable[[Done], None],
    accept_dub_source: bool,
) -> None:
    global _engine
    _engine = engine  # a forked worker inherits it; a spawned one loads the mappings
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    pool = ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_start, initargs=(str(mappings_dir),)
    )
    pending: deque[Future[Done]] = deque()
    try:
        for piece in pieces:
            if isinstance(piece, Wait):  # the input pauses: write all that is planned
                while pending:
                    emit(_result(pending.popleft()))
                continue
            if len(pending) >= jobs * IN_FLIGHT_PER_JOB:
                emit(_result(pending.popleft()))
            pending.append(pool.submit(_work, piece, accept_dub_source))
        while pending:
            emit(_result(pending.popleft()))
    finally:
        # Normally nothing is left; after an error or Ctrl-C, queued chunks are dropped and
        # the workers end once their current chunk is done.
        pool.shutdown(wait=not pending, cancel_futures=True)
        _engine = None


def _result(future: Future[Done]) -> Done:
    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise WorkerFailed(
            f"a replay worker process stopped unexpectedly (killed, or out of memory?): {exc}; "
            "the lines written so far are complete, the rest was not planned"
        ) from exc
    except Exception as exc:
        raise WorkerFailed(
            f"a replay worker failed: {type(exc).__name__}: {exc}; the lines written so far "
            "are complete, the rest was not planned"
        ) from exc


_engine: Engine | None = None


def _start(mappings_dir: str) -> None:
    """A worker's start: Ctrl-C is the parent's to handle; the engine is built once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    global _engine
    if _engine is None:  # spawned rather than forked: load the same mappings
        _engine = load_directory(Path(mappings_dir)).engine


def _work(records: list[Record], accept_dub_source: bool) -> Done:
    assert _engine is not None, "the worker's initializer builds the engine"
    return plan_chunk(_engine, records, accept_dub_source)
