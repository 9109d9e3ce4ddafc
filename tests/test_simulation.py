"""The deterministic simulation (tests/sim) in CI: a fixed seed set under the whole
fault model, each preset's scenario, and reproducibility.

``python3 dev.py soak --minutes 30`` runs seeds until the time is up;
``python -m tests.sim --trace SEED`` replays one with its full trace;
docs/simulation.md says how the simulator works and what each preset exercises.
"""

import pytest

from tests.sim.runner import RunSpec, failure_report, run
from tests.sim.swarm import PRESETS

SWARM_SEEDS = range(12)
"""The full swarm: every fault kind in the model, a random subset per seed (~2 s a seed)."""

PRESET_SEEDS = range(4)
"""Each preset's scenario (a fraction of a second a seed)."""

CI_PRESETS = sorted(name for name in PRESETS if name not in ("swarm", "many-outstanding-leases"))
"""Hundreds of outstanding leases on 64 shards need ~300,000 steps: soak only."""


def failures(specs):
    reports = []
    for spec in specs:
        result = run(spec)
        if result.failed:
            reports.append("\n".join(failure_report(result, "FAILED")))
    return reports


def test_fixed_seed_set_keeps_every_guarantee_under_the_fault_model():
    reports = failures(RunSpec(seed) for seed in SWARM_SEEDS)
    assert not reports, "\n\n".join(reports)


@pytest.mark.parametrize("preset", CI_PRESETS)
def test_every_guarantee_holds_in_each_presets_scenario(preset):
    reports = failures(RunSpec(seed, preset) for seed in PRESET_SEEDS)
    assert not reports, "\n\n".join(reports)


def test_one_seed_replays_the_same_run_bit_for_bit():
    spec = RunSpec(7, "appengine-rpc-errors")
    first, second = run(spec, keep_trace=True), run(spec, keep_trace=True)
    assert first.trace.format(first.trace.entries) == second.trace.format(second.trace.entries)
    assert (first.steps, first.injected, first.violations) == (second.steps, second.injected, second.violations)


def test_a_replay_of_the_injected_faults_is_the_same_run():
    """Shrinking rests on this: replaying exactly the faults a seed injected changes nothing."""
    original = run(RunSpec(2, "appengine-rpc-errors"), keep_trace=True)
    replay = run(RunSpec(2, "appengine-rpc-errors", faults=tuple(original.injected)), keep_trace=True)
    assert original.injected, "the run had faults to replay"
    assert replay.trace.format(replay.trace.entries) == original.trace.format(original.trace.entries)
