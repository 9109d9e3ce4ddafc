"""Swarm testing: each seed switches on its own subset of fault kinds and operation kinds.

Following Groce et al. (ISSTA 2012), a seed does not run every fault at once:
it draws which fault kinds are on (and how often), which operations the
parties make, how many parties of each role, and the queue's configuration.
Some bugs only show when another fault is absent.

A preset biases the draw towards a scenario (one that once broke a guarantee, for example)
without scripting it: the seed still decides every interleaving and fault,
and the oracle still decides what failed.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

from tests.sim.faults import FaultKind, KeyClass
from tests.sim.parties import LEASE_PLANS, OpKind, Role
from tests.sim.simcache import APPENGINE, MEMCACHED, Backend

THIRTY_ONE_DAYS_SECONDS = 31 * 86400

_RARE_FAULTS = frozenset({FaultKind.FLUSH_ALL, FaultKind.RESTART_NODE})
_MULTI_NODE_FAULTS = frozenset({FaultKind.RESTART_NODE, FaultKind.NODE_DEAD_FOR_ONE})
_OWN_STREAM_FAULTS = frozenset({FaultKind.NEW_CAS_ID})
"""Faults added after seeds were published: drawn from a stream of their own."""


@dataclass(frozen=True)
class Swarm:
    """Everything a seed decides before its first step."""

    backend: Backend
    fault_rates: Mapping[FaultKind, float]
    evict_weights: Mapping[KeyClass, float]
    op_kinds: frozenset[OpKind]
    parties: Mapping[Role, int]
    shards: int
    nodes: int
    node_capacity_bytes: int
    tombstone_seconds: int
    max_write_seconds: float
    lease_seconds: tuple[float, ...]
    read_sizes: tuple[int, ...]
    write_sizes: tuple[int, ...]
    lease_sizes: tuple[int, ...]
    pause_seconds: Mapping[Role, float]
    aged_slots: int
    """Start with every write counter here, as if the queue had long been in use."""
    chaos_steps: int
    liveness_write_ops: int
    faulty_calls: frozenset[str] | None = None
    """The cache calls call faults may hit (None: any)."""
    skip_checks: frozenset[str] = field(default_factory=frozenset)

    def queue_options(self) -> dict[str, object]:
        return {
            "shards": self.shards,
            "tombstone_seconds": self.tombstone_seconds,
            "max_write_seconds": self.max_write_seconds,
        }

    def describe(self) -> str:
        faults = ", ".join(f"{kind.value} {rate:.4f}" for kind, rate in self.fault_rates.items()) or "none"
        ops = ", ".join(kind.value for kind in OpKind if kind in self.op_kinds)
        parties = ", ".join(f"{count} {role.name.lower()}s" for role, count in self.parties.items() if count)
        lines = [
            f"faults/step: {faults}",
            f"operations: {ops}; parties: {parties}",
            f"{self.backend.name}; {self.shards} shards; {self.nodes} nodes of "
            f"{self.node_capacity_bytes // 1024} KB; tombstone_seconds={self.tombstone_seconds} "
            f"max_write_seconds={self.max_write_seconds:g}; aged_slots={self.aged_slots}; "
            f"chaos {self.chaos_steps} steps, {self.liveness_write_ops} liveness writes",
        ]
        if self.faulty_calls is not None:
            lines.append(f"call faults only on: {', '.join(sorted(self.faulty_calls))}")
        if self.skip_checks:
            lines.append(f"not checked: {', '.join(sorted(self.skip_checks))}")
        return "\n".join(lines)


def _rate(rng: random.Random, kind: FaultKind) -> float:
    low, high = (-3.5, -2.5) if kind in _RARE_FAULTS else (-2.7, -1.6)
    return round(10 ** rng.uniform(low, high), 5)


def draw_swarm(seed: int, preset: str = "swarm") -> Swarm:
    """The seed's swarm: the full random draw, then the preset's bias."""
    rng = random.Random(f"{seed}:swarm")
    backend = PRESETS[preset].backend or rng.choice([APPENGINE, MEMCACHED])
    nodes = rng.choice([1, 1, 2, 3])
    fault_rates = {
        kind: _rate(rng, kind)
        for kind in FaultKind
        if kind not in _OWN_STREAM_FAULTS and rng.random() < 0.5 and (nodes > 1 or kind not in _MULTI_NODE_FAULTS)
    }
    own_stream = random.Random(f"{seed}:swarm:new-cas-id")  # drawn apart, so older seeds draw as before
    if own_stream.random() < 0.5:
        fault_rates[FaultKind.NEW_CAS_ID] = _rate(own_stream, FaultKind.NEW_CAS_ID)
    evict_weights = {key_class: rng.choice([0, 1, 4]) for key_class in KeyClass} | {KeyClass.SLOT: rng.choice([1, 4])}
    op_kinds = {kind for kind, chance in _OP_CHANCES.items() if rng.random() < chance}
    if OpKind.WRITE_HUGE in op_kinds and backend.max_call_bytes is None:
        op_kinds.discard(OpKind.WRITE_HUGE)
    if not op_kinds & {OpKind.WRITE, OpKind.WRITE_MULTI}:
        op_kinds.add(rng.choice([OpKind.WRITE, OpKind.WRITE_MULTI]))
    if not op_kinds & {OpKind.READ_MULTI, OpKind.LEASE_ACK, OpKind.LEASE_RELEASE, OpKind.LEASE_STALL}:
        op_kinds.add(rng.choice([OpKind.READ_MULTI, OpKind.LEASE_ACK]))
    tombstone_seconds, max_write_seconds = rng.choices(
        [(3600, 60.0), (2, 0.5), (THIRTY_ONE_DAYS_SECONDS, 60.0)], weights=[7, 2, 1]
    )[0]
    swarm = Swarm(
        backend=backend,
        fault_rates=fault_rates,
        evict_weights=evict_weights,
        op_kinds=frozenset(op_kinds),
        parties={
            Role.WRITER: rng.randint(1, 4),
            Role.READER: rng.randint(1, 3) if OpKind.READ_MULTI in op_kinds else 0,
            Role.LEASER: rng.randint(1, 3) if op_kinds & set(LEASE_PLANS) else 0,
        },
        shards=rng.choices([1, 2, 4, 8, 64], weights=[8, 4, 3, 2, 1])[0],
        nodes=nodes,
        node_capacity_bytes=64 * 2**20 if rng.random() < 0.8 else rng.choice([32, 128, 512]) * 1024,
        tombstone_seconds=tombstone_seconds,
        max_write_seconds=max_write_seconds,
        lease_seconds=(1.0, 2.0, 5.0, 10.0, 30.0),
        read_sizes=(1, 2, 5, 10, 100, 1000),
        write_sizes=(1, 2, 3, 5, 10, 50),
        lease_sizes=(1, 2, 5, 10, 100),
        pause_seconds={},
        aged_slots=1_000_000 if rng.random() < 0.1 else 0,
        chaos_steps=rng.randint(500, 2500),
        liveness_write_ops=rng.randint(5, 20),
        faulty_calls=frozenset(rng.sample(_CACHE_CALLS, rng.randint(1, 3))) if rng.random() < 0.3 else None,
    )
    return PRESETS[preset].bias(swarm, rng)


_CACHE_CALLS = ["get_multi", "gets_multi", "add_multi", "cas_multi", "incr", "delete_multi"]

_OP_CHANCES = {
    OpKind.WRITE: 0.7,
    OpKind.WRITE_MULTI: 0.7,
    OpKind.WRITE_DEEP: 0.15,
    OpKind.WRITE_HUGE: 0.1,
    OpKind.READ_MULTI: 0.6,
    OpKind.LEASE_ACK: 0.5,
    OpKind.LEASE_RELEASE: 0.5,
    OpKind.LEASE_STALL: 0.5,
    OpKind.LEASE_DIE: 0.4,
    OpKind.LEASE_HOARD: 0.3,
    OpKind.STATS: 0.3,
}


# -- presets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A bias of the swarm towards a scenario, named for what it exercises, and the backend whose
    semantics it needs (None: either)."""

    about: str
    backend: Backend | None
    bias: Callable[[Swarm, random.Random], Swarm]


def _some(rng: random.Random, rates: Mapping[FaultKind, tuple[float, float]]) -> dict[FaultKind, float]:
    return {kind: round(rng.uniform(low, high), 5) for kind, (low, high) in rates.items()}


def _ops(*kinds: OpKind) -> frozenset[OpKind]:
    return frozenset(kinds)


def _parties(writers: int, readers: int, leasers: int) -> dict[Role, int]:
    return {Role.WRITER: writers, Role.READER: readers, Role.LEASER: leasers}


def _ordinary(swarm: Swarm) -> Swarm:
    """The swarm without the triggers other presets aim at (long tombstones, an aged queue)."""
    return replace(swarm, tombstone_seconds=min(swarm.tombstone_seconds, 3600), aged_slots=0)


PRESETS: dict[str, Preset] = {
    "swarm": Preset("the full swarm draw, unbiased", None, lambda swarm, rng: swarm),
    "calm": Preset(
        "no faults, no hostile messages: only interleavings, clocks and leases",
        None,
        lambda swarm, rng: replace(
            swarm,
            fault_rates={},
            op_kinds=swarm.op_kinds - {OpKind.WRITE_DEEP, OpKind.WRITE_HUGE, OpKind.LEASE_DIE},
            tombstone_seconds=min(swarm.tombstone_seconds, 3600),
            node_capacity_bytes=64 * 2**20,
        ),
    ),
    "state-and-counter-lost": Preset(
        "node restarts (several nodes) while batches are leased",
        MEMCACHED,
        lambda swarm, rng: replace(
            _ordinary(swarm),
            nodes=rng.choice([2, 3]),
            fault_rates=_some(rng, {FaultKind.RESTART_NODE: (0.001, 0.004)}),
            op_kinds=_ops(OpKind.WRITE, OpKind.WRITE_MULTI, OpKind.LEASE_ACK, OpKind.LEASE_STALL, OpKind.LEASE_HOARD),
            parties=_parties(rng.randint(2, 3), 0, rng.randint(2, 3)),
            shards=rng.choice([1, 2]),
        ),
    ),
    "counter-evicted-mid-write": Preset(
        "write counters evicted early, while shards are new and writers are mid-write",
        APPENGINE,
        lambda swarm, rng: replace(
            _ordinary(swarm),
            nodes=1,
            fault_rates=_some(rng, {FaultKind.EVICT_KEY: (0.01, 0.04)}),
            evict_weights={KeyClass.COUNTER: 1},
            op_kinds=_ops(OpKind.WRITE, OpKind.WRITE_MULTI, OpKind.READ_MULTI),
            parties=_parties(rng.randint(3, 5), rng.randint(1, 2), 0),
            shards=rng.choice([4, 8]),
            read_sizes=(1000,),
            chaos_steps=300,
        ),
    ),
    "appengine-rpc-errors": Preset(
        "RPC errors (before or after applying) on App Engine memcache's adds and gets",
        APPENGINE,
        lambda swarm, rng: replace(
            _ordinary(swarm),
            fault_rates=_some(
                rng,
                rng.choice(
                    [
                        {FaultKind.FAIL_BEFORE: (0.02, 0.1)},
                        {FaultKind.LOST_REPLY: (0.02, 0.1)},
                        {FaultKind.FAIL_BEFORE: (0.02, 0.1), FaultKind.LOST_REPLY: (0.02, 0.1)},
                    ]
                ),
            ),
            faulty_calls=rng.choice([frozenset({"add_multi"}), frozenset({"get_multi"}), None]),
            op_kinds=swarm.op_kinds - {OpKind.WRITE_DEEP, OpKind.WRITE_HUGE, OpKind.LEASE_STALL},
            shards=rng.choice([1, 2, 4]),
            lease_sizes=(100,),
            lease_seconds=(30.0,),
        ),
    ),
    "new-cas-ids": Preset(
        "items given new CAS ids, values unchanged, while readers and leases take them",
        MEMCACHED,
        lambda swarm, rng: replace(
            _ordinary(swarm),
            fault_rates=_some(rng, {FaultKind.NEW_CAS_ID: (0.02, 0.1)}),
            op_kinds=_ops(OpKind.WRITE, OpKind.WRITE_MULTI, OpKind.READ_MULTI, OpKind.LEASE_ACK, OpKind.LEASE_RELEASE),
            parties=_parties(rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 2)),
        ),
    ),
    "concurrent-counter-repair": Preset(
        "write counters and slots evicted, several writers reseeding at once",
        APPENGINE,
        lambda swarm, rng: replace(
            _ordinary(swarm),
            nodes=1,
            fault_rates=_some(rng, {FaultKind.EVICT_KEY: (0.005, 0.03)}),
            evict_weights={KeyClass.COUNTER: 4, KeyClass.SLOT: 1},
            op_kinds=_ops(OpKind.WRITE, OpKind.WRITE_MULTI, OpKind.READ_MULTI),
            parties=_parties(rng.randint(3, 5), rng.randint(1, 2), 0),
            shards=1,
            read_sizes=(1000,),
        ),
    ),
    "lease-takeovers": Preset(
        "leases of every size taken over, released, acked late, across flushes",
        APPENGINE,
        lambda swarm, rng: replace(
            _ordinary(swarm),
            fault_rates=_some(rng, {FaultKind.FLUSH_ALL: (0.0005, 0.003)}),
            op_kinds=_ops(
                OpKind.WRITE_MULTI, OpKind.LEASE_ACK, OpKind.LEASE_RELEASE, OpKind.LEASE_STALL, OpKind.LEASE_HOARD
            ),
            parties=_parties(rng.randint(1, 3), 0, rng.randint(2, 3)),
            lease_sizes=(1, 2, 5, 100),
        ),
    ),
    "many-outstanding-leases": Preset(
        "many outstanding leases on 64 shards of a long-used queue",
        APPENGINE,
        lambda swarm, rng: replace(
            swarm,
            fault_rates={},
            op_kinds=_ops(OpKind.WRITE_MULTI, OpKind.LEASE_HOARD),
            parties=_parties(6, 0, 1),
            shards=64,
            write_sizes=(1, 2, 3),
            lease_sizes=(1000,),
            pause_seconds={Role.LEASER: 5.0},
            aged_slots=1_000_000_000,
            chaos_steps=300_000,
        ),
    ),
    "long-tombstones": Preset(
        "tombstone_seconds over 30 days, no faults",
        APPENGINE,
        lambda swarm, rng: replace(
            swarm,
            fault_rates={},
            tombstone_seconds=THIRTY_ONE_DAYS_SECONDS,
            max_write_seconds=60.0,
        ),
    ),
    "partial-batch-adds": Preset(
        "server errors cutting pymemcache's batched adds short",
        MEMCACHED,
        lambda swarm, rng: replace(
            _ordinary(swarm),
            fault_rates=_some(rng, {FaultKind.PARTIAL: (0.01, 0.05)}),
            faulty_calls=frozenset({"add_multi"}),
            op_kinds=(swarm.op_kinds | {OpKind.WRITE_MULTI}) - {OpKind.WRITE_DEEP, OpKind.LEASE_STALL},
            lease_sizes=(100,),
            lease_seconds=(30.0,),
        ),
    ),
    "foreign-values": Preset(
        "foreign values in slots, and messages nested near json's limit",
        APPENGINE,
        lambda swarm, rng: replace(
            _ordinary(swarm),
            fault_rates=_some(
                rng,
                {
                    FaultKind.FOREIGN_PICKLE: (0.002, 0.01),
                    FaultKind.FOREIGN_DEEP_JSON: (0.002, 0.01),
                    FaultKind.FOREIGN_GARBAGE: (0.002, 0.01),
                },
            ),
            op_kinds=swarm.op_kinds | {OpKind.WRITE_DEEP, OpKind.READ_MULTI, OpKind.LEASE_ACK},
            parties=_parties(rng.randint(1, 3), rng.randint(1, 2), rng.randint(1, 2)),
        ),
    ),
    "concurrent-queue-creation": Preset(
        "no faults, many writers creating a queue at once on App Engine (incr keeps the CAS id)",
        APPENGINE,
        lambda swarm, rng: replace(
            _ordinary(swarm),
            fault_rates={},
            op_kinds=_ops(OpKind.WRITE, OpKind.WRITE_MULTI, OpKind.READ_MULTI, OpKind.LEASE_ACK),
            parties=_parties(rng.randint(4, 6), rng.randint(1, 2), rng.randint(0, 1)),
            shards=rng.choice([1, 2, 4]),
        ),
    ),
}
