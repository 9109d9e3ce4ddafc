"""The world of one run: simulated time, the cache, the parties, and what happens around each cache call.

``World.advance`` is one step: the scheduler picks a party that can move,
time moves on, and the party either starts its next operation or makes the
cache call it is parked at. Around that call (``PartyGate``) the world counts
it against G2's budget, asks the fault plan about this step, applies the
fault (to the cache, to the party, or to the call itself), and writes the
trace line. Nothing here decides what is correct: the oracle does.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from clickqueue import QueueError
from clickqueue.recovery import decimal
from tests.sim.faults import (
    CALL_FAULTS,
    COUNTER_AHEAD_BY,
    FOREIGN_FAULTS,
    LOSSLESS_FAULTS,
    MAX_CLOCK_SKEW_SECONDS,
    Fault,
    FaultKind,
    FaultPlan,
    KeyClass,
    PlannedFault,
    foreign_value,
    is_accounting_key,
    key_class,
    next_slot_key,
)
from tests.sim.library import QUEUE_KEY_PREFIX, make_queue
from tests.sim.oracle import Oracle, Phase, describe_error, is_documented_error
from tests.sim.parties import OpContext, Operation, Party, Role, message_ids_in
from tests.sim.scheduler import OpAborted, PartyKilled, Scheduler
from tests.sim.simcache import FLAGS_BYTES, SimCache
from tests.sim.swarm import Swarm
from tests.sim.trace import Trace, summarize_keys
from tests.sim.views import ContractView, applied_count

START_TIME = 1_750_000_000.0
"""Simulated time starts at a real Unix time, so an expiry read as absolute is in the past."""

LIVENESS_NODE_CAPACITY_BYTES = 64 * 2**20
REVIVE_AFTER_SECONDS = (0.5, 5.0)
NODE_DEAD_SECONDS = (1.0, 30.0)


def _some_keys(keys: Sequence[str]) -> str:
    """The queue keys among ``keys``, the state and counters first, for a fault's trace line."""
    queue_keys = sorted(
        (key.removeprefix(QUEUE_KEY_PREFIX) for key in keys if key.startswith(QUEUE_KEY_PREFIX)),
        key=lambda key: (key_class(":" + key) not in (KeyClass.STATE, KeyClass.COUNTER), key),
    )
    shown = ", ".join(queue_keys[:8])
    return f"{shown}, ... ({len(queue_keys)} keys)" if len(queue_keys) > 8 else shown or "no queue keys"


_FAILED_CALL_RESULTS = {
    FaultKind.FAIL_BEFORE: "error (nothing applied)",
    FaultKind.LOST_REPLY: "error (applied, reply lost)",
    FaultKind.PARTIAL: "error (part applied)",
}


class CallBudgetExceeded(OpAborted):
    """A queue call went past its budget of cache calls (``Oracle.call_budget``): it is stopped there."""


class _Call:
    """One cache call as a view sees it: its fault, its result line, what it deleted."""

    __slots__ = ("fault", "result", "_context")

    def __init__(self, fault: Fault | None, context: OpContext | None) -> None:
        self.fault = fault
        self.result = "ok"
        self._context = context

    def applied(self, count: int) -> int:
        return applied_count(self.fault, count)

    def deleted(self, value: bytes) -> None:
        if self._context is not None:
            self._context.deleted_ids += message_ids_in(value)


class PartyGate:
    """The ``CallGate`` of one party: park, count, inject, trace."""

    def __init__(self, world: World, party: Party) -> None:
        self.world = world
        self.party = party

    @property
    def dead_nodes(self) -> frozenset[int]:
        return self.party.dead_nodes

    @contextmanager
    def call(self, name: str, keys: Sequence[str], amount: int = 0) -> Iterator[_Call]:
        world, party = self.world, self.party
        if party.dead or world.stopping:
            raise PartyKilled(party.name)
        party.actor.checkpoint()
        if world.stopping:
            raise PartyKilled(party.name)
        context = party.current
        context.calls += 1
        if context.calls > world.oracle.call_budget():
            world.oracle.budget_exceeded(party.name, context.label, world.step)
            raise CallBudgetExceeded(context.label)
        call = _Call(world.fault_for_call(party, name, keys, amount), context)
        try:
            yield call
        except Exception as error:
            done = "" if call.result == "ok" else f"{call.result}, then "
            call.result = f"{done}raised {describe_error(error)}"
            raise
        finally:
            fault_text = call.fault.kind.value if call.fault else ""
            if call.fault and call.result == "ok":
                call.result = _FAILED_CALL_RESULTS[call.fault.kind]
            world.trace.call(world.step, world.now, party.name, context, name, keys, fault_text, call.result)


class DirectGate:
    """The gate of the oracle's own reads (``stats()``): no scheduling, no faults, no budget."""

    dead_nodes = frozenset()

    def __init__(self, world: World) -> None:
        self.world = world

    @contextmanager
    def call(self, name: str, keys: Sequence[str], amount: int = 0) -> Iterator[_Call]:
        yield _Call(None, None)


class World:
    """Everything one run shares: the cache, time, the parties, the plan, the oracle, the trace."""

    def __init__(self, seed: int, swarm: Swarm, plan: FaultPlan, keep_trace: bool) -> None:
        self.seed = seed
        self.swarm = swarm
        self.plan = plan
        self.now = START_TIME
        self.phase = Phase.CHAOS
        self.scheduler = Scheduler(seed)
        self.oracle = Oracle(swarm.skip_checks)
        self.trace = Trace(START_TIME, keep_trace)
        self.cache = SimCache(swarm.backend, swarm.nodes, swarm.node_capacity_bytes, self._clock, self._lost)
        self.entropy = random.Random(f"{seed}:entropy")
        """Draws of today's Queue (lease ids, first shard), which takes no generator."""
        self.injected: list[PlannedFault] = []
        self.admitting = True
        self.stopping = False
        self.liveness_writes_left = 0
        self.max_lease_seconds = 0.0
        self.queue_options = swarm.queue_options()
        self._next_message = 0
        self._die_after_operation: set[str] = set()
        self._lost_counters: set[str] = set()
        self._counters_ever_lost = False
        self._passed_slots_handed_out: set[tuple[int, int]] = set()
        self._counter_pushed_ahead = False
        self.parties: list[Party] = []
        self.auditor: Any = None

    @property
    def step(self) -> int:
        return self.scheduler.step

    def _clock(self) -> float:
        return self.now

    def _view(self, gate: Any) -> ContractView:
        return ContractView(self.cache, gate, self.swarm.backend)

    def make_queue(self, party: Party) -> Any:
        rng = random.Random(f"{self.seed}:queue:{party.name}:{party.incarnation}")
        return make_queue(self._view(PartyGate(self, party)), party.clock, rng, self.queue_options)

    # -- the run's start and end ---------------------------------------------------------------------

    def begin(self) -> None:
        """Build the oracle's own Queue and the parties; age the queue if the swarm says so."""
        auditor_rng = random.Random(f"{self.seed}:queue:auditor")
        try:
            self.auditor = make_queue(self._view(DirectGate(self)), self._clock, auditor_rng, self.queue_options)
        except (QueueError, ValueError) as error:
            self.note("setup", f"the Queue refused {self.queue_options}: {describe_error(error)}; using its defaults")
            self.queue_options = {"shards": self.swarm.shards}
            self.auditor = make_queue(self._view(DirectGate(self)), self._clock, auditor_rng, self.queue_options)
        if self.swarm.aged_slots:
            for shard in range(self.swarm.shards):
                self.cache.plant(f"{QUEUE_KEY_PREFIX}w:{shard}", str(self.swarm.aged_slots).encode(), FLAGS_BYTES)
            self.auditor.read_multi(1)  # the queue notices its counters, out of band
        for role, count in self.swarm.parties.items():
            for index in range(count):
                party = Party(self, role, index)
                party.be_born()
                self.parties.append(party)

    def shutdown(self) -> None:
        """End every party's thread (those mid-call die there)."""
        self.stopping = True
        for party in self.parties:
            if party.actor.busy:
                party.actor.resume()
            party.actor.stop()

    def start_liveness(self) -> None:
        """Faults stop: memory pressure ends, dead nodes come back, dead processes restart,
        writers get a last quota."""
        self.phase = Phase.LIVENESS
        self.plan.enabled = False
        self.cache.capacity_bytes = max(self.cache.capacity_bytes, LIVENESS_NODE_CAPACITY_BYTES)
        self.liveness_writes_left = self.swarm.liveness_write_ops
        self.note("world", "liveness phase: faults off")
        for party in self.parties:
            party.dead_node_marks.clear()
            if party.dead and not party.actor.busy:
                party.be_born()

    # -- steps ---------------------------------------------------------------------------------------

    def advance(self) -> bool:
        """One step; False when no party can move before some time passes."""
        for party in self.parties:
            if party.dead and not party.actor.busy and self.now >= party.revive_at:
                party.be_born()
                self.note(party.name, f"restarted (incarnation {party.incarnation})")
        ready = [party for party in self.parties if party.actor.busy or (self.admitting and party.has_work())]
        if not ready:
            return False
        party, seconds = self.scheduler.next_step(ready)
        self.now += seconds
        if party.actor.busy:
            party.actor.resume()
            return True
        if party.role is Role.WRITER and self.phase is Phase.LIVENESS:
            self.liveness_writes_left -= 1
        operation = party.next_operation()
        self.note(party.name, f"begin {operation.label}", operation.ids)
        party.actor.start(self._run_operation(party, operation))
        return True

    def _run_operation(self, party: Party, operation: Operation):
        def run() -> None:
            now = party.clock()
            party.current = context = OpContext(operation.label, operation.ids, self.step, now, now)
            try:
                operation.run()
            except OpAborted:
                self.note(party.name, f"aborted {operation.label}")
                raise
            finally:
                party.current = None
            if not context.raised:
                self.oracle.deleted_unseen(
                    party.name,
                    operation.label,
                    context.deleted_ids,
                    context.allowed_deletions,
                    self.step,
                    operation.ids,
                )
            self.note(party.name, f"end {operation.label}")
            if party.name in self._die_after_operation:
                self._die_after_operation.discard(party.name)
                self.kill(party)
            pause = self.swarm.pause_seconds.get(party.role)
            if pause:
                party.idle_until = max(party.idle_until, self.now + party.rng.uniform(0, pause))

        return run

    def skip_idle_time(self) -> bool:
        """Move time to the next moment a party can move; False if none ever will."""
        waits = [party.revive_at if party.dead else party.idle_until for party in self.parties]
        future = [wait for wait in waits if wait > self.now]
        if not future:
            return False
        self.jump_time(min(future) - self.now)
        return True

    def jump_time(self, seconds: float) -> None:
        self.now += seconds
        self.note("world", f"time jumps {seconds:.1f}s")

    def quiesce(self) -> None:
        """Start nothing new until no party is mid-call."""
        self.admitting = False
        try:
            while any(party.actor.busy for party in self.parties) and not self.oracle.violations:
                self.advance()
        finally:
            self.admitting = True

    def read_stats(self) -> Any | None:
        """``stats()`` through the oracle's own Queue (no faults, off the schedule); None if it raised."""
        try:
            return self.auditor.stats()
        except Exception as error:
            self.oracle.raised(
                "auditor",
                "stats()",
                error,
                self.phase,
                is_documented_error(error),
                self.step,
            )
            return None

    # -- what parties report ----------------------------------------------------------------------------

    def new_message_id(self) -> str:
        self._next_message += 1
        return f"m{self._next_message}"

    def writes_allowed(self) -> bool:
        return self.phase is Phase.CHAOS or self.liveness_writes_left > 0

    def note(self, party: str, text: str, ids: Sequence[str] = ()) -> None:
        self.trace.note(self.step, self.now, party, text, ids)

    def note_lease_seconds(self, seconds: float) -> None:
        self.max_lease_seconds = max(self.max_lease_seconds, seconds)

    def report_error(self, party: Party, label: str, error: Exception) -> None:
        party.current.raised = True
        documented = is_documented_error(error)
        self.note(party.name, f"{label} raised {describe_error(error)}")
        self.oracle.raised(party.name, label, error, self.phase, documented, self.step)

    def kill_after_operation(self, party: Party, reason: str) -> None:
        self.note(party.name, reason)
        self._die_after_operation.add(party.name)

    def kill(self, party: Party) -> None:
        party.die(self.now + party.rng.uniform(*REVIVE_AFTER_SECONDS))

    # -- faults ---------------------------------------------------------------------------------------

    def record_fault(self, fault: Fault, party: Party, detail: str) -> None:
        self.injected.append(PlannedFault(fault.step, fault.kind))
        self.trace.fault(self.step, self.now, party.name, f"{fault.kind.value}: {detail}")

    def fault_for_call(self, party: Party, name: str, keys: Sequence[str], amount: int) -> Fault | None:
        """Inject this step's fault: the call's own fault is returned; a kill ends the party here;
        any other fault is applied to the cache or the party before the call runs."""
        fault = self.plan.fault_at(self.step)
        if fault is None:
            return None
        if fault.kind in CALL_FAULTS:
            if self.swarm.faulty_calls is not None and name not in self.swarm.faulty_calls:
                return None
            self.record_fault(fault, party, f"on {name}({summarize_keys(keys)})")
            return fault
        if fault.kind is FaultKind.KILL_PARTY:
            self.record_fault(fault, party, f"{party.name} killed before {name}")
            self.kill(party)
            raise PartyKilled(party.name)
        self.apply_environment_fault(fault, party)
        return None

    def _lost(self, key: str, reason: str) -> None:
        if is_accounting_key(key):
            self.oracle.disturb_accounting(f"{key} {reason}")
        elif key_class(key) is KeyClass.COUNTER:
            self._lost_counters.add(key)
            self._counters_ever_lost = True

    def _state(self):
        """The read state as the cache holds it (ground truth), or None."""
        from clickqueue.errors import CorruptStateError
        from clickqueue.state import ReadState

        state_key = f"{QUEUE_KEY_PREFIX}state"
        item = self.cache.get(state_key)
        try:
            return ReadState.from_bytes(state_key, item.value, self.queue_options.get("shards", 1)) if item else None
        except CorruptStateError:
            return None

    def slots_to_walk(self) -> int:
        """Slots below the write counters that no reader has claimed yet (ground truth):
        what readers must walk, a bounded step per call, before the newest messages."""
        state = self._state()
        if state is None:
            return 0
        walk = 0
        for shard, claimed in enumerate(state.claimed):
            item = self.cache.get(f"{QUEUE_KEY_PREFIX}w:{shard}")
            if item is not None and item.value.isdigit():
                walk += max(0, int(item.value) - claimed)
        return walk

    def unclaimed_gap_slots(self) -> int:
        """Gap slots the state holds that no reader has claimed yet (ground truth)."""
        state = self._state()
        return state.unclaimed_gap_slots() if state is not None else 0

    def slots_handed_out(self, counter_key: str, delta: int, last: int) -> None:
        """Record the slots an ``incr`` handed out that readers had already passed."""
        if not counter_key.startswith(f"{QUEUE_KEY_PREFIX}w:") or (state := self._state()) is None:
            return
        shard = int(counter_key.rsplit(":", 1)[1])
        if shard < len(state.claimed):
            self._passed_slots_handed_out.update(
                (shard, number) for number in range(last - delta + 1, min(last, state.claimed[shard]) + 1)
            )

    def stranded_above_counters(self, message_ids: Sequence[str]) -> list[str]:
        """Of ``message_ids``, those stored only above their shard's write counter, after
        a counter was pushed far ahead: a repair's bounded search can miss such a run
        (clickqueue.recovery's documented limit), and they wait there uncounted."""
        if not self._counter_pushed_ahead:
            return []
        counters = {}
        for shard in range(self.queue_options.get("shards", 1)):
            item = self.cache.get(f"{QUEUE_KEY_PREFIX}w:{shard}")
            counters[shard] = int(item.value) if item is not None and item.value.isdigit() else None
        return [
            message
            for message, slots in self._slots_of(message_ids).items()
            if all(counters.get(shard) is not None and number > counters[shard] for shard, number in slots)
        ]

    def _slots_of(self, message_ids: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
        """Where each of ``message_ids`` is stored: (shard, slot number) pairs, if anywhere."""
        wanted, slots = set(message_ids), {}
        for node, key in self.cache.entries():
            if not key.startswith(f"{QUEUE_KEY_PREFIX}m:"):
                continue
            _m, shard, number = key.removeprefix(QUEUE_KEY_PREFIX).split(":")
            for position, message in enumerate(message_ids_in(self.cache.nodes[node][key].value)):
                if message in wanted:  # a frame's messages fill the slots after its own
                    slots.setdefault(message, []).append((int(shard), int(number) + position))
        return slots

    def in_passed_slots(self, message_ids: Sequence[str]) -> list[str]:
        """Of ``message_ids``, those stored only in slots a write counter handed out after
        readers had passed them: a counter gone back, not yet repaired (docs/protocol.md's
        documented limit)."""
        slots = self._slots_of(message_ids)
        return [
            message
            for message in message_ids
            if slots.get(message) and all(slot in self._passed_slots_handed_out for slot in slots[message])
        ]

    def fault_free(self) -> bool:
        """No fault injected, no counter lost so far, and not an aged queue (which begins as
        counters without a state: a reset): then nothing may have been reset."""
        return not self.injected and not self._counters_ever_lost and not self.swarm.aged_slots

    def lossless(self) -> bool:
        """Only faults no message may be lost to (``LOSSLESS_FAULTS``), if any: then
        ``stats()`` must count nothing lost."""
        return (
            all(fault.kind in LOSSLESS_FAULTS for fault in self.injected)
            and not self._counters_ever_lost
            and not self.swarm.aged_slots
        )

    def counters_missing(self) -> bool:
        """A write counter lost and not yet recreated, or holding a foreign value not yet
        repaired: until then nobody can know the depth of its shard."""
        self._lost_counters = {key for key in self._lost_counters if self.cache.get(key) is None}
        counters = [self.cache.get(f"{QUEUE_KEY_PREFIX}w:{shard}") for shard in range(self.queue_options.get("shards", 1))]
        foreign = any(item is not None and decimal(item.value) is None for item in counters)
        return bool(self._lost_counters) or foreign

    def _queue_keys(self) -> dict[KeyClass, list[str]]:
        by_class: dict[KeyClass, list[str]] = {}
        for _, key in self.cache.entries():
            if key.startswith(QUEUE_KEY_PREFIX):
                by_class.setdefault(key_class(key), []).append(key)
        return by_class

    def apply_environment_fault(self, fault: Fault, party: Party) -> None:
        """Apply a fault to the cache or the party, before the call of this step."""
        rng, kind = fault.rng, fault.kind
        if kind is FaultKind.EVICT_KEY:
            entries = [(node, key) for node, key in self.cache.entries() if key.startswith(QUEUE_KEY_PREFIX)]
            weights = [self.swarm.evict_weights.get(key_class(key), 0) for _, key in entries]
            if not any(weights):
                return
            node, key = rng.choices(entries, weights=weights)[0]
            self.cache.evict(node, key)
            detail = f"{summarize_keys([key])} from node {node}"
        elif kind is FaultKind.NEW_CAS_ID:
            entries = [(node, key) for node, key in self.cache.entries() if key.startswith(QUEUE_KEY_PREFIX)]
            if not entries:
                return
            slots = [entry for entry in entries if key_class(entry[1]) is KeyClass.SLOT]
            node, key = rng.choice(slots if slots and rng.random() < 0.9 else entries)
            self.cache.give_new_cas_id(node, key)
            detail = f"{summarize_keys([key])} on node {node}, value unchanged"
        elif kind is FaultKind.FLUSH_ALL:
            detail = f"every node; lost {_some_keys(self.cache.flush_all())}"
        elif kind is FaultKind.RESTART_NODE:
            node = rng.randrange(self.swarm.nodes)
            detail = f"node {node} back empty; lost {_some_keys(self.cache.restart(node))}"
        elif kind is FaultKind.NODE_DEAD_FOR_ONE:
            node = rng.randrange(self.swarm.nodes)
            seconds = rng.uniform(*NODE_DEAD_SECONDS)
            party.dead_node_marks[node] = self.now + seconds
            self.oracle.disturb_accounting(f"node {node} marked dead by {party.name}")
            detail = f"{party.name} marks node {node} dead for {seconds:.1f}s"
        elif kind is FaultKind.MOVE_CLOCK:
            old = party.skew_seconds
            party.skew_seconds = rng.uniform(-MAX_CLOCK_SKEW_SECONDS, MAX_CLOCK_SKEW_SECONDS)
            detail = f"{party.name}'s clock skew {old:+.2f}s -> {party.skew_seconds:+.2f}s"
        elif kind is FaultKind.COUNTER_AHEAD:
            counters = self._queue_keys().get(KeyClass.COUNTER)
            if not counters:
                return
            key = rng.choice(counters)
            item = self.cache.get(key)
            if item is None or not item.value.isdigit():
                return
            self.cache.plant(key, str(int(item.value) + COUNTER_AHEAD_BY).encode(), item.flags)
            detail = f"{summarize_keys([key])} pushed {COUNTER_AHEAD_BY} ahead"
            # docs/protocol.md's documented limit: readers walk the pushed range, a
            # bounded step per call, so delivery can wait past any step budget.
            self.oracle.liveness_exempt = "a write counter was pushed far ahead (a documented limit)"
            self._counter_pushed_ahead = True
        elif kind in FOREIGN_FAULTS:
            key = self._foreign_target(kind, rng)
            if key is None:
                return
            value, flags = foreign_value(kind, rng)
            self.cache.plant(key, value, flags)
            if is_accounting_key(key):
                self.oracle.disturb_accounting(f"foreign value in {key}")
            detail = f"{summarize_keys([key])} = {value[:24]!r}{'...' if len(value) > 24 else ''} flags={flags}"
        else:
            raise ValueError(f"{kind} is not an environment fault")
        self.record_fault(fault, party, detail)

    def _foreign_target(self, kind: FaultKind, rng: random.Random) -> str | None:
        """Where another writer to the shared cache puts a foreign value of ``kind``."""
        keys = self._queue_keys()
        if kind is FaultKind.FOREIGN_STATE:
            return f"{QUEUE_KEY_PREFIX}state"
        if kind is FaultKind.FOREIGN_COUNTER_TEXT:
            candidates = keys.get(KeyClass.COUNTER, []) + keys.get(KeyClass.GENERATION, [])
            return rng.choice(candidates) if candidates else None
        counters = keys.get(KeyClass.COUNTER, [])
        if counters and rng.random() < 0.5:
            counter = rng.choice(counters)
            item = self.cache.get(counter)
            if item is not None and item.value.isdigit():
                return next_slot_key(counter, int(item.value), rng.randint(1, 3))
        candidates = keys.get(KeyClass.SLOT) or [key for group in keys.values() for key in group]
        return rng.choice(candidates) if candidates else None
