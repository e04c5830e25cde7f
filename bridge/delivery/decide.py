"""What a Dub answer means: pure, no I/O, one table of cases.

``classify`` reads the plain meaning of an answer for an endpoint; ``decide``
adds what the bridge knows beyond the answer: Dub's lead trap (a lead whose
earlier attempt may have reached Dub, answered ``link: null``, may never have
been recorded) and a sale that raced its customer's lead.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..core.outcomes import DEAD, FINAL, STATE_AFTER, Outcome, State
from ..dub.client import DubAnswer, Failure
from ..dub.endpoints import Endpoint
from ..ledger.base import LeadStatus

# Dub answers these when a retry may succeed; every other 4xx is final.
TRANSIENT_STATUSES = frozenset({408, 429})
# Failures after the request went out: Dub may have acted on it.
_SENT = frozenset({Failure.TIMEOUT, Failure.CONNECTION_LOST, Failure.REQUEST_ERROR})


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    reason: str | None = None


def classify(endpoint: Endpoint, answer: DubAnswer) -> Outcome:
    """The plain meaning: delivered (or Dub's own null answers), rejected, or failed."""
    status = answer.status
    if status is None:
        return Outcome.FAILED
    if 200 <= status < 300:
        if isinstance(answer.body, dict):
            return endpoint.settle(answer.body)
        return Outcome.DELIVERED  # a 2xx without a JSON object: Dub took it
    if status in TRANSIENT_STATUSES or status >= 500:
        return Outcome.FAILED
    return Outcome.REJECTED


def may_have_reached(answer: DubAnswer) -> bool:
    """Whether Dub may have acted on a call that failed (5xx, timeout, lost connection)."""
    return (answer.status or 0) >= 500 or answer.failure in _SENT


def decide(
    endpoint: Endpoint,
    answer: DubAnswer,
    *,
    tainted: bool,
    lead_status: Callable[[], LeadStatus | None],
) -> Decision:
    """The outcome of the last answer to a call, with the reason a person would want.

    ``tainted``: an earlier attempt of this lead may have reached Dub. ``lead_status``
    tells, when asked, whether this sale's customer has a lead settled or unsettled.
    """
    outcome = classify(endpoint, answer)
    if outcome is Outcome.DEDUPLICATED and tainted:
        # Dub's lead trap: a retry after a 5xx is swallowed; was the first one recorded?
        return Decision(
            Outcome.UNCERTAIN, "Dub answered link: null after an earlier failed attempt"
        )
    if answer.status == 404 and endpoint.action in _NOT_A_CUSTOMER:
        return _NOT_A_CUSTOMER[endpoint.action]
    if endpoint.action == "sale":
        if outcome is Outcome.REJECTED and answer.status == 404 and lead_status() is not None:
            # 404 "Lead event not found" soon after the lead: Dub is still ingesting it.
            return Decision(
                Outcome.FAILED, "Dub has not finished ingesting this customer's lead; retry later"
            )
        if (
            outcome is Outcome.NOT_RECORDED
            and isinstance(answer.body, dict)
            and answer.body.get("customer") is None
            and lead_status() is LeadStatus.UNSETTLED
        ):
            return Decision(
                Outcome.FAILED, "this customer's lead has not reached Dub yet; retry later"
            )
    return Decision(outcome, _REASONS.get(outcome))


def refused(state: State | None) -> Decision:
    """What a claim the ledger refused means, whatever moment its state was read at.

    Only a final row is a duplicate. A dead letter is answered as what it is (only a
    redrive sends it again, so a Segment retry cannot help it). Anything else (pending,
    in flight, a row gone) is not settled, whoever holds it: Segment must retry, or a
    holder that fails after this read would leave the conversion unsent behind a 200.
    """
    if state in FINAL:
        return Decision(Outcome.DUPLICATE, f"already handled: {state}")
    if state in DEAD:
        return Decision(_DEAD[state], f"already a dead letter ({state}): only a redrive sends it")
    return Decision(
        Outcome.PENDING,
        f"not settled ({state or 'no row'}): another request is sending this event or will;"
        " Segment will retry",
    )


# Most identified users never came through a link: Dub knows only referred customers.
_NOT_A_CUSTOMER = {
    "customer_update": Decision(Outcome.SKIPPED, "not a Dub customer"),
    "customer_delete": Decision(Outcome.DELIVERED, "not a Dub customer: nothing to delete"),
}

# A dead letter's state, read back as the outcome that left it there.
_DEAD = {state: outcome for outcome, state in STATE_AFTER.items() if state in DEAD}

_REASONS = {
    Outcome.FAILED: "Dub did not take it now; Segment will retry",
    Outcome.NOT_RECORDED: "Dub answered sale: null: nothing was recorded",
    Outcome.DEDUPLICATED: "Dub answered link: null: already tracked for this customer and event",
}
