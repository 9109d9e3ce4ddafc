"""The fault model of the commit protocol, each seed's swarm, and the seeded fault plan.

A fault is decided at one step, at the call a party is about to make (a
Datastore RPC, or a queue call: lease, ack, release), from the seed and the
step alone: step ``n`` draws from ``Random("<seed>:<n>")``, so replaying a run
without one of its faults leaves every other fault where it was (that is how
a failure shrinks).
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, field

from clicks import counters


class FaultKind(enum.Enum):
    CONFLICT = "conflict"
    """A commit fails before applying with CONCURRENT_TRANSACTION (ndb runs the transaction again)."""
    TIMEOUT = "timeout"
    """A commit fails before applying with TIMEOUT."""
    APPLIED_THEN_FAILED = "applied-then-failed"
    """A commit applies, then its caller sees TIMEOUT, CONCURRENT_TRANSACTION or INTERNAL_ERROR."""
    READ_TIMEOUT = "read-timeout"
    """A Get, RunQuery, Next or BeginTransaction fails with TIMEOUT."""
    STALL = "stall"
    """The party stops for 0.5 to 3 lease lengths before the call (at a commit, half the
    time after it applied, the reply on its way), then carries on."""
    KILL = "kill"
    """The party's process dies before the call (at a commit, half the time after it applied)."""
    LOST_ACK = "lost-ack"
    """A processor's ack never reaches the queue: the lease comes back after its deadline."""
    GROWN_REDELIVERY = "grown-redelivery"
    """A lease taken over brings 1-3 messages its earlier deliveries lacked."""


COMMIT_CALLS = frozenset({"Commit", "Put", "Delete"})
"""A ``Commit``, or a ``Put``/``Delete`` outside a transaction (which commits by itself)."""
READ_CALLS = frozenset({"Get", "RunQuery", "Next", "BeginTransaction"})
QUEUE_CALLS = frozenset({"lease", "ack", "release"})

COMMIT_FAULTS = (FaultKind.CONFLICT, FaultKind.TIMEOUT, FaultKind.APPLIED_THEN_FAILED)
PARTY_FAULTS = (FaultKind.STALL, FaultKind.KILL)
FAULT_ORDER = (*COMMIT_FAULTS, FaultKind.READ_TIMEOUT, *PARTY_FAULTS, FaultKind.LOST_ACK, FaultKind.GROWN_REDELIVERY)


def applies(kind: FaultKind, call: str, in_transaction: bool) -> bool:
    """Whether a fault of ``kind`` can happen at ``call`` (a datastore_v3 method or a queue call)."""
    if kind in COMMIT_FAULTS:
        return call == "Commit" or (call in COMMIT_CALLS and not in_transaction)
    if kind is FaultKind.READ_TIMEOUT:
        return call in READ_CALLS
    if kind in PARTY_FAULTS:
        return call in READ_CALLS | COMMIT_CALLS | QUEUE_CALLS
    if kind is FaultKind.LOST_ACK:
        return call == "ack"
    return call == "lease"  # GROWN_REDELIVERY


class Target(enum.Enum):
    """Whose calls the faults hit."""

    ALL = "all"
    PROCESSORS = "processor"
    FOLDERS = "folder"


@dataclass(frozen=True)
class Swarm:
    """One seed's world: its parties, its events, the store's limits, and which faults are on."""

    processors: int
    folders: int
    """Fold tasks that may run at once (a fold task retried while the first still runs)."""
    items: int
    messages: int
    batch_size: int
    lease_seconds: float
    span_hours: int
    """Events are dated over this many hours from ``DAY0``."""
    bot_share: float
    clock_skew_seconds: float
    limits: counters.StoreLimits
    consistency: float
    """The probability that a commit is visible to the next global query (the stub's
    high-replication policy); the liveness phase sets it to 1."""
    chaos_steps: int
    fault_rates: dict[FaultKind, float] = field(default_factory=dict)
    target: Target = Target.ALL

    def describe(self) -> str:
        faults = ", ".join(f"{kind.value} {rate:.1%}" for kind, rate in self.fault_rates.items()) or "none"
        limits = self.limits
        return (
            f"{self.processors} processors, {self.folders} folders; {self.messages} messages over {self.items} items,"
            f" {self.span_hours} h, batches of <= {self.batch_size}, leases of {self.lease_seconds:.1f} s,"
            f" clocks +-{self.clock_skew_seconds:.1f} s\n"
            f"store limits: split past {limits.shard_split_bytes} B, <= {limits.max_shards} shards,"
            f" <= {limits.max_entities_per_fold} entities a fold; consistency {self.consistency:.2f}\n"
            f"chaos steps {self.chaos_steps}; faults on {self.target.value} calls: {faults}"
        )


MAX_CLOCK_SKEW_LEASES = 0.25
"""Processes' clocks differ by up to this share of a lease either way (App Engine's: seconds,
against 60 s leases): a lease goes to another holder early only by that much, so it comes back
while its holder still works on it through the faults (a stall, a kill, a lost ack)."""

FAULT_RATE_RANGE = {
    FaultKind.CONFLICT: (0.05, 0.3),
    FaultKind.TIMEOUT: (0.03, 0.2),
    FaultKind.APPLIED_THEN_FAILED: (0.03, 0.2),
    FaultKind.READ_TIMEOUT: (0.005, 0.04),
    FaultKind.STALL: (0.005, 0.03),
    FaultKind.KILL: (0.003, 0.02),
    FaultKind.LOST_ACK: (0.05, 0.3),
    FaultKind.GROWN_REDELIVERY: (0.1, 0.5),
}
"""Per applicable call, when the swarm switches the kind on (a commit is about one call in five)."""


def draw_swarm(seed: int, only: frozenset[FaultKind] | None = None) -> Swarm:
    """Each fault kind on with p=1/2 (Groce et al.'s swarm testing), or each of ``only``
    and no other, and the rest of the world, from the seed."""
    rng = random.Random(f"{seed}:swarm")
    switched_on = {kind: rng.random() < 0.5 for kind in FAULT_ORDER}
    rates = {
        kind: rng.uniform(*FAULT_RATE_RANGE[kind])
        for kind in FAULT_ORDER
        if (switched_on[kind] if only is None else kind in only)
    }
    lease_seconds = rng.uniform(1.0, 5.0)
    return Swarm(
        processors=rng.randint(1, 5),
        folders=rng.choice((1, 1, 2)),
        items=rng.choice((3, 12, 40, 150)),
        messages=rng.randint(20, 300),
        batch_size=rng.choice((1, 5, 20, 60)),
        lease_seconds=lease_seconds,
        span_hours=rng.choice((1, 5, 30, 72)),
        bot_share=rng.choice((0.0, 0.1)),
        clock_skew_seconds=rng.choice((0.0, MAX_CLOCK_SKEW_LEASES * lease_seconds)),
        limits=counters.StoreLimits(
            shard_split_bytes=rng.choice((60, 150, 400, 100_000)),
            max_shards=rng.choice((2, 4, 16, 64)),
            max_entities_per_fold=rng.choice((4, 9, 30, 490)),
        ),
        consistency=rng.choice((1.0, rng.uniform(0.2, 0.9))),
        chaos_steps=rng.randint(300, 1500),
        fault_rates=rates,
        target=rng.choice((Target.ALL, Target.ALL, Target.PROCESSORS, Target.FOLDERS)),
    )


@dataclass(frozen=True)
class PlannedFault:
    step: int
    kind: FaultKind


class FaultPlan:
    """Which fault, if any, happens at a step; ``replay`` pins the run to exactly those faults."""

    def __init__(self, seed: int, swarm: Swarm, replay: tuple[PlannedFault, ...] | None = None) -> None:
        self.seed = seed
        self.swarm = swarm
        self.replay = None if replay is None else {fault.step: fault.kind for fault in replay}

    def fault_at(self, step: int, call: str, in_transaction: bool, role: str) -> FaultKind | None:
        if self.swarm.target is not Target.ALL and role != self.swarm.target.value:
            return None
        if self.replay is not None:
            kind = self.replay.get(step)
            return kind if kind is not None and applies(kind, call, in_transaction) else None
        rng = random.Random(f"{self.seed}:{step}")
        for kind, rate in self.swarm.fault_rates.items():
            if rng.random() < rate and applies(kind, call, in_transaction):
                return kind
        return None

    def details(self, step: int) -> random.Random:
        """The fault's own choices (how long a stall, which error, before or after applying)."""
        return random.Random(f"{self.seed}:{step}:details")
