"""A run of one seed: its two phases and the failure report (shrinking: tests/sim/seeds.py).

A run is one seed (with a preset): the chaos phase runs the
swarm's steps with faults on, stopping every ``QUIESCE_EVERY_STEPS`` to let
every call finish and compare ``stats()`` with the oracle; then the liveness
phase turns faults off, lets writers write a last quota, and requires every
message of that phase delivered, and the queue drained, within
``LIVENESS_STEP_BUDGET`` steps plus the walk of the slots readers have not yet
claimed below the counters. The run stops at the first violation.

A failure shrinks: it replays the seed with exactly the faults that were
injected (the same run), then with fewer chaos steps and fewer faults
(delta debugging) while the same guarantee still fails, and prints the
smallest run's trace and the one command that replays it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace

from tests.sim import seeds
from tests.sim.faults import MAX_CLOCK_SKEW_SECONDS, FaultKind, FaultPlan, PlannedFault
from tests.sim.oracle import G2_LIVENESS, G3_IDENTITY, G3_LOST, Oracle, Violation
from tests.sim.parties import Role
from tests.sim.seeds import parse_spec, spec_token
from tests.sim.swarm import Swarm, draw_swarm
from tests.sim.trace import Trace
from tests.sim.world import World

QUIESCE_EVERY_STEPS = 400
LIVENESS_STEP_BUDGET = 10_000
"""Steps the liveness phase may take to deliver its messages and drain the queue, plus
one per ``SLOTS_WALKED_PER_STEP`` slots readers must walk when it starts."""
SLOTS_WALKED_PER_STEP = 25
"""clickqueue's documented limit: readers walk an empty range a bounded step per call
(a claim settles up to ``MAX_CLAIM_ITEMS`` slots in about 4 cache calls, and contending
parties lose most CAS rounds). Counter repairs under remapped nodes compound their
margins: seed 5000104 left 64 shards tens of thousands of slots ahead of the readers."""
MAX_WALK_STEPS = 100_000
"""At most this many steps more (2.5 M slots): a counter pushed far ahead on purpose is
exempt from liveness, and is not walked here."""
STALLED_STEPS = 300
"""Steps without a delivery after which time jumps past every lease's deadline."""
DRAIN_CHECK_EVERY_STEPS = 100


@dataclass(frozen=True)
class RunSpec:
    """One run, as one command line token: the seed, and what a replay pins down."""

    seed: int
    preset: str = "swarm"
    chaos_steps: int | None = None
    faults: tuple[PlannedFault, ...] | None = None
    """Replay exactly these faults (None: the seed's random faults)."""

    def token(self) -> str:
        return spec_token(self, "preset")

    @classmethod
    def parse(cls, token: str, preset: str) -> RunSpec:
        """A seed number (with the given preset) or a token from ``token()``."""
        return cls(**parse_spec(token, "preset", preset, FaultKind, PlannedFault))


@dataclass
class RunResult:
    spec: RunSpec
    swarm: Swarm
    violations: list[Violation]
    injected: list[PlannedFault]
    trace: Trace
    steps: int

    @property
    def failed(self) -> bool:
        return bool(self.violations)


@contextmanager
def _library_log_to(oracle: Oracle) -> Iterator[None]:
    """The queue logs each foreign value it skips (the trace already says so), and
    a count it could not correct: that makes G3's identity inexact, for the oracle."""

    class CountsInexact(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "could not" in record.msg and "counts" in record.msg:
                oracle.counts_inexact(record.getMessage())

    library_logger = logging.getLogger("clickqueue")
    handler, propagate = CountsInexact(logging.WARNING), library_logger.propagate
    library_logger.addHandler(handler)
    library_logger.propagate = False
    try:
        yield
    finally:
        library_logger.removeHandler(handler)
        library_logger.propagate = propagate


def run(spec: RunSpec, keep_trace: bool = False) -> RunResult:
    swarm = draw_swarm(spec.seed, spec.preset)
    if spec.chaos_steps is not None:
        swarm = replace(swarm, chaos_steps=spec.chaos_steps)
    world = World(spec.seed, swarm, FaultPlan(spec.seed, swarm.fault_rates, spec.faults), keep_trace)
    with _library_log_to(world.oracle):
        try:
            world.begin()
            _chaos_phase(world)
            if not world.oracle.violations:
                _liveness_phase(world)
        finally:
            world.shutdown()
    return RunResult(spec, swarm, world.oracle.violations, world.injected, world.trace, world.step)


def _stats_checked(world: World) -> bool:
    return not {G3_IDENTITY, G3_LOST} <= world.swarm.skip_checks


def _check_stats(world: World) -> None:
    if _stats_checked(world) and world.oracle.accounting_disturbance is None and not world.counters_missing():
        stats = world.read_stats()
        if stats is not None:
            world.oracle.stats_checked(
                stats, world.step, world.fault_free(), world.stranded_above_counters, world.unclaimed_gap_slots()
            )


def _chaos_phase(world: World) -> None:
    violations = world.oracle.violations
    while world.step < world.swarm.chaos_steps and not violations:
        if not world.advance() and not world.skip_idle_time():
            break
        if world.step % QUIESCE_EVERY_STEPS == 0:
            world.quiesce()
            if not violations:
                _check_stats(world)
    if not violations:
        world.quiesce()


def _liveness_phase(world: World) -> None:
    world.start_liveness()
    if not world.oracle.violations:
        _check_stats(world)
    oracle = world.oracle
    start = last_progress = world.step
    walk = 0 if oracle.liveness_exempt is not None else world.slots_to_walk()
    budget = LIVENESS_STEP_BUDGET + min(walk // SLOTS_WALKED_PER_STEP, MAX_WALK_STEPS)
    world.note("world", f"liveness: {walk} unclaimed slots below the counters, {budget} steps to deliver")
    deliveries = oracle.delivery_count
    while not oracle.violations:
        if world.step - start > budget:
            _liveness_failed(world, budget)
            return
        writing = world.liveness_writes_left > 0 or any(
            party.actor.busy for party in world.parties if party.role is Role.WRITER
        )
        if not writing and world.step % DRAIN_CHECK_EVERY_STEPS == 0 and not oracle.undelivered_liveness():
            world.quiesce()
            stats = world.read_stats()
            if stats is not None and _drained(world, stats):
                if world.oracle.accounting_disturbance is None and _stats_checked(world):
                    oracle.stats_checked(
                        stats,
                        world.step,
                        world.fault_free(),
                        world.stranded_above_counters,
                        world.unclaimed_gap_slots(),
                        lossless=world.lossless(),  # drained: every message delivered, so nothing may count lost
                    )
                return
        if oracle.delivery_count != deliveries:
            deliveries, last_progress = oracle.delivery_count, world.step
        elif world.step - last_progress > STALLED_STEPS:
            world.jump_time(world.max_lease_seconds + 2 * MAX_CLOCK_SKEW_SECONDS + 1)
            last_progress = world.step
        if not world.advance() and not world.skip_idle_time():
            _liveness_failed(world, budget)
            return


def _drained(world: World, stats) -> bool:
    return stats.depth == 0 and stats.leased == 0 and not any(party.held for party in world.parties)


def _liveness_failed(world: World, budget: int) -> None:
    if world.oracle.liveness_exempt is not None:
        world.note("world", f"liveness not checked: {world.oracle.liveness_exempt}")
        return
    pending = world.oracle.undelivered_liveness()
    if pending and world.in_passed_slots(pending) == pending:
        world.note("world", f"liveness: {', '.join(pending[:8])} written into slots readers had passed (a counter"
                   " gone back before its repair: a documented limit)")
        return
    if pending:
        message = (
            f"{len(pending)} messages written after the faults stopped were never delivered: {', '.join(pending[:8])}"
        )
    else:
        stats = world.read_stats()
        counts = f"depth {stats.depth}, leased {stats.leased}" if stats is not None else "stats() failing"
        message = f"the queue did not drain after the faults stopped ({counts})"
    world.oracle.violate(G2_LIVENESS, world.step, "world", f"{message} within {budget} steps", pending)


def shrink(result: RunResult, progress: Callable[[str], None] = lambda line: None) -> RunResult:
    """The smallest run found that still violates the same guarantee (tests/sim/seeds.py)."""
    return seeds.shrink(result, run, progress)


# -- reports -----------------------------------------------------------------------------------------


def failure_report(result: RunResult, title: str, full_trace: bool = False) -> list[str]:
    facts = [f"faults injected: {len(result.injected)}, steps: {result.steps}"]
    heading = f"preset {result.spec.preset}"
    return seeds.failure_report(result, title, heading, facts, "tests.sim", "messages", full_trace)
