"""The part that sends: planned results in, Dub calls out, within a time budget.

Per customer, calls go out in order (leads before sales, as the engine planned
them); different customers go out concurrently over a bounded pool. Each call is
claimed in the ledger first, retried on transient failures while the budget
allows, and recorded with its outcome. Whatever is not settled when the budget
ends is reported ``failed``/``pending`` so that Segment retries the request; a
call already under way finishes in the background and records its answer.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import Any

from .dub_client import DubAnswer, DubClient
from .ledger import DEAD, Claim, ClaimRequest, Ledger
from .logs import log_result
from .results import RETRY, Result

log = logging.getLogger("bridge.delivery")

# A sale answered 404 "Lead event not found" this soon after the customer's lead
# means Dub is still ingesting the lead: try again later instead of giving up.
LEAD_INGEST_SECONDS = 600.0
MIN_CALL_SECONDS = 0.25  # no point starting a call with less budget than this
BACKOFF_BASE = 0.1
BACKOFF_CAP = 2.0


class RateLimiter:
    """A sliding one-minute window, shaped like Dub's per-key limit."""

    def __init__(self, per_minute: int, window: float = 60.0):
        self.per_minute = max(1, per_minute)
        self.window = window
        self._sent: deque[float] = deque()
        self._lock = threading.Lock()

    def acquire(self, deadline: float) -> bool:
        """Take one slot, waiting for one until ``deadline``; False when none frees up in time."""
        while True:
            with self._lock:
                now = time.monotonic()
                while self._sent and self._sent[0] <= now - self.window:
                    self._sent.popleft()
                if len(self._sent) < self.per_minute:
                    self._sent.append(now)
                    return True
                free_at = self._sent[0] + self.window
            if free_at > deadline:
                return False
            time.sleep(min(free_at - time.monotonic(), 0.5) if free_at > time.monotonic() else 0)


class Deliverer:
    """Sends ready results to Dub; owns the worker pool, shares the client and the ledger."""

    def __init__(
        self,
        client: DubClient,
        ledger: Ledger | None,
        *,
        concurrency: int = 8,
        rate_limit_per_minute: int = 1200,
        max_attempts: int = 20,
    ):
        self.client = client
        self.ledger = ledger
        self.max_attempts = max_attempts
        self.limiter = RateLimiter(rate_limit_per_minute)
        self.pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="dub")

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self.client.close()

    def deliver(
        self,
        results: list[Result],
        budget: float,
        payloads: dict[str, Any] | None = None,
        redrive: bool = False,
    ) -> list[Result]:
        """Send every ready result; answer within ``budget`` seconds whatever Dub does."""
        start = time.monotonic()
        deadline = start + budget
        self._record_invalid(results, payloads or {})
        groups: dict[Any, list[int]] = {}
        for index, result in enumerate(results):
            if result.outcome == "ready":
                key = result.customer if result.customer is not None else ("event", index)
                groups.setdefault(key, []).append(index)
        if not groups:
            return results
        claims = self._claim_all(results, [i for m in groups.values() for i in m], redrive)
        longest_call = self.client.connect_timeout + self.client.read_timeout
        if len(groups) == 1 and deadline - time.monotonic() >= longest_call:
            # One customer: send from this thread, saving the hand-off to the pool. Every
            # call starts only if it can end (timeouts included) before the deadline.
            (members,) = groups.values()
            self._send_group(
                [(results[i], claims.get(i)) for i in members],
                deadline,
                payloads or {},
                guard=longest_call,
            )
            return results
        futures: dict[Future[None], list[int]] = {
            self.pool.submit(
                self._send_group,
                [(results[i], claims.get(i)) for i in members],
                deadline,
                payloads or {},
            ): members
            for members in groups.values()
        }
        done, not_done = wait(futures, timeout=max(0.0, deadline - time.monotonic()))
        final = list(results)
        for future in not_done:
            for i in futures[future]:
                # The thread keeps going and the ledger gets its answer; this request must not wait.
                if results[i].outcome == "ready":
                    final[i] = replace(
                        results[i],
                        outcome="pending",
                        errors=list(results[i].errors),
                        reason="still in flight when the time budget ran out",
                    )
        for future in done:
            future.result()  # surface a bug in _send_group rather than hide it
        return final

    def _claim_all(
        self, results: list[Result], ready: list[int], redrive: bool
    ) -> dict[int, Claim]:
        """Claim every ready result in one ledger transaction, before any call goes out."""
        if self.ledger is None:
            return {}
        wanted = [
            ClaimRequest(
                results[i].message_id or "",
                results[i].mapping or "",
                results[i].action or "",
                results[i].event,
                results[i].customer,
                results[i].body,
            )
            for i in ready
        ]
        return dict(zip(ready, self.ledger.claim_many(wanted, redrive=redrive), strict=True))

    def _release(self, result: Result, claim: Claim | None) -> None:
        """Give back a claim that was not used, so Segment's retry can take it at once."""
        if self.ledger is not None and claim is not None and claim.granted:
            self.ledger.finish(
                result.message_id or "", result.mapping or "", claim.state or "pending"
            )

    def _record_invalid(self, results: Iterable[Result], payloads: dict[str, Any]) -> None:
        if self.ledger is None:
            return
        for result in results:
            if result.outcome == "invalid" and result.message_id and result.mapping:
                self.ledger.record(
                    result.message_id,
                    result.mapping,
                    "invalid",
                    action=result.action,
                    event=result.event,
                    errors=result.errors,
                    payload=payloads.get(result.message_id),
                )

    def _send_group(
        self,
        group: list[tuple[Result, Claim | None]],
        deadline: float,
        payloads: dict[str, Any],
        guard: float = MIN_CALL_SECONDS,
    ) -> None:
        """Send one customer's calls in order; a call starts only with ``guard`` s left."""
        lead_unsettled = False
        for result, claim in group:
            if lead_unsettled:
                # Dub answers a sale for a customer it does not know yet with sale: null and
                # records nothing (a final not_recorded): wait for the lead, sent first on retry.
                result.finish(
                    "pending",
                    reason="not sent: this customer's lead is not settled; Segment will retry",
                )
                self._release(result, claim)
                continue
            if deadline - time.monotonic() < guard:
                result.finish(
                    "pending", reason="not sent: the time budget ran out; Segment will retry"
                )
                self._release(result, claim)
                continue
            started = time.monotonic()
            try:
                self._send_one(
                    result, claim, deadline, payloads.get(result.message_id or ""), guard
                )
            except Exception:  # a bug must not strand the claim or the rest of the group
                log.exception(
                    "delivery failed unexpectedly", extra={"messageId": result.message_id}
                )
                result.finish("failed", reason="internal error while sending")
                self._release(result, claim)
            result.elapsed_ms = round((time.monotonic() - started) * 1000, 1)
            log_result(result)
            lead_unsettled = result.action == "lead" and result.outcome in RETRY

    def _send_one(
        self, result: Result, claim: Claim | None, deadline: float, payload: Any, guard: float
    ) -> None:
        assert result.body is not None
        assert result.request_path
        assert result.action
        ledger, key = self.ledger, (result.message_id or "", result.mapping or "")
        tainted = False
        if ledger is not None:
            assert claim is not None
            if not claim.granted:
                if claim.state == "in_flight":
                    result.finish("pending", reason="another request is sending this event now")
                else:
                    result.finish("duplicate", reason=f"already handled: {claim.state}")
                return
            tainted = claim.tainted
            if claim.attempts >= self.max_attempts:
                ledger.finish(
                    *key,
                    "failed",
                    error={"code": "gave_up", "message": "too many attempts"},
                    payload=payload,
                )
                result.finish(
                    "gave_up", reason=f"gave up after {claim.attempts} attempts (dead letter)"
                )
                return
        answer, attempts, reached = self._call_with_retries(result, deadline, guard)
        result.attempts = attempts
        result.status = answer.status
        result.dub_error = answer.error if answer.outcome in ("rejected", "failed") else None
        # A lead that may have reached Dub and failed there (5xx, timeout, lost connection)
        # may have set Dub's de-duplication marker: a later link: null proves nothing.
        tainted = tainted or (result.action == "lead" and reached)
        state = answer.outcome
        reason = None
        if state == "deduplicated" and tainted:
            # Dub's lead trap: a retry after a 5xx is swallowed; was the first one recorded?
            state, reason = "uncertain", "Dub answered link: null after an earlier failed attempt"
        elif result.action == "sale" and ledger is not None and result.customer:
            state, reason = self._sale_before_lead(state, answer, ledger, result.customer)
        if state == "failed":
            reason = reason or "Dub did not take it now; Segment will retry"
            result.retry_after = answer.retry_after
        elif state == "not_recorded":
            reason = "Dub answered sale: null: nothing was recorded"
        elif state == "deduplicated":
            reason = "Dub answered link: null: already tracked for this customer and event"
        if ledger is not None:
            ledger_state = "pending" if state == "failed" else state
            ledger.finish(
                *key,
                ledger_state,
                status=answer.status,
                error=answer.error,
                payload=payload if ledger_state in DEAD else None,
                tainted=tainted,
            )
        result.finish(state, reason=reason)

    @staticmethod
    def _sale_before_lead(
        state: str, answer: DubAnswer, ledger: Ledger, customer: str
    ) -> tuple[str, str | None]:
        """A sale that raced its customer's lead is retried later, not given up.

        404 "Lead event not found" soon after the lead: Dub is still ingesting it.
        ``customer: null`` while the lead is unsettled here: the lead has not reached Dub.
        """
        if state == "rejected" and answer.status == 404:
            if ledger.lead_status(customer, LEAD_INGEST_SECONDS) is not None:
                return "failed", "Dub has not finished ingesting this customer's lead; retry later"
        elif (
            state == "not_recorded"
            and isinstance(answer.body, dict)
            and answer.body.get("customer") is None
            and ledger.lead_status(customer, LEAD_INGEST_SECONDS) == "unsettled"
        ):
            return "failed", "this customer's lead has not reached Dub yet; retry later"
        return state, None

    def _call_with_retries(
        self, result: Result, deadline: float, guard: float
    ) -> tuple[DubAnswer, int, bool]:
        """(last answer, attempts, whether a failed attempt may have reached Dub)."""
        attempt = 0
        reached = False
        while True:
            attempt += 1
            if not self.limiter.acquire(deadline - guard):
                return (
                    DubAnswer(
                        "failed",
                        error={
                            "code": "rate_limited_locally",
                            "message": "client-side rate limit is full",
                        },
                    ),
                    attempt - 1,
                    reached,
                )
            # Not cut at the budget: the webhook answers at the deadline anyway (deliver()
            # stops waiting), and a call cut short here would be sent again by Segment's retry
            # (a second sale; a recorded lead turned `uncertain`). It runs to the read timeout.
            answer = self.client.send(
                result.action or "", result.request_path or "", result.body or {}
            )
            if not answer.transient:
                return answer, attempt, reached
            reached = reached or answer.may_have_reached
            # A lead's 5xx may have set Dub's de-duplication marker; a retry is still worth it
            # (the marker is not always written), and a swallowed retry is caught by the caller.
            wait_for = answer.retry_after
            if wait_for is None:
                wait_for = random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt))  # noqa: S311
            if time.monotonic() + wait_for + guard > deadline:
                return answer, attempt, reached
            time.sleep(wait_for)
