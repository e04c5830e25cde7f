"""The ledger's signatures, one suite on every backend: what a signature vouched for when any
instance first saw it, kept until it can no longer be accepted."""

from __future__ import annotations

from bridge.ledger.base import (
    Retention,
    Sighting,
)
from tests.helpers.fakes import ManualClock
from tests.helpers.ledgers import MakeLedger


def test_a_signature_vouches_for_what_it_first_came_with(
    make_ledger: MakeLedger, clock: ManualClock
) -> None:
    """The first sighting of a signature (its messageIds and content digests) fixes what it
    vouches for, for every handle; it is kept until its keep_until, whatever the retention
    of rows, and forgotten after."""
    first, second = make_ledger(), make_ledger()
    now = clock.time()
    seen = Sighting(frozenset({"a", "b"}), frozenset({"da", "db"}), now + 3 * 86400)
    other = Sighting(frozenset({"a", "x"}), frozenset({"dx"}), now + 86400)
    assert first.vouch("sig", seen) == seen
    assert second.vouch("sig", other) == seen
    assert second.vouch("other", other) == other
    clock.advance(2 * 86400)
    first.sweep(Retention(give_up_after=1, settled=1, dead=1, signatures=1))
    assert second.vouch("sig", other) == seen  # past every retention, not past keep_until
    assert second.vouch("other", seen) == seen  # forgotten: this is a first sighting again
