"""The protocol the simulation drives, as a seam: the real one, and broken variants that it must catch.

A processor records each leased batch with ``count_batch`` and acks it; fold
tasks call ``fold``. The simulation takes these two functions as a
``Protocol``: ``REAL`` is clicks/counting.py as deployed. The variants are
built from the same real functions, each missing one thing the protocol
relies on; tests/test_counting_simulation.py checks that seeded runs catch
each one (``python -m tests.sim_counting --protocol NAME`` runs one).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from clicks import counters, counting
from clicks.events import Event
from clicks.settings import Aggregate
from tests.sim_counting.faults import FaultKind


@dataclass(frozen=True)
class Protocol:
    name: str
    count_batch: Aggregate
    fold: Callable[[float, counters.StoreLimits], counting.FoldReport]
    catches: str = ""
    """What breaks it, for a variant: what the simulation must do to catch it."""
    caught_with: frozenset[FaultKind] | None = None
    """For a variant, the fault kinds its test switches on (None: each seed's own swarm)."""


REAL = Protocol("real", counting.count_batch, counting.fold)


def _count_per_delivery(batch_id: str, events: Mapping[str, Event], now: float) -> int:
    """Records each delivery under an id of its own (as if keyed by the task, not the lease)."""
    return counting.count_batch(f"{batch_id}@{now!r}", events, now)


def _record_outside_a_transaction(batch_id: str, events: Mapping[str, Event], now: float) -> int:
    """``count_batch``'s own steps, but not in one transaction."""
    return counting._record(batch_id, events, set(), now)


def _fold_outside_a_transaction(now: float, limits: counters.StoreLimits) -> counting.FoldReport:
    """``fold``'s own steps, but not in one transaction."""
    keys = counting.unfolded_batches(counting.MAX_BATCHES_PER_FOLD)
    return counting._fold(keys, now, limits) if keys else counting.FoldReport(0)


VARIANTS = {
    variant.name: variant
    for variant in (
        Protocol(
            "count-per-delivery",
            _count_per_delivery,
            counting.fold,
            "a batch delivered again after its record committed (lost ack, commit applied then failed, "
            "a stall past the lease)",
            frozenset({FaultKind.LOST_ACK}),
        ),
        Protocol(
            "record-outside-transaction",
            _record_outside_a_transaction,
            counting.fold,
            "two deliveries of one lease recording at once, a fold between them",
            frozenset({FaultKind.STALL}),
        ),
        Protocol(
            "fold-outside-transaction",
            counting.count_batch,
            _fold_outside_a_transaction,
            "two folds at once (a fold task retried while the first still runs)",
        ),
    )
}
PROTOCOLS = {REAL.name: REAL, **VARIANTS}
