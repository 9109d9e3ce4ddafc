"""The simulated processes: writers, readers and lease holders, each with its own Queue and clock.

A party is one process using the queue. Between operations it is idle; the
world starts its next operation when the scheduler picks it, and the
operation runs on the party's ``Actor`` thread, one cache call per step. What
it does next is drawn from its own generator (seed and party name), among
the operation kinds the swarm switched on:

* writers ``write`` or ``write_multi`` JSON objects with unique ids (now and
  then one nested nearly as deep as ``json`` goes, or a batch over App
  Engine's 32 MB per call), and retry a write whose error says nothing was
  stored, as a caller would;
* readers ``read_multi`` with a random ``max_items``;
* lease holders ``lease`` with random ``max_items`` and ``seconds``, then ack
  it, release it, stall past its deadline and ack late, die holding it, or
  hoard it (hold it, leasing more, until the liveness phase).

Each reports what it sent and got to the oracle as its calls return.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clickqueue import Lease
from tests.sim.faults import MAX_CLOCK_SKEW_SECONDS
from tests.sim.oracle import Delivery, Phase, WriteOutcome, describe_error, write_error_outcomes
from tests.sim.scheduler import Actor, OpAborted

if TYPE_CHECKING:
    from tests.sim.world import World


class Role(enum.Enum):
    WRITER = "w"
    READER = "r"
    LEASER = "l"


class OpKind(enum.Enum):
    WRITE = "write"
    WRITE_MULTI = "write-multi"
    WRITE_DEEP = "write-deep"
    WRITE_HUGE = "write-huge"
    READ_MULTI = "read-multi"
    LEASE_ACK = "lease-ack"
    LEASE_RELEASE = "lease-release"
    LEASE_STALL = "lease-stall"
    LEASE_DIE = "lease-die"
    LEASE_HOARD = "lease-hoard"
    STATS = "stats"


WRITE_OPS = (OpKind.WRITE, OpKind.WRITE_MULTI, OpKind.WRITE_DEEP, OpKind.WRITE_HUGE)
LEASE_PLANS = (OpKind.LEASE_ACK, OpKind.LEASE_RELEASE, OpKind.LEASE_STALL, OpKind.LEASE_DIE, OpKind.LEASE_HOARD)
CHAOS_ONLY_OPS = frozenset({OpKind.WRITE_DEEP, OpKind.WRITE_HUGE, OpKind.LEASE_DIE, OpKind.LEASE_HOARD})
"""Not in the liveness phase: they are faults of their own, or refused by design."""

HOARD_LEASE_SECONDS = 3600.0
MAX_WRITE_RETRIES = 2
DEEP_MESSAGE_LEVELS = (900, 999)
HUGE_BATCH = (40, 900_000)
"""40 messages of 900 KB: 36 MB, over App Engine's 32 MB per call."""

_MESSAGE_ID = re.compile(rb'"id":"(m\d+)"')


def message_ids_in(value: bytes) -> list[str]:
    """The ids of the simulation's messages stored in ``value`` (a message, a frame of
    them, or a lease's mark holding either), in their order there."""
    return [match.decode() for match in _MESSAGE_ID.findall(value)]


@dataclass
class OpContext:
    """The queue call a party is in: what the gate counts and the oracle needs."""

    label: str
    ids: tuple[str, ...]
    started_step: int
    clock_low: float
    clock_high: float
    calls: int = 0
    raised: bool = False
    deleted_ids: list[str] = field(default_factory=list)
    allowed_deletions: set[str] = field(default_factory=set)


@dataclass
class HeldLease:
    lease: Lease
    plan: OpKind
    due_at: float


@dataclass(frozen=True)
class Operation:
    label: str
    run: Callable[[], None]
    ids: tuple[str, ...] = ()
    """The messages it writes, or the lease it settles (for the trace)."""


class Party:
    """One process: its role, its Queue (rebuilt when it is reborn), its clock and what it holds."""

    def __init__(self, world: World, role: Role, index: int) -> None:
        self.world = world
        self.role = role
        self.name = f"{role.value}{index}"
        self.rng = random.Random(f"{world.seed}:party:{self.name}")
        self.actor = Actor(self.name)
        self.incarnation = 0
        self.dead = False
        self.revive_at = 0.0
        self.skew_seconds = 0.0
        self.queue: Any = None
        self.held: list[HeldLease] = []
        self.idle_until = 0.0
        self.retry_bodies: list[dict] | None = None
        self.retries = 0
        self.dead_node_marks: dict[int, float] = {}
        self.current: OpContext | None = None
        self.reads = 0

    # -- life -------------------------------------------------------------------------------

    def be_born(self) -> None:
        """Start a fresh process: a new Queue that never saw the queue, a new clock skew."""
        self.incarnation += 1
        self.dead = False
        self.skew_seconds = self.rng.uniform(-MAX_CLOCK_SKEW_SECONDS, MAX_CLOCK_SKEW_SECONDS)
        self.held = []
        self.retry_bodies = None
        self.dead_node_marks = {}
        self.idle_until = 0.0
        self.queue = self.world.make_queue(self)

    def die(self, revive_at: float) -> None:
        self.dead = True
        self.revive_at = revive_at

    def clock(self) -> float:
        now = self.world.now + self.skew_seconds
        if self.current is not None:
            self.current.clock_low = min(self.current.clock_low, now)
            self.current.clock_high = max(self.current.clock_high, now)
        return now

    @property
    def dead_nodes(self) -> frozenset[int]:
        return frozenset(node for node, until in self.dead_node_marks.items() if until > self.world.now)

    # -- choosing what to do ---------------------------------------------------------------------

    def has_work(self) -> bool:
        if self.dead or self.actor.busy or self.world.now < self.idle_until:
            return False
        if self.role is Role.WRITER:
            return self.world.writes_allowed()
        if self.role is Role.LEASER:
            return self._due_lease() is not None or not self._holds_unhoarded()
        return True

    def next_operation(self) -> Operation:
        if self.role is Role.WRITER:
            return self._write_operation()
        if self.role is Role.READER:
            return self._read_operation()
        held = self._due_lease()
        if held is not None:
            return self._settle_operation(held)
        return self._lease_operation()

    def _kinds(self, candidates: tuple[OpKind, ...]) -> list[OpKind]:
        """The swarm's kinds among ``candidates``; after the faults stop, lease holders also ack
        (a swarm whose holders only release would never finish anything)."""
        kinds = [kind for kind in candidates if kind in self.world.swarm.op_kinds]
        if self.world.phase is Phase.LIVENESS:
            kinds = [kind for kind in kinds if kind not in CHAOS_ONLY_OPS]
            if OpKind.LEASE_ACK in candidates and OpKind.LEASE_ACK not in kinds:
                kinds.append(OpKind.LEASE_ACK)
        return kinds

    def _maybe_stats(self) -> Operation | None:
        if OpKind.STATS in self.world.swarm.op_kinds and self.rng.random() < 0.05:
            return Operation("stats()", lambda: self._run_call("stats()", self.queue.stats))
        return None

    # -- writers ----------------------------------------------------------------------------------

    def _write_operation(self) -> Operation:
        if self.retry_bodies is not None:
            bodies, self.retry_bodies = self.retry_bodies, None
            self.retries += 1
            return self._write(bodies, "write_multi" if len(bodies) > 1 else "write", retry=True)
        stats = self._maybe_stats()
        if stats is not None:
            return stats
        self.retries = 0
        kind = self.rng.choice(self._kinds(WRITE_OPS) or [OpKind.WRITE])
        if kind is OpKind.WRITE:
            return self._write([self._new_body()], "write")
        if kind is OpKind.WRITE_MULTI:
            count = self.rng.choice(self.world.swarm.write_sizes)
            return self._write([self._new_body() for _ in range(count)], "write_multi")
        if kind is OpKind.WRITE_DEEP:
            levels = self.rng.randint(*DEEP_MESSAGE_LEVELS)
            deep: list = []
            for _ in range(levels):
                deep = [deep]
            return self._write([self._new_body(deep=deep)], "write_multi", note=f"nested {levels} deep")
        count, size = HUGE_BATCH
        pad = "x" * size
        return self._write([self._new_body(pad=pad) for _ in range(count)], "write_multi")

    def _new_body(self, **extra: Any) -> dict:
        body = {"id": self.world.new_message_id(), "from": self.name, **extra}
        self.world.oracle.new_message(body, self.world.phase)
        return body

    def _write(self, bodies: list[dict], call: str, retry: bool = False, note: str = "") -> Operation:
        ids = [body["id"] for body in bodies]
        label = f"{call}({_ids(ids)}{', ' + note if note else ''}){' retry' if retry else ''}"

        def run() -> None:
            oracle, world = self.world.oracle, self.world
            attempts = oracle.write_started(self.name, ids, world.step)
            try:
                if call == "write":
                    self.queue.write(bodies[0])
                else:
                    self.queue.write_multi(bodies)
            except OpAborted:
                oracle.write_finished(self.name, ids, attempts, WriteOutcome.UNKNOWN, "died mid-call", world.step)
                raise
            except Exception as error:
                outcomes = write_error_outcomes(error, len(ids))
                for outcome in set(outcomes):
                    indices = [index for index, each in enumerate(outcomes) if each is outcome]
                    oracle.write_finished(
                        self.name,
                        [ids[index] for index in indices],
                        [attempts[index] for index in indices],
                        outcome,
                        describe_error(error),
                        world.step,
                    )
                self.world.report_error(self, label, error)
                not_stored = [body for body, outcome in zip(bodies, outcomes) if outcome is WriteOutcome.NOT_STORED]
                retryable = "deep" not in bodies[0] and "pad" not in bodies[0]
                if not_stored and retryable and self.retries < MAX_WRITE_RETRIES:
                    self.retry_bodies = not_stored
                return
            oracle.write_finished(self.name, ids, attempts, WriteOutcome.OK, "", world.step)

        return Operation(label, run, tuple(ids))

    # -- readers ----------------------------------------------------------------------------------

    def _read_operation(self) -> Operation:
        stats = self._maybe_stats()
        if stats is not None:
            return stats
        max_items = self.rng.choice(self.world.swarm.read_sizes)
        self.reads += 1
        label = f"read_multi({max_items}) #{self.reads}"

        def run() -> None:
            try:
                messages = self._run_call(label, lambda: self.queue.read_multi(max_items))
            except OpAborted:
                self.world.oracle.read_ended_mid_call(max_items)
                raise
            if messages is None:
                self.world.oracle.read_ended_mid_call(max_items)
            else:
                ids = self._deliver(label, messages, max_items)
                self.current.allowed_deletions.update(ids)

        return Operation(label, run)

    # -- lease holders -------------------------------------------------------------------------------

    def _holds_unhoarded(self) -> bool:
        return any(held.plan is not OpKind.LEASE_HOARD for held in self.held)

    def _due_lease(self) -> HeldLease | None:
        for held in self.held:
            hoard_over = held.plan is OpKind.LEASE_HOARD and self.world.phase is Phase.LIVENESS
            if hoard_over or (held.plan is not OpKind.LEASE_HOARD and held.due_at <= self.world.now):
                return held
        return None

    def _lease_operation(self) -> Operation:
        stats = self._maybe_stats()
        if stats is not None:
            return stats
        plan = self.rng.choice(self._kinds(LEASE_PLANS) or [OpKind.LEASE_ACK])
        max_items = self.rng.choice(self.world.swarm.lease_sizes)
        seconds = HOARD_LEASE_SECONDS if plan is OpKind.LEASE_HOARD else self.rng.choice(self.world.swarm.lease_seconds)
        label = f"lease({max_items}, {seconds:g}s) for {plan.value}"

        def run() -> None:
            lease = self._run_call(label, lambda: self.queue.lease(max_items, seconds))
            if not lease:
                return
            self.world.note_lease_seconds(seconds)
            self._deliver(f"lease {lease.lease_id} attempt {lease.attempt}", lease.messages, max_items, lease, seconds)
            if plan is OpKind.LEASE_DIE:
                self.world.kill_after_operation(self, "died holding its lease")
                return
            due_at = self.world.now
            if plan is OpKind.LEASE_STALL:
                due_at += seconds + self.rng.uniform(0, 2 * MAX_CLOCK_SKEW_SECONDS)
                self.idle_until = due_at
            self.held.append(HeldLease(lease, plan, due_at))

        return Operation(label, run)

    def _settle_operation(self, held: HeldLease) -> Operation:
        self.held.remove(held)
        lease = held.lease
        oracle = self.world.oracle
        if held.plan is OpKind.LEASE_RELEASE:
            label = f"release {lease.lease_id} attempt {lease.attempt}"

            def release() -> None:
                oracle.release_started(lease.lease_id, lease.attempt, self.world.step)
                self._run_call(label, lease.release)

            return Operation(label, release, (lease.lease_id,))
        label = f"ack {lease.lease_id} attempt {lease.attempt}"

        def ack() -> None:
            started = self.current.started_step
            result = self._run_call(label, lease.ack)
            self.current.allowed_deletions.update(oracle.lease_messages(lease.lease_id))
            if result is not None:
                oracle.ack_returned(self.name, lease.lease_id, lease.attempt, result, started, self.world.step)

        return Operation(label, ack, (lease.lease_id,))

    # -- shared ---------------------------------------------------------------------------------------

    def _run_call(self, label: str, call: Callable[[], Any]) -> Any:
        """Run one queue call; an error is reported (and the op marked raised), giving None."""
        try:
            return call()
        except OpAborted:
            raise
        except Exception as error:
            self.world.report_error(self, label, error)
            return None

    def _deliver(
        self, via: str, messages: list, max_items: int, lease: Lease | None = None, seconds: float = 0.0
    ) -> list[str]:
        context = self.current
        delivery = Delivery(
            party=self.name,
            via=via,
            started_step=context.started_step,
            step=self.world.step,
            clock_low=context.clock_low,
            clock_high=context.clock_high,
            lease_id=lease.lease_id if lease else None,
            attempt=lease.attempt if lease else 0,
            seconds=seconds,
        )
        ids = self.world.oracle.delivered(delivery, messages, max_items)
        self.world.note(self.name, f"{via}: delivered {_ids(ids)}", [*ids, *filter(None, [delivery.lease_id])])
        return ids


def _ids(ids: list[str]) -> str:
    return ",".join(ids) if len(ids) <= 4 else f"{','.join(ids[:3])},...{ids[-1]} ({len(ids)})"
