"""The part that sends: planned results in, Dub calls out, within a time budget.

It combines three parts that each do one job: the ledger (claims and bookkeeping),
``decide`` (what an answer means) and ``RetryPolicy`` (when to try again). Per
customer, calls go out in order (leads before sales, as the engine planned them);
different customers go out concurrently over a bounded pool. Each (event,
mapping) is logged once, by whoever learns its final outcome: a call still under
way when the budget ends is answered ``pending`` to Segment, and logged by its
thread when it finishes.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote, urlencode

from ..core.clock import SYSTEM, Clock
from ..core.errors import LedgerError
from ..core.eventlog import log_result
from ..core.jsoncodec import dumps_str
from ..core.logs import SOURCE
from ..core.metrics import metrics
from ..core.outcomes import ACTIVE, DEAD, RETRY, STATE_AFTER, Outcome, State
from ..core.results import Result
from ..dub.client import DubAnswer, DubClient
from ..dub.endpoints import ENDPOINTS, Endpoint
from ..ledger.base import (
    Attempt,
    Claim,
    ClaimRequest,
    Finish,
    LeadStatus,
    Ledger,
    Row,
    Taken,
    erasure_note,
    is_erased,
)
from . import lifecycle
from .decide import Decision, classify, decide, may_have_reached, refused
from .handover import handed_to_outbox
from .ratelimit import RateLimiter, Reserved
from .repeats import repeats, settle
from .retry import MIN_CALL_SECONDS, RetryPolicy, parse_retry_after

log = logging.getLogger("bridge.delivery")

# A sale answered 404 "Lead event not found" this soon after the customer's lead
# means Dub is still ingesting the lead: try again later instead of giving up.
LEAD_INGEST_SECONDS = 600.0


def _group_key(result: Result, index: int) -> Any:
    """Calls of one group go out in order: one customer's, and one invoice's refunds (each
    starts from the amount the one before left)."""
    if result.customer is not None:
        return result.customer
    if result.action == "refund" and result.body is not None:
        return ("invoice", result.body.get("invoiceId"))
    return ("event", index)


def _none() -> LeadStatus | None:
    return None


@dataclass(frozen=True, slots=True)
class _Job:
    index: int
    result: Result
    claim: Claim | None


def _going() -> bool:
    return False


def _nothing() -> None:
    return None


@dataclass(frozen=True, slots=True)
class _Write:
    """A finish decided after a row's calls, written with the others of its request in one
    statement: what the result becomes if the ledger cannot record it (given the ledger's
    message), and what follows once it is recorded."""

    finish: Finish
    unwritten: Callable[[Result, str], Result]
    done: Callable[[], None] = _nothing


@dataclass(slots=True)
class _Entry:
    """One row's result in a group, and its finish until written."""

    job: _Job
    result: Result
    write: _Write | None = None
    written: bool = False  # its write was tried (with the others of the statement)
    failed: str | None = None  # the ledger's message, when the write failed
    resolved: bool = False  # ``result`` says what the write came to, hand-over included


class _Collect:
    """The entries of a request's groups, handed in as each group ends, so their finishes
    are written in one statement when the request answers; a group that ends after that
    writes its own (late, as its thread finishes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[_Entry] = []
        self._closed = False

    def hand(self, entries: list[_Entry]) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._entries.extend(entries)
            return True

    def close(self) -> list[_Entry]:
        with self._lock:
            self._closed = True
            return self._entries


@dataclass(frozen=True, slots=True)
class _Pass:
    """How one deliver() sends: its deadline, the time a call needs, the payloads, whether
    each row gets one call only (the outbox, whose own backoff spaces the tries), whether a
    row the rate limit cannot serve in time is queued for the outbox, and whether to stop
    taking the next row (the outbox's sender is stopping)."""

    deadline: float
    guard: float
    payloads: Mapping[str, Any]
    once: bool
    redrive: bool
    hand_over: bool = False
    queue: bool = False
    stopping: Callable[[], bool] = _going
    reserved: Reserved | None = None  # rate-limit slots taken at once for its calls


@dataclass(frozen=True, slots=True)
class _Calls:
    """What the calls of one result came to."""

    answer: DubAnswer
    attempts: int  # calls made
    reached: bool  # a failed call may have reached Dub
    # Dub's rate limit (the shared window, or Dub's 429 pause) is why no call (or no
    # further call) was made: the outbox may take the row.
    limited: bool = False
    tries: tuple[Attempt, ...] = ()  # each call and Dub's answer, for the ledger


class Deliverer:
    """Sends ready results to Dub; owns the worker pool, shares the client and the ledger."""

    def __init__(
        self,
        client: DubClient,
        ledger: Ledger | None,
        *,
        limiter: RateLimiter,
        policy: RetryPolicy | None = None,
        clock: Clock = SYSTEM,
        concurrency: int = 8,
        max_attempts: int = 20,
        outbox_after: float | None = None,
        queue_when_limited: bool = False,
    ):
        self.client = client
        self.ledger = ledger
        self.limiter = limiter
        self.policy = policy or RetryPolicy()
        self.clock = clock
        self.max_attempts = max_attempts
        # Rows first seen longer ago than this belong to the outbox, not to Segment's retry.
        self.outbox_after = outbox_after
        # An event Dub's rate limit cannot serve within the budget goes to the outbox's
        # queue (answered ``queued``), instead of back to Segment (BRIDGE_QUEUE_WHEN_LIMITED).
        self.queue_when_limited = queue_when_limited
        self.concurrency = concurrency
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dub")
        self._in_flight = 0
        self._counting = threading.Lock()

    @property
    def in_flight(self) -> int:
        """Calls to Dub under way now (a drain waits for them)."""
        return self._in_flight

    def _count(self, delta: int) -> None:
        with self._counting:
            self._in_flight += delta

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.limiter.drop_lease()  # before the ledger closes: the next worker may use them
        self.client.close()

    def deliver(
        self,
        results: Sequence[Result],
        budget: float,
        payloads: Mapping[str, Any] | None = None,
        *,
        redrive: bool = False,
        once: bool = False,
        hand_over: bool = False,
    ) -> list[Result]:
        """Send every ready result; answer within ``budget`` seconds whatever Dub does.

        ``once``: one call per result (the outbox's own backoff spaces the tries), instead
        of retrying within the budget; ``hand_over``: what the budget does not settle is the
        outbox's at once (``queued``). A result repeated in ``results`` (a body holding the
        same event twice) is sent once; its copies come to what the first came to."""
        copies = repeats(results)
        deadline = self.clock.monotonic() + budget
        pass_ = _Pass(
            deadline, 0.0, payloads or {}, once, redrive, hand_over=hand_over,
            queue=self.queue_when_limited,
        )  # fmt: skip
        final = self._deliver(results, budget, pass_, set(copies))
        return settle(final, copies)

    def send_taken(
        self, taken: Sequence[Taken], budget: float, *, stopping: Callable[[], bool] = _going
    ) -> list[Result]:
        """Send rows the outbox took (claimed already), one call each; one the rate limit
        cannot serve in time goes back to the queue. Once ``stopping`` says so, no further
        call starts: the rows not sent are given back, for the next sender."""
        results = [_ready(t.row) for t in taken]
        claims = {i: t.claim for i, t in enumerate(taken)}
        payloads = {t.row.message_id: t.row.payload for t in taken if t.row.payload is not None}
        deadline = self.clock.monotonic() + budget
        pass_ = _Pass(deadline, 0.0, payloads, True, False, queue=True, stopping=stopping)
        return self._deliver(results, budget, pass_, set(), claims)

    def _deliver(
        self, results: Sequence[Result], budget: float, how: _Pass, copies: set[int],
        taken: dict[int, Claim] | None = None,
    ) -> list[Result]:  # fmt: skip
        payloads, redrive = how.payloads, how.redrive
        final = list(results)
        groups: dict[Any, list[int]] = {}
        for index, result in enumerate(results):
            if index in copies:
                continue
            if result.outcome is Outcome.READY:
                key = _group_key(result, index)
                groups.setdefault(key, []).append(index)
            else:
                self._record_unsent(result, payloads)
                log_result(result)
        if not groups:
            return final
        ready = [i for m in groups.values() for i in m]
        # A claim must hold until its last call can no longer be running.
        lease = budget + self.client.longest_call + 1.0
        claims = self._claim_all(results, ready, redrive, lease) if taken is None else taken
        jobs = [
            [_Job(i, results[i], claims.get(i)) for i in members] for members in groups.values()
        ]
        # The rate-limit slots of its first calls, taken at once (one per row that may call):
        # as many as four rounds of the pool, which mostly start within the second they
        # count in; later calls, and retries, take their own, and slots whose second is over
        # go back at once.
        calls = sum(1 for i in ready if claims.get(i) is None or claims[i].granted)
        how = replace(how, reserved=self.limiter.reserve(min(calls, 4 * self.concurrency)))
        try:
            return self._send_all(jobs, how, final)
        finally:
            if how.reserved is not None:
                self.limiter.release(how.reserved)

    def _send_all(self, jobs: list[list[_Job]], how: _Pass, final: list[Result]) -> list[Result]:
        deadline = how.deadline
        longest = self.client.longest_call
        if len(jobs) == 1 and deadline - self.clock.monotonic() >= longest:
            # One customer: send from this thread, saving the hand-off to the pool. Every
            # call starts only if it can end (timeouts included) before the deadline.
            inline = replace(how, guard=longest)
            for entry in self._settle(self._send_group(jobs[0], inline), inline):
                final[entry.job.index] = entry.result
            return final
        pooled = replace(how, guard=MIN_CALL_SECONDS)
        collect = _Collect()
        # Each thread runs in a copy of this request's context: its log lines keep the
        # request id, also when they come after the answer.
        futures: dict[Future[None], list[_Job]] = {
            self.pool.submit(
                contextvars.copy_context().run, self._send_pooled, group, pooled, collect
            ): group
            for group in jobs
        }
        done, _ = self.clock.wait(futures, deadline - self.clock.monotonic())
        for future in done:
            future.result()  # a bug in _send_group surfaces here
        # Every group that ended has handed its entries in: their finishes, one statement.
        handed = self._settle(collect.close(), pooled)
        for entry in handed:
            final[entry.job.index] = entry.result
        answered = {entry.job.index for entry in handed}
        for group in jobs:
            # The thread keeps going and the ledger gets its answer; this request must not wait.
            for job in group:
                if job.index in answered:
                    continue
                queued = how.hand_over and job.claim is not None  # its thread hands it over
                final[job.index] = job.result.finish(
                    Outcome.QUEUED if queued else Outcome.PENDING,
                    reason="still in flight when the time budget ran out",
                )
        return final

    def _send_pooled(self, group: list[_Job], pass_: _Pass, collect: _Collect) -> None:
        """A group sent by a pool thread: its entries go to the request, or, when the
        request answered already, are written and logged here."""
        entries = self._send_group(group, pass_)
        if not collect.hand(entries):
            self._settle(entries, pass_)

    def _write(self, entries: Sequence[_Entry]) -> None:
        """Write the finishes of ``entries`` not tried yet, in one statement."""
        todo = [e for e in entries if e.write is not None and not e.written]
        if not todo or self.ledger is None:
            return
        for entry in todo:
            entry.written = True
        try:
            self.ledger.finish_many([e.write.finish for e in todo if e.write is not None])
        except LedgerError as exc:
            for entry in todo:
                entry.failed = exc.message

    def _resolve(self, entry: _Entry, pass_: _Pass) -> None:
        """Once its write was tried: what the row came to, and the outbox's hand-over."""
        if entry.resolved:
            return
        entry.resolved = True
        if entry.write is not None:
            if entry.failed is not None:
                entry.result = entry.write.unwritten(entry.result, entry.failed)
            else:
                entry.write.done()
        entry.result = handed_to_outbox(self, entry.result, entry.job.claim, now=pass_.hand_over)

    def _settle(self, entries: list[_Entry], pass_: _Pass) -> list[_Entry]:
        """Write what is left to write (one statement), then resolve and log each entry."""
        self._write(entries)
        for entry in entries:
            self._resolve(entry, pass_)
            log_result(entry.result)
        return entries

    # --- the ledger's part ------------------------------------------------------------------

    def _claim_all(
        self, results: Sequence[Result], ready: list[int], redrive: bool, lease: float
    ) -> dict[int, Claim]:
        """Claim every ready result in one ledger transaction, before any call goes out."""
        if self.ledger is None:
            return {}
        wanted = [
            ClaimRequest(
                *results[i].key,
                results[i].action or "",
                results[i].event,
                results[i].customer,
                results[i].body,
                SOURCE.get(),
                keep=ENDPOINTS[results[i].action or ""].keeps_body,
            )
            for i in ready
        ]
        granted = self.ledger.claim_many(wanted, redrive=redrive, lease=lease)
        return dict(zip(ready, granted, strict=True))

    def _record_unsent(self, result: Result, payloads: Mapping[str, Any]) -> None:
        """An invalid plan, or an event a signature did not vouch for, is noted (with its
        payload) as a dead letter, for redrive."""
        if self.ledger is None or result.outcome not in (Outcome.INVALID, Outcome.UNVERIFIED):
            return
        if result.mapping and result.message_id:
            self.ledger.record(
                *result.key,
                STATE_AFTER[result.outcome],
                action=result.action,
                event=result.event,
                errors=list(result.errors),
                payload=payloads.get(result.message_id),
                source=SOURCE.get(),
            )

    def _release(self, job: _Job, payload: Any) -> None:
        """Give back a claim that was not used, so Segment's retry can take it at once; the
        payload stays with the row, for redrive should it never be sent."""
        if self.ledger is not None and job.claim is not None and job.claim.granted:
            try:
                self.ledger.release(*job.result.key, payload=payload)
            except LedgerError as exc:  # the claim's lease ends by itself
                log.warning("could not give a claim back", extra={"error": exc.message})

    # --- sending ----------------------------------------------------------------------------

    def _send_group(self, group: list[_Job], pass_: _Pass) -> list[_Entry]:
        """Send one customer's calls in order; a call starts only with ``guard`` s left. The
        finishes wait to be written with the request's others (``_settle``), unless a read
        of the ledger in this group needs them first."""
        entries: list[_Entry] = []
        lead_unsettled = lead_queued = False

        def flush() -> None:  # the group's finishes so far, before the ledger is read
            self._write(entries)

        for job in group:
            payload = pass_.payloads.get(job.result.message_id or "")
            write: _Write | None = None
            if lead_queued:
                # The lead waits in the outbox's queue: the sale waits behind it, in the
                # queue too (the outbox sends no sale while its customer's lead is unsettled).
                result, write = self._queue(job, payload, "queued behind this customer's lead")
            elif lead_unsettled:
                # Dub answers a sale for a customer it does not know yet with sale: null and
                # records nothing (a final not_recorded): wait for the lead, sent first on retry.
                result = job.result.finish(
                    Outcome.PENDING,
                    reason="not sent: this customer's lead is not settled; Segment will retry",
                )
                self._release(job, payload)
            elif pass_.stopping():
                result = job.result.finish(
                    Outcome.PENDING, reason="not sent: this instance is stopping"
                )
                self._release(job, payload)
            elif pass_.deadline - self.clock.monotonic() < pass_.guard and pass_.queue:
                # No call was made: the burst outran the budget, not Dub. The queue takes it
                # (a request that also holds an event Dub failed is answered 503 all the same).
                result, write = self._queue(
                    job, payload, "not sent within the request's time budget"
                )
            elif pass_.deadline - self.clock.monotonic() < pass_.guard:
                result = job.result.finish(
                    Outcome.PENDING, reason="not sent: the time budget ran out; Segment will retry"
                )
                self._release(job, payload)
            else:
                started = self.clock.monotonic()
                self._count(1)
                try:
                    result, write = self._send_one(job, payload, pass_, flush)
                except Exception:  # a bug must not strand the claim or the rest of the group
                    log.exception(
                        "delivery failed unexpectedly", extra={"messageId": job.result.message_id}
                    )
                    result = job.result.finish(
                        Outcome.FAILED, reason="internal error while sending"
                    )
                    self._release(job, payload)
                finally:
                    self._count(-1)
                elapsed = round((self.clock.monotonic() - started) * 1000, 1)
                result = result.replace(elapsed_ms=elapsed)
            entry = _Entry(job, result, write)
            entries.append(entry)
            if result.outcome in RETRY and job.claim is not None:
                # Not settled: whether the outbox has it now decides what follows it, and the
                # hand-over reads the row as written.
                flush()
                self._resolve(entry, pass_)
            outcome = entry.result.outcome
            lead_unsettled = entry.result.action == "lead" and outcome in RETRY
            lead_queued = entry.result.action == "lead" and outcome is Outcome.QUEUED
        return entries

    def _queue(
        self, job: _Job, payload: Any, why: str, calls: _Calls | None = None
    ) -> tuple[Result, _Write | None]:
        """Give a claimed row to the outbox's queue, with its request and payload (and the
        calls made for it: a 429), written with the request's other finishes, before the
        answer as a claim is."""
        result = job.result
        if self.ledger is None or job.claim is None or not job.claim.granted:
            return result.finish(
                Outcome.PENDING, reason=f"not sent: {why}; Segment will retry"
            ), None
        made, status = (calls.attempts, calls.answer.status) if calls else (0, None)
        tries = calls.tries if calls else ()
        finish = Finish(*result.key, State.PENDING, calls=made, status=status, payload=payload,
                        queued=True, answers=tries)  # fmt: skip

        def unwritten(result: Result, message: str) -> Result:
            # Its lease ends, and Segment's retry finds it.
            log.error("could not queue an event", extra={"messageId": result.message_id,
                      "error": message})  # fmt: skip
            return result.finish(Outcome.PENDING, reason=f"not queued: {message}")

        def done() -> None:
            if job.claim is not None and not job.claim.queued:  # newly queued, not again
                metrics().queued.inc()

        queued = result.finish(
            Outcome.QUEUED, reason=f"{why}; the bridge's outbox sends it at Dub's rate"
        ).replace(attempts=made, status=status)
        return queued, _Write(finish, unwritten, done)

    def _send_one(
        self, job: _Job, payload: Any, pass_: _Pass, flush: Callable[[], None] = _nothing
    ) -> tuple[Result, _Write | None]:
        """One row's calls, and the finish to write for it (None: nothing to write).
        ``flush`` writes the group's finishes so far: called before the ledger is read."""
        result, claim, ledger = job.result, job.claim, self.ledger
        assert result.body is not None
        assert result.action is not None
        endpoint = ENDPOINTS[result.action]
        tainted = False
        made = 0  # calls made for this row before
        if ledger is not None:
            assert claim is not None
            if not claim.granted:
                if claim.queued and claim.state in ACTIVE:
                    # Another request or a sender holds it, and the outbox's queue has it
                    # whatever that holder comes to: nothing for Segment to retry.
                    return result.finish(
                        Outcome.QUEUED, reason="in the bridge's outbox queue, sent at Dub's rate"
                    ), None
                decision = refused(claim.state)
                return result.finish(decision.outcome, reason=decision.reason), None
            tainted = claim.tainted
            # A redrive is a person's order: it gets a round of calls of its own.
            made = 0 if pass_.redrive else claim.attempts
        if is_erased(result.body):
            # The outbox found a row of a user deleted since: nothing of theirs is sent again.
            decision = Decision(Outcome.SKIPPED, "its user was deleted: personal data erased")
            skipped = result.finish(decision.outcome, reason=decision.reason)
            if ledger is None:
                return skipped, None
            finish = Finish(*result.key, STATE_AFTER[decision.outcome])
            return skipped, _Write(finish, _not_recorded)
        if made >= self.max_attempts:
            # No call is left, but nothing is given up while Segment may still retry it:
            # the row stays unsettled (503), and housekeeping makes it a dead letter at the
            # outbox's age, for redrive.
            self._release(job, payload)
            return result.finish(
                Outcome.PENDING,
                reason=f"not sent: its {made} calls reached BRIDGE_MAX_ATTEMPTS; a dead letter"
                " at the outbox's age (BRIDGE_OUTBOX_MAX_AGE_HOURS)",
            ), None
        if endpoint.action == "refund":
            decision, calls = self._refund(result, claim, pass_, made, flush)
            if calls.limited and pass_.queue and ledger is not None:
                # Its GET or its PATCH found Dub's limit full: the outbox sends it at Dub's
                # rate (a PATCH pinned already is the one it sends).
                return self._queue(job, payload, "Dub's rate limit is full", calls)
        else:
            calls = self._call_with_retries(endpoint, result.body, pass_, made)
            if calls.limited and pass_.queue and ledger is not None:
                # Dub's limit, not Dub, is why it was not sent: the outbox sends it at Dub's
                # rate.
                return self._queue(job, payload, "Dub's rate limit is full", calls)
            # A lead that may have reached Dub and failed there (5xx, timeout, lost
            # connection) may have set Dub's de-duplication marker: a later link: null
            # proves nothing.
            tainted = tainted or (endpoint.action == "lead" and calls.reached)

            def lead_status() -> LeadStatus | None:
                flush()  # a lead of this customer sent just before, as recorded
                return self._lead_status(result)

            decision = decide(endpoint, calls.answer, tainted=tainted, lead_status=lead_status)
        answer = calls.answer
        outcome = decision.outcome
        reason = decision.reason
        # A sale Dub took but could not match yet, its customer's lead being unsettled (in
        # the queue, say): nothing was recorded, and the queue sends it after that lead.
        behind_lead = (
            pass_.queue
            and ledger is not None
            and endpoint.action != "refund"
            and outcome is Outcome.FAILED
            and classify(endpoint, answer) is not Outcome.FAILED
        )
        write: _Write | None = None
        if ledger is not None:
            state = STATE_AFTER[outcome]
            finish = Finish(
                *result.key,
                state,
                calls=calls.attempts,
                status=answer.status,
                error=answer.error if decision.outcome is not Outcome.INVALID else [reason],
                payload=payload if state in DEAD or state is State.PENDING else None,
                tainted=tainted,
                queued=behind_lead,
                answers=calls.tries,
            )
            if behind_lead:
                outcome = Outcome.QUEUED
                reason = f"{reason}; queued behind the lead, sent after it at Dub's rate"
            erase = endpoint.action == "customer_delete" and outcome is Outcome.DELIVERED

            def done() -> None:
                if behind_lead and (not claim or not claim.queued):
                    metrics().queued.inc()
                if erase:
                    self._erase(result)

            write = _Write(finish, _not_recorded, done)
        failed = outcome in (Outcome.REJECTED, Outcome.FAILED)
        errors = (reason,) if outcome is Outcome.INVALID and reason else ()
        return result.finish(outcome, reason=reason, errors=errors).replace(
            attempts=calls.attempts,
            status=answer.status,
            dub_error=answer.error if failed else None,
            retry_after=(
                parse_retry_after(answer.retry_after, self.clock.time())
                if outcome is Outcome.FAILED
                else None
            ),
        ), write

    def _refund(
        self, result: Result, claim: Claim | None, pass_: _Pass, made: int,
        flush: Callable[[], None] = _nothing,
    ) -> tuple[Decision, _Calls]:  # fmt: skip
        """GET the invoice's commission, then PATCH it as ``lifecycle`` plans: the PATCH is
        pinned to the row before it goes out, and a retry sends the pinned one."""
        assert result.body is not None
        endpoint = ENDPOINTS["refund"]
        kept = claim.body if claim is not None and isinstance(claim.body, dict) else None
        pin = kept.get(lifecycle.PIN) if kept is not None else None
        invoice = str(result.body["invoiceId"])
        found = self._call_with_retries(
            endpoint,
            result.body,
            pass_,
            made,
            ("GET", "/commissions", None, {"invoiceId": invoice}),
        )
        outcome = classify(endpoint, found.answer)
        if outcome is not Outcome.DELIVERED:
            return decide(endpoint, found.answer, tainted=False, lead_status=_none), found
        listed = found.answer.body
        if not isinstance(listed, list) or not all(isinstance(c, dict) for c in listed):
            return Decision(
                Outcome.FAILED, "Dub's answer to GET /commissions was not a list; retry later"
            ), found
        commission = next((c for c in listed if c.get("invoiceId") in (invoice, None)), None)
        flush()  # the sale or refund of this invoice sent just before, as recorded
        if isinstance(pin, dict):
            plan = lifecycle.replan(pin, commission)
        else:
            sent = self.ledger.invoice_rows(invoice) if self.ledger is not None else []
            plan = lifecycle.plan_refund(result.body, commission, sent, self.clock.time())
        if plan.patch is None or plan.commission is None:
            return Decision(plan.outcome, plan.reason), found
        if (
            self.ledger is not None
            and not isinstance(pin, dict)
            and not self.ledger.pin(*result.key, plan.pinned(result.body), invoice=invoice)
        ):
            # Another refund of this invoice is under way (its PATCH, worked out from the same
            # amount, may not be applied yet), or another worker took this one over.
            return Decision(
                Outcome.PENDING,
                f"another change of invoice {invoice!r}'s commission is not settled yet;"
                " Segment will retry",
            ), found
        path = f"/commissions/{quote(plan.commission, safe='')}"
        if pass_.deadline - self.clock.monotonic() < pass_.guard:
            return Decision(
                Outcome.PENDING, "found the commission; the time budget ran out before the PATCH"
            ), found
        changed = self._call_with_retries(
            endpoint, result.body, pass_, made + found.attempts, ("PATCH", path, plan.patch, None)
        )
        # A PATCH the rate limit kept back (the shared window full, or Dub's 429) is queued
        # as a GET would be: pinned already, it is the one the outbox sends.
        calls = _Calls(
            changed.answer, found.attempts + changed.attempts, found.reached or changed.reached,
            tries=found.tries + changed.tries,
            limited=changed.limited,
        )  # fmt: skip
        done = Decision(Outcome.REFUNDED, f"commission {plan.commission}: {plan.patch}")
        if classify(endpoint, changed.answer) is Outcome.DELIVERED:
            return done, calls
        if changed.answer.status == 400 and (changed.reached or isinstance(pin, dict)):
            # An earlier PATCH may have been applied, its answer lost: Dub now refuses the same
            # status again ("already in the refunded status"). Dub's commission tells.
            check = self._call_with_retries(
                endpoint, result.body, pass_, made + calls.attempts,
                ("GET", "/commissions", None, {"invoiceId": invoice}),
            )  # fmt: skip
            calls = _Calls(
                changed.answer, calls.attempts + check.attempts, calls.reached,
                tries=calls.tries + check.tries,
                limited=check.limited,  # the commission could not be read back: later
            )  # fmt: skip
            now = check.answer.body if isinstance(check.answer.body, list) else []
            again = next(
                (c for c in now if isinstance(c, dict) and c.get("id") == plan.commission), None
            )
            if lifecycle.replan(plan.pinned(result.body)[lifecycle.PIN], again).patch is None:
                return done, calls
        return decide(endpoint, changed.answer, tainted=False, lead_status=_none), calls

    def _erase(self, result: Result) -> None:
        """A deleted user's personal data leaves the ledger; ids, states and counts stay."""
        assert self.ledger is not None
        customer = result.customer
        if not customer:
            return
        try:
            self.ledger.erase(customer, erasure_note(result.message_id))
        except LedgerError as exc:
            log.error("could not erase a deleted user's data",
                      extra={"messageId": result.message_id, "error": exc.message})  # fmt: skip

    def _lead_status(self, result: Result) -> LeadStatus | None:
        if self.ledger is None or not result.customer:
            return None
        return self.ledger.lead_status(result.customer, LEAD_INGEST_SECONDS)

    def _call_with_retries(
        self,
        endpoint: Endpoint,
        body: dict[str, Any],
        pass_: _Pass,
        made: int,
        request: tuple[str, str, dict[str, Any] | None, dict[str, str] | None] | None = None,
    ) -> _Calls:
        """Call, and call again on transient failures while the budget allows and calls
        are left (``made`` were made before, of ``max_attempts``)."""
        deadline, guard = pass_.deadline, pass_.guard
        attempt = 0
        reached = False
        told_429 = False  # the last call was answered 429: Dub's limit, not Dub, failed it
        tries: list[Attempt] = []
        if request is None:
            method, path, _ = endpoint.request(body)
        else:
            method, path, params = request[0], request[1], request[3]
            path += "?" + urlencode(params) if params else ""
        while True:
            reserved = pass_.reserved
            slot = reserved.take(self.clock.time()) if reserved is not None else None
            if slot is None:
                if reserved is not None and reserved.left:  # too old: back to the window
                    self.limiter.release(reserved)
                slot = self.limiter.acquire(deadline - guard)
            if not slot.granted:
                # No call was made: no attempt is counted, and Segment's retry (told how long
                # the window or Dub's pause still holds) goes on.
                limited = DubAnswer(
                    error={
                        "code": "rate_limited_locally",
                        "message": "the Dub rate limit (shared by every worker) is full",
                    },
                    retry_after=f"{slot.wait:.3f}",
                )
                return _Calls(limited, attempt, reached, limited=attempt == 0 or told_429,
                              tries=tuple(tries))  # fmt: skip
            attempt += 1
            # Not cut at the budget: the webhook answers at the deadline anyway (deliver()
            # stops waiting), and a call cut short here would be sent again by Segment's retry
            # (a second sale; a recorded lead turned `uncertain`). It runs to the read timeout.
            if request is None:
                answer = self.client.send(endpoint, body)
            else:
                answer = self.client.call(endpoint.action, *request)
            self.limiter.after_call(slot, answer)  # one never sent does not count
            reached = reached or may_have_reached(answer)
            now = self.clock.time()
            told = parse_retry_after(answer.retry_after, now)
            # Dub's answer is kept only in the ledger: without one it is not worked out.
            kept = answer_text(answer) if self.ledger is not None else None
            tries.append(Attempt(now, method, path, answer.status, kept, told))
            if classify(endpoint, answer) is not Outcome.FAILED:
                return _Calls(answer, attempt, reached, tries=tuple(tries))
            # The backoff grows with every call this row has had, across Segment's retries.
            wait = self.policy.wait(made + attempt, told)
            told_429 = answer.status == 429
            if told_429 and pass_.reserved is not None:
                self.limiter.release(pass_.reserved)  # Dub's limit, whatever the window said
            if told_429 and wait > 0:
                # The limit is the key's, not this row's: every worker of every instance waits
                # (Dub's Retry-After, else the backoff); a wait for the limiter is no call.
                self.limiter.pause(wait)
            # A lead's 5xx may have set Dub's de-duplication marker; a retry is still worth it
            # (the marker is not always written), and a swallowed retry is caught by decide().
            spent = made + attempt >= self.max_attempts
            if (
                pass_.once
                or spent
                or not self.policy.fits(self.clock.monotonic(), wait, guard, deadline)
            ):
                return _Calls(answer, attempt, reached, limited=told_429 and not spent,
                              tries=tuple(tries))  # fmt: skip
            self.clock.sleep(wait)
            metrics().retries.inc()


# Keys of an answer whose values are never kept (none of Dub's answers has one today).
_SECRET_WORDS = ("token", "secret", "password", "apikey", "api_key", "authorization")


def answer_text(answer: DubAnswer) -> str | None:
    """Dub's answer as the ledger keeps it: its JSON body (else the error: Dub's envelope,
    or why no answer came), any value under a secret-looking key hidden; the ledger cuts
    it at ``ANSWER_LIMIT`` characters."""
    value = answer.body if answer.body is not None else answer.error
    if value is None:
        return None
    try:
        text = dumps_str(value)
        # A key holding a secret word holds it in the text too (JSON escapes no letter):
        # only an answer whose text has one is walked (none of Dub's answers has, today).
        lowered = text.lower()
        if not any(word in lowered for word in _SECRET_WORDS):
            return text
        return dumps_str(_hidden(value))
    except (ValueError, RecursionError) as exc:  # an answer no JSON can hold
        return dumps_str({"unstorable": str(exc)[:200]})


def _hidden(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: "[hidden]" if any(w in str(k).lower() for w in _SECRET_WORDS) else _hidden(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_hidden(v) for v in value]
    return value


def _not_recorded(result: Result, message: str) -> Result:
    """Dub has its answer but the ledger does not: Segment's retry finds the claim (until its
    lease ends) and then sends again, which Dub de-duplicates."""
    log.error("could not record a Dub answer", extra={"messageId": result.message_id,
              "outcome": result.outcome, "error": message})  # fmt: skip
    return result.finish(Outcome.PENDING, reason=f"sent, but not recorded: {message}")


def _ready(row: Row) -> Result:
    """A row taken from the outbox's queue, as a result ready to send from its stored request."""
    endpoint = ENDPOINTS[row.action or ""]
    return Result(
        message_id=row.message_id,
        event=row.event,
        mapping=row.mapping,
        action=endpoint.action,
        request_method=endpoint.method,
        request_path=endpoint.path,
        body=row.request_body,
    )
