"""One run's world: the SDK's stubs, simulated time, the lease book, the parties, and each call's gate.

``World.advance`` is one step: the scheduler picks a party that can move and
time moves on; the party starts its next operation (on a fresh thread: a
fresh request, with a fresh ndb context) or makes the call it is parked at.
Around each call (``PartyGate``) the fault plan is asked about this step and
its fault applied. Nothing here decides what is correct: the oracle does.
"""

from __future__ import annotations

import enum
import random
import threading
from pathlib import Path
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.appengine.api import apiproxy_stub_map
from google.appengine.api.memcache import memcache_stub
from google.appengine.datastore import datastore_stub_util
from google.appengine.ext import ndb
from google.appengine.ext import testbed as testbed_module

from clicks.events import Event
from tests.sim.scheduler import MEAN_STEP_SECONDS, Actor, PartyKilled, Scheduler
from tests.sim.trace import Trace
from tests.sim_counting.datastore import SimDatastore, datastore_error, is_conflict
from tests.sim_counting.faults import COMMIT_CALLS, FaultKind, FaultPlan, PlannedFault, Swarm
from tests.sim_counting.leases import LeaseBook
from tests.sim_counting.oracle import DATASTORE_ERRORS, ERRORS, Oracle
from tests.sim_counting.protocol import Protocol
from tests.support.processes import APP_ID

REPO_ROOT = Path(__file__).resolve().parents[2]
"""Where index.yaml is: the stub, as App Engine, refuses a query without its index."""
START_TIME = 1_750_000_000.0
DAY0 = 1_749_945_600
"""A UTC midnight: events are dated from here, over the swarm's span."""
IDLE_SECONDS = (0.05, 0.5)
"""How long a processor that found nothing to lease waits."""
FOLD_EVERY_SECONDS = (0.3, 1.0)
"""Fold tasks come about once a second (at once when a fold said there is more)."""
RESTART_SECONDS = (0.1, 1.0)
"""A killed process's lane takes work again after this long."""
STALL_LEASES = (0.5, 3.0)
"""A stall lasts this many lease lengths."""
ARRIVING_SHARE = 0.7
"""Messages arrive over this share of the chaos phase's expected time."""
APPLIED_THEN_FAILED_ERRORS = ("TIMEOUT", "CONCURRENT_TRANSACTION", "INTERNAL_ERROR")


class SimMemcache(memcache_stub.MemcacheServiceStub):
    """The SDK's memcache stub (ndb caches entities there), on the simulated clock (ndb's
    locks expire by it), and run on the caller's thread: the stub says it is thread-safe, so
    the SDK would run its calls on a thread pool, outside the schedule."""

    THREADSAFE = False


class Role(enum.Enum):
    PROCESSOR = "processor"
    FOLDER = "folder"


@dataclass(eq=False)
class Party:
    name: str
    role: Role
    skew: float
    rng: random.Random
    wake_at: float = 0.0
    actor: Actor | None = None
    killed: bool = False
    label: str = ""
    """The operation under way, for the trace."""
    subjects: tuple[str, ...] = ()
    """Lease ids it is about."""


def make_events(seed: int, swarm: Swarm) -> tuple[dict[str, Event], dict[str, float]]:
    """The messages of the run, ``m0``, ``m1``...: clicks and views of items drawn Zipf(1.1),
    dated over the span; and when each arrives in the queue (in order, over most of the chaos phase)."""
    rng = random.Random(f"{seed}:events")
    items = [f"item-{n}" for n in range(swarm.items)]
    weights = [1 / (rank + 1) ** 1.1 for rank in range(swarm.items)]
    arriving_seconds = ARRIVING_SHARE * swarm.chaos_steps * MEAN_STEP_SECONDS
    events, arrivals = {}, {}
    for n in range(swarm.messages):
        events[f"m{n}"] = Event(
            type="click" if rng.random() < 0.2 else "view",
            item=rng.choices(items, weights)[0],
            at=DAY0 + rng.randrange(swarm.span_hours * 3600),
            bot=rng.random() < swarm.bot_share,
        )
        arrivals[f"m{n}"] = START_TIME + arriving_seconds * n / swarm.messages
    return events, arrivals


@dataclass
class World:
    seed: int
    swarm: Swarm
    plan: FaultPlan
    protocol: Protocol
    keep_trace: bool
    now: float = START_TIME
    step: int = 0
    chaos: bool = True
    stopping: bool = False
    injected: list[PlannedFault] = field(default_factory=list)
    last_ack_step: int = 0
    seen: Counter = field(default_factory=Counter)
    """What happened, for the reports: leases, redeliveries, overlapping deliveries (a lease
    delivered again while an earlier holder still records it), late finishes (a holder
    done after its lease went to another), conflicts met (the stub's own), folds, splits."""
    clean_fold_step: int = -1
    """The step at which the latest fold that found nothing more to fold began."""
    faults_off_step: int | None = None

    def __post_init__(self) -> None:
        self.events, arrivals = make_events(self.seed, self.swarm)
        self.book = LeaseBook(self.events, arrivals, self.swarm.lease_seconds)
        self.oracle = Oracle(self.events)
        self.trace = Trace(START_TIME, self.keep_trace)
        self.scheduler = Scheduler(self.seed)
        rng = random.Random(f"{self.seed}:parties")
        roles = [Role.PROCESSOR] * self.swarm.processors + [Role.FOLDER] * self.swarm.folders
        self.parties = [
            Party(
                f"{role.value[0]}{index}",
                role,
                rng.uniform(-self.swarm.clock_skew_seconds, self.swarm.clock_skew_seconds),
                random.Random(f"{self.seed}:party:{index}"),
            )
            for index, role in enumerate(roles)
        ]
        self.gates: dict[int, PartyGate] = {}
        self.recording: Counter[str] = Counter()
        """Holders of each lease inside ``count_batch`` now (a killed one stays)."""
        self.abandoned: list[Actor] = []
        self.consistency = datastore_stub_util.PseudoRandomHRConsistencyPolicy(
            probability=self.swarm.consistency, seed=self.seed
        )
        self.bed = testbed_module.Testbed()

    # -- the stubs ------------------------------------------------------------------------------

    def begin(self) -> None:
        self.bed.activate()
        self.bed.setup_env(app_id=APP_ID, overwrite=True)
        self.bed.init_memcache_stub()
        apiproxy_stub_map.apiproxy.ReplaceStub("memcache", SimMemcache(gettime=lambda: self.now))
        self.bed.init_datastore_v3_stub(
            require_indexes=True, root_path=str(REPO_ROOT), consistency_policy=self.consistency
        )
        stub = apiproxy_stub_map.apiproxy.GetStub("datastore_v3")
        apiproxy_stub_map.apiproxy.ReplaceStub("datastore_v3", SimDatastore(stub, self.gates.get))
        ndb.get_context().clear_cache()

    def shutdown(self) -> None:
        """End every party's thread (a parked call raises ``PartyKilled``), then the stubs.
        What the threads do while they unwind (ndb finishing what it can) is not checked."""
        self.stopping = True
        self.oracle.closed = True
        for actor in [*(party.actor for party in self.parties if party.actor), *self.abandoned]:
            try:
                actor.resume()
            finally:
                actor.stop()
        self.bed.deactivate()

    def faults_off(self) -> None:
        """No more faults; every commit visible to the next global query (Datastore's
        eventual consistency catches up), so the next fold finds every batch recorded."""
        self.chaos = False
        self.faults_off_step = self.step
        self.consistency.SetProbability(1.0)

    # -- steps ----------------------------------------------------------------------------------

    def advance(self) -> None:
        """One step: a party that can move moves (or time jumps to the first that can)."""
        ready = [party for party in self.parties if party.wake_at <= self.now]
        if not ready:
            self.now = min(party.wake_at for party in self.parties)
            return
        party, seconds = self.scheduler.next_step(ready)
        self.step += 1
        self.now += seconds
        if party.actor is None:
            party.actor = Actor(party.name)
            party.actor.start(lambda: self._operation(party))
        else:
            party.actor.resume()
        if party.killed:
            self.abandoned.append(party.actor)
            party.actor, party.killed = None, False
            party.wake_at = self.now + party.rng.uniform(*RESTART_SECONDS)
        elif not party.actor.busy:
            party.actor.stop()
            party.actor = None

    @property
    def busy(self) -> bool:
        return any(party.actor is not None for party in self.parties)

    def quiet(self) -> bool:
        """Every lease acked, nobody mid-call, and a fold begun after the last ack and after
        the faults stopped (a fold before may have queried a stale index) found nothing more."""
        assert self.faults_off_step is not None, "quiet is a state of the liveness phase"
        since = max(self.last_ack_step, self.faults_off_step)
        return self.book.settled and not self.busy and self.clean_fold_step > since

    def clock(self, party: Party) -> float:
        return self.now + party.skew

    def note(self, who: str, text: str, ids: tuple[str, ...] = ()) -> None:
        if not self.stopping:
            self.trace.note(self.step, self.now, who, text, ids)

    def fault_for(self, party: Party, call: str, in_transaction: bool) -> FaultKind | None:
        if not self.chaos:
            return None
        kind = self.plan.fault_at(self.step, call, in_transaction, party.role.value)
        if kind is not None:
            self.injected.append(PlannedFault(self.step, kind))
        return kind

    # -- operations (on the party's own thread) ---------------------------------------------------

    def _operation(self, party: Party) -> None:
        gate = PartyGate(self, party)
        ident = threading.get_ident()
        self.gates[ident] = gate
        try:
            if party.role is Role.PROCESSOR:
                self._process(party, gate)
            else:
                self._fold(party)
        finally:
            del self.gates[ident]

    def _process(self, party: Party, gate: PartyGate) -> None:
        """Lease a batch, record it with ``count_batch``, ack it; release it if recording failed (as drain does)."""
        party.label, party.subjects = "lease", ()
        fault, details = gate.queue_call("lease")
        grow = details.randint(1, 3) if fault is FaultKind.GROWN_REDELIVERY else 0
        delivery = self.book.lease(self.clock(party), self.swarm.batch_size, grow)
        if delivery is None:
            party.wake_at = self.now + party.rng.uniform(*IDLE_SECONDS)
            return
        lease_id, attempt = delivery.lease_id, delivery.attempt
        party.label = f"count_batch({lease_id} #{attempt}, {len(delivery.events)} events)"
        party.subjects = (lease_id,)
        self.oracle.handed(delivery)
        self.seen["redeliveries" if attempt > 1 else "leases"] += 1
        self.seen["overlapping deliveries"] += self.recording[lease_id] > 0
        self.note(party.name, f"leased {lease_id} #{attempt}: {', '.join(delivery.events)}", party.subjects)
        recorded = self._record(party, lease_id, attempt, delivery.events)
        if recorded is None:
            gate.queue_call("release")
            released = self.book.release(lease_id, attempt)
            self.note(party.name, f"release {lease_id} #{attempt} -> {released}", party.subjects)
            return
        self.note(party.name, f"{party.label} -> {recorded} recorded", party.subjects)
        self.oracle.answered(recorded, self.step, party.name, lease_id)
        fault, _ = gate.queue_call("ack")
        if fault is FaultKind.LOST_ACK:
            self.note(party.name, f"ack {lease_id} #{attempt} lost", party.subjects)
            return
        first = self.book.ack(lease_id)
        self.last_ack_step = self.step
        self.note(party.name, f"ack {lease_id} #{attempt} -> {first}", party.subjects)

    def _record(self, party: Party, lease_id: str, attempt: int, events: Mapping[str, Event]) -> int | None:
        """``count_batch`` of one delivery: how many it recorded, None if it raised."""
        self.recording[lease_id] += 1
        try:
            return self.protocol.count_batch(lease_id, events, self.clock(party))
        except DATASTORE_ERRORS as error:
            self.note(party.name, f"{party.label} raised {type(error).__name__}", party.subjects)
            return None
        except Exception as error:  # noqa: BLE001 (the oracle reports it)
            self.oracle.violate(ERRORS, self.step, party.name, f"{party.label} raised {error!r}", party.subjects)
            return None
        finally:
            self.recording[lease_id] -= 1
            self.seen["late finishes"] += self.book.leases[lease_id].attempt > attempt and not self.stopping

    def _fold(self, party: Party) -> None:
        party.label, party.subjects = "fold", ()
        began = self.step
        try:
            report = self.protocol.fold(self.clock(party), self.swarm.limits)
        except DATASTORE_ERRORS as error:
            self.note(party.name, f"fold raised {type(error).__name__}")
            party.wake_at = self.now + party.rng.uniform(*FOLD_EVERY_SECONDS)
            return
        except Exception as error:  # noqa: BLE001 (the oracle reports it)
            self.oracle.violate(ERRORS, self.step, party.name, f"fold raised {error!r}")
            return
        self.note(party.name, f"fold -> {report.batches} batches, split {report.split}, more {report.more}")
        self.seen["folds"] += 1
        self.seen["splits"] += report.split is not None
        if not report.more:
            self.clean_fold_step = max(self.clean_fold_step, began)
        party.wake_at = self.now + (0.0 if report.more else party.rng.uniform(*FOLD_EVERY_SECONDS))


class PartyGate:
    """Where one party's calls meet the schedule and the fault plan: park, then fail or stall or die as planned."""

    def __init__(self, world: World, party: Party) -> None:
        self.world = world
        self.party = party

    def _arrive(self, call: str, in_transaction: bool) -> tuple[FaultKind | None, random.Random]:
        world, party = self.world, self.party
        if world.stopping:
            raise PartyKilled(party.name)
        assert party.actor is not None
        party.actor.checkpoint()
        if world.stopping:
            raise PartyKilled(party.name)
        fault = world.fault_for(party, call, in_transaction)
        if fault is not None:
            world.trace.fault(world.step, world.now, party.name, f"{fault.value} at {call} [{party.label}]")
        return fault, world.plan.details(world.step)

    def _stall(self, details: random.Random, where: str) -> None:
        world, party = self.world, self.party
        seconds = world.swarm.lease_seconds * details.uniform(*STALL_LEASES)
        party.wake_at = world.now + seconds
        world.note(party.name, f"stalls {seconds:.1f} s {where} [{party.label}]", party.subjects)
        assert party.actor is not None
        party.actor.checkpoint()
        if world.stopping:
            raise PartyKilled(party.name)

    def _die(self, where: str) -> None:
        """The process is gone: this thread never runs again in the run."""
        world, party = self.world, self.party
        world.note(party.name, f"killed {where} [{party.label}]", party.subjects)
        party.killed = True
        assert party.actor is not None
        party.actor.checkpoint()
        raise PartyKilled(party.name)

    def _party_fault(self, fault: FaultKind | None, details: random.Random, where: str) -> None:
        if fault is FaultKind.STALL:
            self._stall(details, where)
        elif fault is FaultKind.KILL:
            self._die(where)

    def datastore_call(self, call: str, in_transaction: bool, send: Callable[[], Any]) -> Any:
        world, party = self.world, self.party
        fault, details = self._arrive(call, in_transaction)
        after = fault in (FaultKind.STALL, FaultKind.KILL) and call in COMMIT_CALLS and details.random() < 0.5
        if not after:
            self._party_fault(fault, details, f"before {call}")
        if fault in (FaultKind.CONFLICT, FaultKind.TIMEOUT, FaultKind.READ_TIMEOUT):
            name = "CONCURRENT_TRANSACTION" if fault is FaultKind.CONFLICT else "TIMEOUT"
            world.note(party.name, f"{call} -> {name}, not applied [{party.label}]", party.subjects)
            raise datastore_error(name)
        try:
            response = send()
        except Exception as error:
            world.seen["conflicts met"] += is_conflict(error)
            world.note(party.name, f"{call} -> {type(error).__name__}: {error} [{party.label}]", party.subjects)
            raise
        if fault is FaultKind.APPLIED_THEN_FAILED:
            name = details.choice(APPLIED_THEN_FAILED_ERRORS)
            world.note(party.name, f"{call} -> applied, then {name} [{party.label}]", party.subjects)
            raise datastore_error(name)
        world.note(party.name, f"{call} -> ok [{party.label}]", party.subjects)
        if after:
            self._party_fault(fault, details, f"after {call} applied")
        return response

    def queue_call(self, call: str) -> tuple[FaultKind | None, random.Random]:
        """Park before a queue call (``lease``, ``ack``, ``release``); stall or die there if planned;
        the fault left for the call itself (a lost ack, a grown redelivery)."""
        fault, details = self._arrive(call, in_transaction=False)
        self._party_fault(fault, details, f"before {call}")
        return fault, details
