"""The ledger's mapping sets, one suite on every backend: kept sets, the last good one, and the
activations every instance follows, in the ledger's order."""

from __future__ import annotations

from tests.helpers.fakes import ManualClock
from tests.helpers.ledgers import MakeLedger

# --- mapping sets ---------------------------------------------------------------------------------


def test_mapping_sets_are_kept_and_the_last_good_one_found(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """A set kept by one worker is found by another; the last loaded is the last good one,
    and loading an old set again makes it the last good one."""
    first, second = make_ledger(), make_ledger()
    assert second.last_good_mapping_set() is None
    first.keep_mapping_set("v1", [("a.yaml", "one: 1\n")], "files")
    clock.advance(1)
    first.keep_mapping_set("v2", [("a.yaml", "two: 2\n"), ("b.yaml", "é\n")], "files")
    last = second.last_good_mapping_set()
    assert last is not None and last.version == "v2"
    assert last.files == (("a.yaml", "two: 2\n"), ("b.yaml", "é\n"))
    clock.advance(1)
    second.keep_mapping_set("v1", [("a.yaml", "one: 1\n")], "files")
    again = first.last_good_mapping_set()
    assert again is not None and again.version == "v1" and again.created_at < again.loaded_at
    assert first.mapping_set("nope") is None


def test_activations_pick_the_set_every_instance_follows(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """The latest activation is the active set, for every handle; history is newest first."""
    first, second = make_ledger(), make_ledger()
    assert second.active_mapping_set() is None
    for version in ("v1", "v2"):
        first.keep_mapping_set(version, [("m.yaml", version)], "publish")
    first.activate_mapping_set("v1", "publish")
    clock.advance(1)
    first.activate_mapping_set("v2", "publish")
    clock.advance(1)
    first.activate_mapping_set("v1", "rollback")
    active = second.active_mapping_set()
    assert active is not None and active.version == "v1"
    history = second.activations()
    assert [(a.version, a.origin) for a in history] == [
        ("v1", "rollback"),
        ("v2", "publish"),
        ("v1", "publish"),
    ]
    assert len(second.activations(limit=1)) == 1


def test_activations_keep_the_ledgers_order_whatever_the_clock_says(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """A publisher whose clock runs an hour ahead pins nothing: the later activation is the
    active one, and each records who and why."""
    first, second = make_ledger(), make_ledger()
    for version in ("v1", "v2"):
        first.keep_mapping_set(version, [("m.yaml", version)], "publish")
    clock.advance(3600)
    first.activate_mapping_set("v1", "publish", author="fast-clock", message="ahead")
    clock.advance(-3600)
    second.activate_mapping_set("v2", "publish", author="kim")
    active = first.active_mapping_set()
    assert active is not None and active.version == "v2"
    history = first.activations()
    assert [(a.version, a.author, a.message) for a in history] == [
        ("v2", "kim", None),
        ("v1", "fast-clock", "ahead"),
    ]
    second.activate_mapping_set("v1", "rollback")
    active = first.active_mapping_set()
    assert active is not None and active.version == "v1"


def test_kept_sets_are_listed_last_loaded_first(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """mapping_sets() lists what a release may fall back on, the most recently loaded first."""
    ledger = make_ledger()
    for version in ("v1", "v2", "v3"):
        ledger.keep_mapping_set(version, [("m.yaml", version)], "files")
        clock.advance(1)
    ledger.keep_mapping_set("v1", [("m.yaml", "v1")], "files")
    assert [s.version for s in ledger.mapping_sets()] == ["v1", "v3", "v2"]
    assert [s.version for s in ledger.mapping_sets(2)] == ["v1", "v3"]
