"""The deterministic simulation (tests/sim) in CI: a fixed seed set on the cache contract,
reproducibility, and the seeds that find issue 7's bugs in today's library.

``python -m tests.sim`` runs any number of seeds, replays one with its full trace,
and soaks; docs/simulation.md says how each bug was found.
"""

import pytest

from tests.sim.library import queue_speaks_contract
from tests.sim.runner import RunSpec, failure_report, run
from tests.sim.swarm import PRESETS

CONTRACT_SEEDS = range(32)
"""Run in CI on the contract view: the fault model in full, under 60 s on a 2-core machine (about 1 s a seed)."""

TODAYS_LIBRARY = not queue_speaks_contract()


@pytest.mark.xfail(
    TODAYS_LIBRARY,
    reason="today's Queue (through the contract shim) breaks issue 7's guarantees: the rewrite makes this pass",
    strict=True,
)
def test_fixed_seed_set_keeps_every_guarantee_on_the_cache_contract():
    failures = []
    for seed in CONTRACT_SEEDS:
        result = run(RunSpec(seed, "contract", "swarm"))
        if result.failed:
            failures.append("\n".join(failure_report(result, "FAILED")))
            if TODAYS_LIBRARY:
                break
    assert not failures, "\n\n".join(failures)


def test_one_seed_replays_the_same_run_bit_for_bit():
    spec = RunSpec(7, "contract", "swarm")
    first, second = run(spec, keep_trace=True), run(spec, keep_trace=True)
    assert first.trace.format(first.trace.entries) == second.trace.format(second.trace.entries)
    assert (first.steps, first.injected, first.violations) == (second.steps, second.injected, second.violations)


def test_a_replay_of_the_injected_faults_is_the_same_run():
    """Shrinking rests on this: replaying exactly the faults a seed injected changes nothing."""
    original = run(RunSpec(3, "contract", "swarm"), keep_trace=True)
    replay = run(RunSpec(3, "contract", "swarm", faults=tuple(original.injected)), keep_trace=True)
    assert replay.trace.format(replay.trace.entries) == original.trace.format(original.trace.entries)


# Seeds the simulator found each bug with (docs/simulation.md); each runs in about a second.
# Bug 6 needs ~220,000 steps (about two minutes): it is in the docs, not here.
BUG_SEEDS = [
    pytest.param("bug1", 1, "G1 no duplicates", "again by lease", id="bug1-node-restart-re-leases-a-batch"),
    pytest.param("bug2", 235, "G3 loss counted", "never delivered", id="bug2-counter-reseeded-at-0"),
    pytest.param("bug3", 1068, "G3 loss counted", "never delivered", id="bug3a-failed-tombstone-add"),
    pytest.param("bug3", 5, "G3 loss counted", "never delivered", id="bug3b-get-multi-answers-nothing"),
    pytest.param("bug3", 0, "G1 no duplicates", "delivered", id="bug3c-lost-add-reply-stores-twice"),
    pytest.param("bug4", 15, "G3 loss counted", "never delivered", id="bug4-kept-gap-hides-eviction"),
    pytest.param("bug5", 0, "G4 safety", "asked for at most", id="bug5a-takeover-ignores-max-items"),
    pytest.param("bug5", 10, "G5 ack contract", "returned True", id="bug5b-late-ack-returns-true"),
    pytest.param("bug5", 1, "G1 no duplicates", "never delivered", id="bug5c-stale-ack-deletes-new-messages"),
    pytest.param("bug7", 0, "G2 liveness", "never delivered", id="bug7-tombstones-over-30-days"),
    pytest.param("bug8", 2, "G1 no duplicates", "twice in one call", id="bug8-partial-add-then-retry"),
    pytest.param("bug9", 6, "G4 safety", "unpickled", id="bug9a-pickled-value-in-a-slot"),
    pytest.param("bug9", 5, "G4 safety", "RecursionError", id="bug9b-message-nested-985-deep"),
]


@pytest.mark.skipif(not TODAYS_LIBRARY, reason="these seeds find bugs of the library before issue 7's rewrite")
@pytest.mark.parametrize(("preset", "seed", "check", "words"), BUG_SEEDS)
def test_simulation_finds_the_bug_in_todays_library(preset, seed, check, words):
    result = run(RunSpec(seed, PRESETS[preset].view, preset))
    first = result.violations[0] if result.violations else None
    assert first is not None and first.check == check and words in first.message, (
        "\n".join(failure_report(result, "UNEXPECTED")) if first else "the seed passed"
    )
