"""What the webhook answers: counts of every outcome, and only the results that need a person.

Segment's Actions engine reads an answer through a cloned response stream that stalls
once the body passes about 16 KiB, and then counts the batch as failed and retries it
for hours. So an answer never grows with the batch: ``counts`` (outcome -> number of
event and mapping results), the results that need attention (each with its messageId,
mapping, outcome and a short reason), cut so the body stays under ``MAX_ANSWER_BYTES``,
and ``omitted``, the number left out. The full detail is in the logs, the ledger and
``bridge replay``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..core.jsoncodec import dumps
from ..core.masking import mask_emails
from ..core.outcomes import QUIET, Outcome
from ..core.results import Result

MAX_ANSWER_BYTES = 8 * 1024
REASON_MAX = 160
# Room kept for the envelope ({"error": ..., "omitted": N}) around the listed results.
_ENVELOPE = 512


def needs_attention(result: Result) -> bool:
    return result.outcome not in QUIET


def short_reason(result: Result) -> str:
    """One line saying why: the reason, else the first error, else Dub's error message."""
    text = result.reason or (result.errors[0] if result.errors else "")
    if not text and result.dub_error:
        text = str(result.dub_error.get("message") or result.dub_error.get("code") or "")
    if result.status is not None and result.outcome in (Outcome.REJECTED, Outcome.FAILED):
        text = f"Dub answered {result.status}: {text}" if text else f"Dub answered {result.status}"
    text = mask_emails(" ".join(text.split()))
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3] + "..."


def summarize(results: Iterable[Result], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The answer body: ``extra`` (an error envelope), counts, attention results, omitted."""
    counts: Counter[Outcome] = Counter()
    listed: list[dict[str, Any]] = []
    size = _ENVELOPE + (len(dumps(extra)) if extra else 0)
    omitted = 0
    for result in results:
        counts[result.outcome] += 1
        if not needs_attention(result):
            continue
        entry = {
            "messageId": result.message_id,
            "mapping": result.mapping,
            "outcome": result.outcome,
            "reason": short_reason(result),
        }
        cost = len(dumps(entry)) + 1
        if omitted or size + cost > MAX_ANSWER_BYTES:
            omitted += 1  # keep the input order: once one is left out, so are the rest
            continue
        size += cost
        listed.append(entry)
    body: dict[str, Any] = dict(extra or {})
    # Plain text keys: orjson writes them directly (an enum key sends it to the slow path).
    body["counts"] = {outcome.value: number for outcome, number in counts.items()}
    body["results"] = listed
    body["omitted"] = omitted
    return body
