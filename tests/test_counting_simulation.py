"""The counting protocol's deterministic simulation (tests/sim_counting) in CI: a fixed seed
set under the whole fault model, reproducibility, and broken variants it must catch.

``python -m tests.sim_counting --minutes 30`` soaks; ``--trace SEED`` replays one seed
with its full trace; docs/simulation.md says what the simulation covers.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.sim_counting.faults import FaultKind
from tests.sim_counting.oracle import EXACTLY_ONCE, NEVER_AHEAD, RECORDED
from tests.sim_counting.protocol import VARIANTS
from tests.sim_counting.runner import RunSpec, failure_report, run

SEEDS = range(10)
"""About 2 s a seed here: every fault kind is injected, and each race met, within them."""

VARIANT_SEEDS = range(12)
"""Seeds a broken variant is run on, with the fault kinds that catch it, until one does."""

CAUGHT_BY = {EXACTLY_ONCE, NEVER_AHEAD, RECORDED}

@pytest.fixture(scope="module")
def fixed_seed_runs():
    return [run(RunSpec(seed)) for seed in SEEDS]


def test_every_event_delivered_is_counted_exactly_once_on_the_fixed_seed_set(fixed_seed_runs):
    reports = ["\n".join(failure_report(result, "FAILED")) for result in fixed_seed_runs if result.failed]
    assert not reports, "\n\n".join(reports)


def test_the_fixed_seed_set_injects_every_fault_kind_and_meets_each_race(fixed_seed_runs):
    injected = Counter(fault.kind for result in fixed_seed_runs for fault in result.injected)
    seen = sum((result.seen for result in fixed_seed_runs), Counter())
    assert {kind for kind in FaultKind if injected[kind] == 0} == set()
    races = ("redeliveries", "overlapping deliveries", "late finishes", "conflicts met", "splits")
    assert {race: seen[race] for race in races if seen[race] == 0} == {}


def test_one_seed_replays_the_same_run_bit_for_bit():
    spec = RunSpec(2)
    first, second = run(spec, keep_trace=True), run(spec, keep_trace=True)
    assert first.injected, "the run had faults"
    assert first.trace.format(first.trace.entries) == second.trace.format(second.trace.entries)
    assert (first.steps, first.injected, first.violations, first.seen) == (
        second.steps,
        second.injected,
        second.violations,
        second.seen,
    )


def test_a_replay_of_the_injected_faults_is_the_same_run():
    """Shrinking rests on this: replaying exactly the faults a seed injected changes nothing."""
    original = run(RunSpec(13), keep_trace=True)
    replay = run(RunSpec(13, faults=tuple(original.injected)), keep_trace=True)
    assert original.injected, "the run had faults to replay"
    assert replay.trace.format(replay.trace.entries) == original.trace.format(original.trace.entries)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_broken_variant_of_the_protocol_is_caught(variant):
    for seed in VARIANT_SEEDS:
        result = run(RunSpec(seed, variant, only=VARIANTS[variant].caught_with))
        if result.failed:
            assert result.violations[0].check in CAUGHT_BY, "\n".join(failure_report(result, "CAUGHT"))
            return
    pytest.fail(f"{variant} ({VARIANTS[variant].catches}) passed seeds {VARIANT_SEEDS}")


def test_a_run_ends_only_after_a_fold_that_began_once_the_faults_stopped():
    """A fold begun before the faults stopped may have queried a stale index (eventual
    consistency) and found nothing more while batches waited: ending the run on it made the
    final check see them as lost. This short run did (its chaos phase ends mid-fold)."""
    result = run(RunSpec.parse("seed=0,protocol=real,steps=169,faults=,only=read-timeout"))
    assert not result.failed, "\n".join(failure_report(result, "FAILED"))
