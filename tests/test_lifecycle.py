"""The conversion lifecycle through the webhook, end to end against the real fake Dub: refunds
(GET the invoice's commission, then PATCH it), customer updates, customer deletions with
erasure from the ledger, and Dub's own Segment source kept out.

Each refund scenario ends with the commission at the right absolute amount and exactly one
PATCH that changed it, whatever Segment retried or Dub failed at.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from bridge.cli import main
from bridge.core.settings import Settings
from bridge.ledger.base import COUNTED_FOR
from bridge.web.app import create_app
from tests.helpers.fakedub import FakeDub, Hold, Reset, Status
from tests.helpers.fakes import ManualClock
from tests.helpers.faultkit import (
    SALE_MAPPING,
    Answer,
    Bridge,
    assert_settled,
    key_for,
    lead_event,
    sale_event,
)
from tests.lifecyclekit import (
    REFUND_MAPPING,
    UPDATE_MAPPING,
    delete_event,
    identify_event,
    lifecycle_mappings,
    refund_event,
)
from tests.test_cli import run


@pytest.fixture
def lbridge(fake_dub: FakeDub, tmp_path: Path) -> Iterator[Callable[..., Bridge]]:
    """A bridge pointed at the fake Dub, with the lifecycle mappings beside the shipped ones."""
    folder = lifecycle_mappings(tmp_path)
    made: list[Bridge] = []

    def make(**overrides: Any) -> Bridge:
        db = tmp_path / "ledger.sqlite3"
        settings = Settings.from_env(
            {}, dub_api_key="test-key", dub_api_url=fake_dub.url, db_path=db,
            mappings_dir=folder, reload_seconds=0, log_level="WARNING",
            **{"deadline_seconds": 2.0, **overrides},
        )  # fmt: skip
        made.append(Bridge(create_app(settings), db))
        return made[-1]

    yield make
    for b in made:
        b.close()


def patches(fake: FakeDub) -> list[Any]:
    """The PATCHes the fake applied to a commission, in order (refused ones left out)."""
    return [r.body for r in fake.records if r.key[0] == "commission"]


# --- refunds ------------------------------------------------------------------------------------


def test_full_refund_patches_status_refunded(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A refund without an amount GETs the invoice's commission and PATCHes status refunded."""
    b = lbridge()
    cid = fake_dub.add_commission("ORD-1", 1999)
    answer = b.post([refund_event(1, "ORD-1")])
    assert answer.status == 200, answer.body
    assert answer.outcomes() == ["refunded"]
    assert [r.query for r in fake_dub.calls("GET", "/commissions")] == [{"invoiceId": "ORD-1"}]
    assert patches(fake_dub) == [{"status": "refunded"}]
    assert fake_dub.commission("ORD-1")["status"] == "refunded"  # type: ignore[index]
    assert assert_settled(b.db) == {"delivered": 1}
    # Both calls are kept with Dub's answers: the GET, then the PATCH.
    calls = b.ledger().attempts_of("msg-refund-1")
    assert [(c.number, c.method, c.path, c.status) for c in calls] == [
        (1, "GET", "/commissions?invoiceId=ORD-1", 200),
        (2, "PATCH", f"/commissions/{cid}", 200),
    ]
    assert calls[0].answer is not None and cid in calls[0].answer


def test_partial_refund_patches_an_absolute_sale_amount(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A partial USD refund PATCHes the absolute saleAmount left, never modifySaleAmount."""
    b = lbridge()
    fake_dub.add_commission("ORD-2", 10000)
    assert b.post([refund_event(2, "ORD-2", total=25.5)]).outcomes() == ["refunded"]
    assert patches(fake_dub) == [{"saleAmount": 7450}]
    assert fake_dub.commission("ORD-2")["amount"] == 7450  # type: ignore[index]


def test_refund_without_commission_is_a_final_skip(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """No commission for the invoice (no partner referred the sale): a final `skipped`."""
    b = lbridge()
    answer = b.post([refund_event(3, "ORD-none", total=5)])
    assert answer.status == 200
    assert answer.outcomes() == ["skipped"]
    assert patches(fake_dub) == []
    row = b.ledger().get("msg-refund-3", REFUND_MAPPING)
    assert row is not None and row.state == "not_recorded"
    # Segment's retry is a duplicate, not a second GET.
    assert b.post([refund_event(3, "ORD-none", total=5)]).status == 200
    assert len(fake_dub.calls("GET", "/commissions")) == 1


def test_paid_commission_is_rejected_with_dubs_message(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A paid commission Dub refuses to change is `rejected`, with Dub's own message."""
    b = lbridge()
    cid = fake_dub.add_commission("ORD-4", 5000, status="paid")
    answer = b.post([refund_event(4, "ORD-4")])
    assert answer.status == 200
    assert answer.outcomes() == ["rejected"]
    [dead] = b.ledger().dead_letters()
    assert dead.state == "rejected"
    assert f"Commission {cid} has already been paid" in str(dead.error)


def test_refund_larger_than_the_sale_is_a_dead_letter_saying_why(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A refund larger than what is left of the sale is never sent: a dead letter says why."""
    b = lbridge()
    fake_dub.add_commission("ORD-5", 1000)
    answer = b.post([refund_event(5, "ORD-5", total=12)])
    assert answer.outcomes() == ["invalid"]
    assert patches(fake_dub) == []
    [dead] = b.ledger().dead_letters()
    assert dead.state == "invalid"
    assert "exceeds" in str(dead.error) and "1200" in str(dead.error)


def test_refund_in_another_currency_without_the_sale_is_a_dead_letter(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A EUR refund of a commission Dub keeps in USD, sale unknown to the ledger: no guess."""
    b = lbridge()
    fake_dub.add_commission("ORD-6", 1000)
    answer = b.post([refund_event(6, "ORD-6", total=2, currency="EUR")])
    assert answer.outcomes() == ["invalid"]
    assert patches(fake_dub) == []
    [dead] = b.ledger().dead_letters()
    assert "cannot be known" in str(dead.error)


def test_refund_in_the_sales_own_currency_uses_the_sale_the_ledger_sent(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A EUR partial refund of a EUR sale PATCHes the sale's EUR amount less the refund, in EUR;
    a second partial refund starts from what the first left, never from Dub's USD cents."""
    b = lbridge()
    sale = sale_event("eur")
    sale["properties"].update(revenue=100.0, currency="EUR")
    assert b.post([sale]).outcomes() == ["delivered"]
    fake_dub.add_commission("ORD-eur", 11000)  # Dub converted 100 EUR to 110 USD
    assert b.post([refund_event(7, "ORD-eur", total=30, currency="EUR")]).outcomes() == ["refunded"]
    assert b.post([refund_event(8, "ORD-eur", total=20, currency="EUR")]).outcomes() == ["refunded"]
    assert patches(fake_dub) == [
        {"saleAmount": 7000, "currency": "eur"},
        {"saleAmount": 5000, "currency": "eur"},
    ]
    assert b.state("msg-sale-eur", SALE_MAPPING) == "delivered"


def test_refund_in_usd_of_a_eur_sale_is_a_dead_letter(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """Never subtract across currencies: a USD refund of a sale sent in EUR is a dead letter."""
    b = lbridge()
    sale = sale_event("mix")
    sale["properties"].update(revenue=100.0, currency="EUR")
    b.post([sale])
    fake_dub.add_commission("ORD-mix", 11000)
    assert b.post([refund_event(9, "ORD-mix", total=10)]).outcomes() == ["invalid"]
    assert patches(fake_dub) == []
    [dead] = b.ledger().dead_letters()
    assert "across currencies" in str(dead.error)


@pytest.mark.parametrize("ledger", ["on", "memory"], ids=["sqlite", "memory"])
def test_refund_retried_by_segment_20_times_patches_once(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge], ledger: str
) -> None:
    """Segment retrying one partial refund 20 times: one PATCH, the amount subtracted once."""
    b = lbridge(ledger=ledger)
    fake_dub.add_commission("ORD-20", 10000)
    event = refund_event(20, "ORD-20", total=10)
    answers = [b.post([event]) for _ in range(20)]
    assert answers[0].outcomes() == ["refunded"]
    assert all(a.status == 200 for a in answers)
    assert len(patches(fake_dub)) == 1
    assert fake_dub.commission("ORD-20")["amount"] == 9000  # type: ignore[index]


@pytest.mark.parametrize("ledger", ["on", "memory"], ids=["sqlite", "memory"])
@pytest.mark.parametrize(
    "fault",
    [
        Status(500),
        Status(503),
        Status(429, retry_after_in=0.3),
        Reset(after_processing=True),
        Reset(after_processing=False),
    ],
    ids=["500", "503", "429-ms-retry-after", "reset-after-processing", "reset-before"],
)
def test_partial_refund_patch_faults_leave_the_right_absolute_amount(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge], fault: Any, ledger: str
) -> None:
    """A PATCH that fails (5xx, 429 with Dub's ms Retry-After, a reset before or after Dub
    applied it) is retried with the same absolute amount: subtracted once."""
    b = lbridge(ledger=ledger)
    cid = fake_dub.add_commission("ORD-f", 10000)
    fake_dub.script(("commission", cid), fault)
    answers = b.deliver([refund_event("f", "ORD-f", total=25)])
    assert answers[-1].status == 200, answers[-1].body
    assert answers[-1].outcomes() == ["refunded"]
    assert fake_dub.commission("ORD-f")["amount"] == 7500  # type: ignore[index]
    sent = [r.body for r in fake_dub.calls("PATCH", "/commissions/")]
    assert sent and all(body == {"saleAmount": 7500} for body in sent)
    if ledger == "on":
        assert_settled(b.db)


def test_refund_whose_patch_finds_the_rate_limit_full_is_queued(
    fake_dub: FakeDub, tmp_path: Path, clock: ManualClock
) -> None:
    """A refund whose GET takes the last slot of Dub's shared window (a sale took the
    other), so its PATCH finds it full: answered 200 `queued` (not 503), its PATCH pinned;
    the outbox sends that PATCH once the window frees, and the commission is changed once."""
    settings = Settings.from_env(
        {}, dub_api_key="test-key", dub_api_url=fake_dub.url, db_path=tmp_path / "l.db",
        mappings_dir=lifecycle_mappings(tmp_path), reload_seconds=0, log_level="WARNING",
        rate_limit_per_minute=2, deadline_seconds=2.0,
    )  # fmt: skip
    b = Bridge(create_app(settings, clock=clock), tmp_path / "l.db")
    refund = refund_event("q", "ORD-q", total=25)
    sale = sale_event("q")
    refund["timestamp"] = sale["timestamp"] = datetime.fromtimestamp(clock.time(), UTC).isoformat()
    try:
        fake_dub.add_commission("ORD-q", 10000)
        assert b.post([sale]).status == 200  # one call: one slot of the two
        answer = b.post([refund])
        assert answer.status == 200, answer.body
        assert answer.outcomes() == ["queued"]
        assert patches(fake_dub) == []
        row = b.ledger().get("msg-refund-q", REFUND_MAPPING)
        assert row is not None and row.state == "pending" and "pin" in (row.request_body or {})
        clock.advance(COUNTED_FOR)
        assert b.app.extensions["bridge"].outbox.drain() == Counter({"refunded": 1})
        assert patches(fake_dub) == [{"saleAmount": 7500}]
        assert fake_dub.commission("ORD-q")["amount"] == 7500  # type: ignore[index]
        assert b.post([refund]).outcomes() == ["duplicate"]
    finally:
        b.close()


@pytest.mark.parametrize(
    "fault",
    [Status(500), Status(429, retry_after_in=0.3), Reset(after_processing=False)],
    ids=["500", "429-ms-retry-after", "reset"],
)
def test_refund_get_faults_are_retried(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge], fault: Any
) -> None:
    """A GET /commissions that fails is retried; the refund is PATCHed once."""
    b = lbridge()
    fake_dub.add_commission("ORD-g", 4000)
    fake_dub.script(("commissions", "ORD-g"), fault)
    answers = b.deliver([refund_event("g", "ORD-g")])
    assert answers[-1].outcomes() == ["refunded"]
    assert patches(fake_dub) == [{"status": "refunded"}]


def test_full_refund_whose_answer_was_lost_is_not_rejected_on_retry(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """A full refund Dub applied but whose answer was lost: Dub refusing the retried PATCH
    ('already in the refunded status') is read back from the commission as `refunded`."""
    b = lbridge()
    cid = fake_dub.add_commission("ORD-l", 4000)
    fake_dub.script(("commission", cid), Reset(after_processing=True))
    answers = b.deliver([refund_event("l", "ORD-l")])
    assert answers[-1].outcomes() == ["refunded"]
    assert patches(fake_dub) == [{"status": "refunded"}]  # the retried PATCH changed nothing
    assert assert_settled(b.db) == {"delivered": 1}


def test_refund_redelivered_to_three_instances_at_once_patches_once(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """One partial refund redelivered to three instances at once (one ledger): one PATCH, the
    amount subtracted once; the others answer 503 until it settles, then duplicate."""
    instances = [lbridge(), lbridge(), lbridge()]
    fake_dub.add_commission("ORD-3i", 10000)
    gate = threading.Event()
    fake_dub.script(("commissions", "ORD-3i"), Hold(gate))  # the first GET waits for the rest
    event = refund_event("3i", "ORD-3i", total=40)
    answers: list[list[Answer]] = [[] for _ in instances]

    def post(i: int) -> None:
        answers[i] = instances[i].deliver([event])

    threads = [threading.Thread(target=post, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    fake_dub.wait_until(lambda: len(fake_dub.calls("GET", "/commissions")) >= 1)
    gate.set()
    for thread in threads:
        thread.join(30)
    assert all(a[-1].status == 200 for a in answers), answers
    assert patches(fake_dub) == [{"saleAmount": 6000}]
    assert fake_dub.commission("ORD-3i")["amount"] == 6000  # type: ignore[index]
    assert assert_settled(instances[0].db) == {"delivered": 1}


# --- customer updates -----------------------------------------------------------------------------


def customer_patches(fake: FakeDub) -> list[tuple[str, Any]]:
    return [(r.path, r.body) for r in fake.calls("PATCH", "/customers/")]


def test_identify_patches_the_customer_with_only_the_fields_present(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """An identify call PATCHes /customers/ext_<userId> with only the traits it carries."""
    b = lbridge()
    fake_dub.add_customer("u-1", email="old@example.com")
    event = identify_event(1, "u-1", email="new@example.com", stripe_customer_id="cus_S1")
    answer = b.post([event])
    assert answer.status == 200, answer.body
    assert answer.outcomes() == ["delivered"]
    assert customer_patches(fake_dub) == [
        ("/customers/ext_u-1", {"email": "new@example.com", "stripeCustomerId": "cus_S1"})
    ]
    assert fake_dub.customer("u-1")["stripeCustomerId"] == "cus_S1"  # type: ignore[index]
    assert b.state("msg-identify-1", UPDATE_MAPPING) == "delivered"


def test_identify_of_someone_dub_does_not_know_is_skipped(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """Dub's 404 for an identified user who never came through a link: a final `skipped`
    ("not a Dub customer"), not a dead letter; Segment's retry sends nothing more."""
    b = lbridge()
    event = identify_event(2, "stranger", name="Ada")
    answer = b.post([event])
    assert answer.status == 200
    assert answer.outcomes() == ["skipped"]
    assert b.ledger().dead_letters() == []
    assert b.state("msg-identify-2", UPDATE_MAPPING) == "not_recorded"
    assert b.post([event]).outcomes() == ["duplicate"]
    assert len(customer_patches(fake_dub)) == 1


def test_external_ids_are_quoted_into_the_path(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """An id that begins with ext_ is reached as ext_ext_...; a slash cannot change the route."""
    b = lbridge()
    fake_dub.add_customer("ext_7")
    fake_dub.add_customer("a/b")
    b.post([identify_event(3, "ext_7", name="Seven"), identify_event(4, "a/b", name="Slash")])
    paths = sorted(r.path for r in fake_dub.calls("PATCH", "/customers/"))
    assert paths == ["/customers/ext_a%2Fb", "/customers/ext_ext_7"]
    assert sorted(r.key for r in fake_dub.calls("PATCH", "/customers/")) == [  # type: ignore[type-var]
        ("customer", "a/b"),
        ("customer", "ext_7"),
    ]


@pytest.mark.parametrize(
    "fault",
    [Status(500), Status(429, retry_after_in=0.3), Reset(after_processing=True)],
    ids=["500", "429-ms-retry-after", "reset-after-processing"],
)
def test_customer_update_faults_are_retried(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge], fault: Any
) -> None:
    """A customer PATCH that fails (5xx, 429 with Dub's ms Retry-After, a reset) is retried."""
    b = lbridge()
    fake_dub.add_customer("u-f")
    fake_dub.script(("customer", "u-f"), fault)
    answers = b.deliver([identify_event("f", "u-f", name="Flaky")])
    assert answers[-1].status == 200, answers[-1].body
    assert answers[-1].outcomes() == ["delivered"]
    assert fake_dub.customer("u-f")["name"] == "Flaky"  # type: ignore[index]
    assert_settled(b.db)


# --- deletions ----------------------------------------------------------------------------------


def test_delete_removes_the_customer_and_erases_the_users_data_from_the_ledger(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge], tmp_path: Path
) -> None:
    """A delete message DELETEs /customers/ext_<userId> and erases the user's payloads and
    requests from the ledger: `bridge deadletters --json` shows no trace of email or traits,
    while ids, outcomes and counts stay (a redelivery is still a duplicate)."""
    b = lbridge()
    lead = lead_event("gone", user="gone-1")
    lead["context"]["traits"].update(email="gone@example.com", name="Gone Person")
    fake_dub.script(key_for(lead), Status(422, message="customerEmail: refused"))
    assert b.post([lead]).outcomes() == ["rejected"]
    broken = sale_event("gone", user="gone-1")
    broken["properties"]["revenue"] = "lots"  # invalid: a dead letter with its payload
    assert b.post([broken]).outcomes() == ["invalid"]
    fake_dub.add_customer("gone-1", email="gone@example.com")
    counts = b.ledger().counts()

    answer = b.post([delete_event(1, "gone-1")])
    assert answer.status == 200, answer.body
    assert answer.outcomes() == ["delivered"]
    assert [(r.method, r.path, r.body) for r in fake_dub.calls("DELETE")] == [
        ("DELETE", "/customers/ext_gone-1", None)
    ]
    assert fake_dub.customer("gone-1") is None
    shown = CliRunner().invoke(
        main, ["deadletters", "--json"], env={"BRIDGE_DB": str(b.db), "BRIDGE_LEDGER": "on"}
    )
    assert shown.exit_code == 0, shown.output
    assert "gone@example.com" not in shown.output
    assert "Gone Person" not in shown.output
    assert "buyergone@example.com" not in shown.output  # the invalid sale's traits
    assert "Buyer gone" not in shown.output
    lines = [json.loads(line) for line in shown.output.splitlines() if line.startswith("{")]
    assert sorted(line["messageId"] for line in lines) == ["msg-lead-gone", "msg-sale-gone"]
    assert all("msg-delete-1" in json.dumps(line["payload"]) for line in lines)
    assert {k: v for k, v in b.ledger().counts().items() if k != "delivered"} == {
        k: v for k, v in counts.items() if k != "delivered"
    }
    assert b.post([lead]).outcomes() == ["rejected"]  # still known: never sent again


def test_delete_of_someone_dub_does_not_know_is_fine(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """Dub's 404 to a DELETE: nothing to delete there; delivered, and the ledger is erased."""
    b = lbridge()
    answer = b.post([delete_event(2, "nobody")])
    assert answer.status == 200
    assert answer.outcomes() == ["delivered"]


@pytest.mark.parametrize(
    "fault",
    [Status(503), Status(429, retry_after_in=0.3), Reset(after_processing=True)],
    ids=["503", "429-ms-retry-after", "reset-after-processing"],
)
def test_delete_faults_are_retried(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge], fault: Any
) -> None:
    """A DELETE that fails is retried; one that Dub applied before the reset ends as 404: fine."""
    b = lbridge()
    fake_dub.add_customer("u-d")
    fake_dub.script(("customer", "u-d"), fault)
    answers = b.deliver([delete_event("f", "u-d")])
    assert answers[-1].outcomes() == ["delivered"]
    assert fake_dub.customer("u-d") is None
    assert_settled(b.db)


# --- no loops -----------------------------------------------------------------------------------


def dub_source_count() -> float:
    return REGISTRY.get_sample_value("bridge_dub_source_events_total") or 0.0


def from_dub(event: dict[str, Any]) -> dict[str, Any]:
    event.setdefault("context", {})["library"] = {"name": "dub", "version": "1.0.0"}
    return event


def test_events_of_dubs_own_segment_source_are_skipped(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """Dub's own Segment source (context.library.name dub) is skipped, with the reason, and
    nothing is sent: its sale.created would otherwise be tracked again."""
    b = lbridge()
    counted = dub_source_count()
    answer = b.post([from_dub(sale_event("loop"))])
    assert answer.status == 200
    assert answer.outcomes() == ["skipped"]
    assert fake_dub.received_count() == 0
    assert dub_source_count() == counted + 1
    assert b.state("msg-sale-loop", SALE_MAPPING) is None


def test_accept_dub_source_turns_the_guard_off(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """BRIDGE_ACCEPT_DUB_SOURCE=1: such events are planned like any other."""
    b = lbridge(accept_dub_source=True)
    assert b.post([from_dub(sale_event("loop2"))]).outcomes() == ["delivered"]


def test_dub_source_skips_are_counted_in_the_replay_summary(tmp_path: Path) -> None:
    """`bridge replay` counts Dub's own Segment source under its skip reason."""
    events = tmp_path / "dub-source.ndjson"
    events.write_text(
        "\n".join(json.dumps(from_dub(sale_event(f"echo{i}"))) for i in range(3)) + "\n"
    )
    done = run("replay", str(events))
    assert done.returncode == 0, done.stderr
    assert "          3  order-sale: sent by Dub's own Segment source" in done.stderr.splitlines()


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_replay_dry_run_reads_accept_dub_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, jobs: str
) -> None:
    """`bridge replay --dry-run` plans Dub's own Segment source as the webhook would: skipped
    by default, planned with BRIDGE_ACCEPT_DUB_SOURCE=1, in this process and in its workers."""
    from bridge.cli import replay_jobs
    from bridge.reader import lines

    # Small blocks and chunks: the events go to workers as well as to this process.
    monkeypatch.setattr(lines, "BLOCK", 1_000)
    monkeypatch.setattr(replay_jobs, "CHUNK_BYTES", 2_000)
    events = tmp_path / "dub-source.ndjson"
    events.write_text(
        "\n".join(json.dumps(from_dub(sale_event(f"echo{i}"))) for i in range(12)) + "\n"
    )
    for accept, outcome in (("0", "skipped"), ("1", "dry_run")):
        done = run("replay", "--dry-run", "--jobs", jobs, str(events),
                   env={"BRIDGE_ACCEPT_DUB_SOURCE": accept})  # fmt: skip
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert [line["outcome"] for line in lines] == [outcome] * 12, accept


def test_refund_right_after_its_sale_waits_for_dubs_commission(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """Dub creates a commission after the sale (a queued workflow): a refund that finds none
    soon after the bridge sent the sale is retried (503), not settled as skipped."""
    b = lbridge()
    assert b.post([sale_event("soon")]).outcomes() == ["delivered"]
    refund = refund_event("soon", "ORD-soon")
    first = b.post([refund])
    assert first.status == 503
    assert first.outcomes() == ["failed"]
    fake_dub.add_commission("ORD-soon", 1999)  # the workflow has run
    answers = b.deliver([refund])
    assert answers[-1].outcomes() == ["refunded"]
    assert patches(fake_dub) == [{"status": "refunded"}]


def test_two_partial_refunds_of_one_invoice_in_one_batch_both_count(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """Two partial refunds of one invoice in one body: one PATCH at a time, each from the
    amount the other left, so both are subtracted (never one PATCH overwriting the other)."""
    b = lbridge()
    fake_dub.add_commission("ORD-2r", 10000)
    events = [refund_event("2r-a", "ORD-2r", total=25), refund_event("2r-b", "ORD-2r", total=10)]
    answers = b.deliver(events)
    assert answers[-1].status == 200, answers[-1].body
    assert answers[-1].outcomes() == ["refunded", "refunded"]
    assert fake_dub.commission("ORD-2r")["amount"] == 6500  # type: ignore[index]
    assert assert_settled(b.db) == {"delivered": 2}


def test_two_partial_refunds_of_one_invoice_on_two_instances_at_once_both_count(
    fake_dub: FakeDub, lbridge: Callable[..., Bridge]
) -> None:
    """Two partial refunds of one invoice sent to two instances at once: the second waits for
    the first's PATCH (503, Segment retries), then subtracts from what it left."""
    first, second = lbridge(), lbridge()
    cid = fake_dub.add_commission("ORD-2i", 10000)
    gate = threading.Event()
    fake_dub.script(("commission", cid), Hold(gate))  # the first PATCH waits
    answers: dict[str, list[Answer]] = {}

    def post(name: str, b: Bridge, event: dict[str, Any]) -> None:
        answers[name] = b.deliver([event])

    a = threading.Thread(target=post, args=("a", first, refund_event("2i-a", "ORD-2i", total=25)))
    a.start()
    fake_dub.wait_until(lambda: len(fake_dub.calls("PATCH", "/commissions/")) >= 1)
    # The second refund GETs the amount the first has not changed yet: it must not PATCH.
    blocked = second.post([refund_event("2i-b", "ORD-2i", total=10)])
    assert blocked.status == 503 and blocked.outcomes() == ["pending"]
    gate.set()
    a.join(30)
    post("b", second, refund_event("2i-b", "ORD-2i", total=10))
    assert answers["a"][-1].outcomes() == ["refunded"]
    assert answers["b"][-1].outcomes() == ["refunded"]
    assert fake_dub.commission("ORD-2i")["amount"] == 6500  # type: ignore[index]
