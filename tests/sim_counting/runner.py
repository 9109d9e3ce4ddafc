"""A run of one seed: the chaos phase, the liveness phase, the final check; reports and shrinking.

Chaos: ``swarm.chaos_steps`` steps with faults on, the oracle's ``never
ahead`` check every ``CHECK_EVERY_STEPS``. Liveness: faults off (and every
commit visible to global queries), until every lease is acked and a fold
begun after the last ack found nothing more to fold, within
``LIVENESS_STEPS``. Then every read the app offers must equal the events
delivered at least once. The run stops at the first violation.

A failure shrinks as the queue's simulation's does (tests/sim/seeds.py): replay
exactly the faults injected (the same run), cut the chaos phase, then drop
faults (delta debugging) while the same check still fails.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

from google.appengine.ext import ndb

from tests.sim import seeds
from tests.sim.oracle import Violation
from tests.sim.seeds import parse_spec, spec_token
from tests.sim.trace import Trace
from tests.sim_counting.faults import FaultKind, FaultPlan, PlannedFault, Swarm, draw_swarm
from tests.sim_counting.oracle import LIVENESS
from tests.sim_counting.protocol import PROTOCOLS
from tests.sim_counting.world import DAY0, World

CHECK_EVERY_STEPS = 50
LIVENESS_STEPS = 30_000
SEEN = ("leases", "redeliveries", "overlapping deliveries", "late finishes", "conflicts met", "folds", "splits")


@dataclass(frozen=True)
class RunSpec:
    """One run, as one command-line token: the seed, the protocol, and what a replay pins down."""

    seed: int
    protocol: str = "real"
    chaos_steps: int | None = None
    faults: tuple[PlannedFault, ...] | None = None
    """Exactly these faults (None: the seed's own)."""
    only: frozenset[FaultKind] | None = None
    """The fault kinds switched on (None: the seed's swarm picks them)."""

    def token(self) -> str:
        only = "" if self.only is None else ",only=" + "+".join(sorted(kind.value for kind in self.only))
        return spec_token(self, "protocol") + only

    @classmethod
    def parse(cls, token: str, protocol: str = "real", only: frozenset[FaultKind] | None = None) -> RunSpec:
        """A seed number (with ``protocol`` and ``only``), or a token from ``token()``."""
        fields = dict(part.split("=", 1) for part in token.split(",") if "=" in part)
        if "only" in fields:
            only = parse_kinds(fields["only"])
        rest = ",".join(part for part in token.split(",") if not part.startswith("only="))
        return cls(**parse_spec(rest, "protocol", protocol, FaultKind, PlannedFault), only=only)


def parse_kinds(text: str) -> frozenset[FaultKind]:
    """``stall+lost-ack`` (or with commas)."""
    return frozenset(FaultKind(kind) for kind in text.replace(",", "+").split("+") if kind)


@dataclass
class RunResult:
    spec: RunSpec
    swarm: Swarm
    violations: list[Violation]
    injected: list[PlannedFault]
    trace: Trace
    steps: int
    seen: Counter
    """What happened (``World.seen``)."""

    @property
    def failed(self) -> bool:
        return bool(self.violations)

    def fault_counts(self) -> str:
        return describe_faults(Counter(fault.kind.value for fault in self.injected))


def run(spec: RunSpec, keep_trace: bool = False) -> RunResult:
    swarm = draw_swarm(spec.seed, spec.only)
    if spec.chaos_steps is not None:
        swarm = replace(swarm, chaos_steps=spec.chaos_steps)
    world = World(spec.seed, swarm, FaultPlan(spec.seed, swarm, spec.faults), PROTOCOLS[spec.protocol], keep_trace)
    oracle = world.oracle
    try:
        world.begin()
        _run_until(world, lambda: world.step >= swarm.chaos_steps)
        world.faults_off()
        world.note("world", "faults off")
        budget = world.step + LIVENESS_STEPS
        _run_until(world, lambda: world.quiet() or world.step >= budget)
        if not oracle.violations and not world.quiet():
            unsettled = world.book.unsettled()
            oracle.violate(
                LIVENESS,
                world.step,
                "world",
                f"not quiet {LIVENESS_STEPS} steps after the faults stopped: {len(unsettled)} leases not acked"
                f" ({', '.join(unsettled[:8])}), {len(world.book.waiting)} messages never leased, "
                f"a fold found nothing more at step {world.clean_fold_step}, last ack at step {world.last_ack_step}",
                unsettled,
            )
        if not oracle.violations:
            ndb.get_context().clear_cache()
            span = (DAY0, DAY0 + swarm.span_hours * 3600)
            oracle.check_exactly_once(world.step, [f"item-{n}" for n in range(swarm.items)], span)
    finally:
        world.shutdown()
    return RunResult(spec, swarm, oracle.violations, world.injected, world.trace, world.step, world.seen)


def _run_until(world: World, done: Callable[[], bool]) -> None:
    next_check = world.step + CHECK_EVERY_STEPS
    while not done() and not world.oracle.violations:
        world.advance()
        if world.step >= next_check:
            next_check = world.step + CHECK_EVERY_STEPS
            ndb.get_context().clear_cache()
            world.oracle.check_never_ahead(world.step)


def shrink(result: RunResult, progress: Callable[[str], None] = lambda line: None) -> RunResult:
    """The smallest run found that still fails the same check (tests/sim/seeds.py)."""
    return seeds.shrink(result, run, progress)


# -- reports -------------------------------------------------------------------------------------


def describe_faults(counts: Counter) -> str:
    return ", ".join(f"{kind} {count}" for kind, count in sorted(counts.items())) or "none"


def describe_seen(seen: Counter) -> str:
    return ", ".join(f"{name} {seen[name]}" for name in SEEN)


def failure_report(result: RunResult, title: str, full_trace: bool = False) -> list[str]:
    facts = [f"steps {result.steps}; {describe_seen(result.seen)}", f"faults injected: {result.fault_counts()}"]
    heading = f"protocol {result.spec.protocol}"
    return seeds.failure_report(result, title, heading, facts, "tests.sim_counting", "leases", full_trace)
