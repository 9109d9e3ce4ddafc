"""The fault model (docs/fault-model.md), as kinds the fault plan injects at cache-call time.

Every fault is decided at one step (one cache call about to run) and only from
the seed: whether a fault happens at step ``n`` comes from one draw per step
of the plan's own stream (so removing a fault does not shift the others), and
its details (which key, which value, how much of a batch) from a generator
seeded with ``(seed, n)``. A replay plan injects exactly the faults of a
recorded list: that is how a failure shrinks.

Faults that change the cache or a party (eviction, flush, node restart, a node
dead for one party, foreign values, a moved clock, a new CAS id) are applied before the
call; call faults (fail before applying, lost reply, partial batch) shape the
call itself, in the way each view's backend fails; a kill stops the party
instead of the call.
"""

from __future__ import annotations

import enum
import pickle
import random
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from tests.sim.simcache import FLAGS_BYTES, FLAGS_PICKLED


class FaultKind(enum.Enum):
    EVICT_KEY = "evict-key"
    FLUSH_ALL = "flush-all"
    RESTART_NODE = "restart-node"
    NODE_DEAD_FOR_ONE = "node-dead-for-one"
    FAIL_BEFORE = "fail-before"
    LOST_REPLY = "lost-reply"
    PARTIAL = "partial"
    FOREIGN_PICKLE = "foreign-pickle"
    FOREIGN_GARBAGE = "foreign-garbage"
    FOREIGN_NUL = "foreign-nul"
    FOREIGN_DEEP_JSON = "foreign-deep-json"
    FOREIGN_COUNTER_TEXT = "foreign-counter-text"
    FOREIGN_STATE = "foreign-state"
    COUNTER_AHEAD = "counter-ahead"
    KILL_PARTY = "kill-party"
    MOVE_CLOCK = "move-clock"
    NEW_CAS_ID = "new-cas-id"
    """memcached gives an item a new CAS id, its value unchanged: a compare-and-set made
    with the old one is refused though no client changed the key."""


CALL_FAULTS = frozenset({FaultKind.FAIL_BEFORE, FaultKind.LOST_REPLY, FaultKind.PARTIAL})
LOSSLESS_FAULTS = frozenset({FaultKind.NEW_CAS_ID})
"""Faults no message may be lost to: a run with only these must end with ``lost`` 0."""
FOREIGN_FAULTS = frozenset(
    {
        FaultKind.FOREIGN_PICKLE,
        FaultKind.FOREIGN_GARBAGE,
        FaultKind.FOREIGN_NUL,
        FaultKind.FOREIGN_DEEP_JSON,
        FaultKind.FOREIGN_COUNTER_TEXT,
        FaultKind.FOREIGN_STATE,
        FaultKind.COUNTER_AHEAD,
    }
)

MAX_CLOCK_SKEW_SECONDS = 3.0
"""Processes' clocks differ by up to this much either way."""

COUNTER_AHEAD_BY = 10_000_000
DEEP_JSON_LEVELS = 10_000


# -- which queue key is which -----------------------------------------------------------
# The fault plan targets keys by the shape of their names (clickqueue.QueueKeys).


class KeyClass(enum.Enum):
    STATE = "state"
    COUNTER = "counter"
    SLOT = "slot"
    GENERATION = "generation marker"
    OTHER = "other"


_KEY_CLASSES = [
    (re.compile(r":state$"), KeyClass.STATE),
    (re.compile(r":w:\d+$"), KeyClass.COUNTER),
    (re.compile(r":m:\d+:\d+$"), KeyClass.SLOT),
    (re.compile(r":gen:\d+$"), KeyClass.GENERATION),
]


def key_class(key: str) -> KeyClass:
    for pattern, kind in _KEY_CLASSES:
        if pattern.search(key):
            return kind
    return KeyClass.OTHER


def is_accounting_key(key: str) -> bool:
    """The key ``stats()`` counts from: while it was never lost or overwritten, G3 is exact."""
    return key_class(key) is KeyClass.STATE


def next_slot_key(counter_key: str, counter_value: int, ahead: int) -> str:
    """The slot a writer takes ``ahead`` increments after the counter's ``counter_value``."""
    prefix, shard = counter_key.rsplit(":w:", 1)
    return f"{prefix}:m:{shard}:{counter_value + ahead}"


# -- foreign values ----------------------------------------------------------------------


class PlantedObject:
    """What another part of the app stored with the pickle flag: harmless to unpickle here."""

    def __init__(self, note: str) -> None:
        self.note = note


def foreign_value(kind: FaultKind, rng: random.Random) -> tuple[bytes, int]:
    """The bytes and flags another writer to the shared cache left in a queue key."""
    if kind is FaultKind.FOREIGN_PICKLE:
        planted = rng.choice([{"planted": "dict"}, PlantedObject("planted object")])
        return pickle.dumps(planted), FLAGS_PICKLED
    if kind is FaultKind.FOREIGN_GARBAGE:
        return b"\xff\xfe" + rng.randbytes(rng.randrange(1, 64)), FLAGS_BYTES
    if kind is FaultKind.FOREIGN_NUL:
        return b"\x00" + rng.randbytes(rng.randrange(0, 16)), FLAGS_BYTES
    if kind is FaultKind.FOREIGN_DEEP_JSON:
        return b"[" * DEEP_JSON_LEVELS + b"]" * DEEP_JSON_LEVELS, FLAGS_BYTES
    if kind is FaultKind.FOREIGN_COUNTER_TEXT:
        return rng.choice([b"not-a-number", b"-5", b"12abc", b""]), FLAGS_BYTES
    if kind is FaultKind.FOREIGN_STATE:
        return rng.choice(
            [
                b'{"claimed":',
                b'{"claimed":"x","seen":[],"leases":{},"gaps":[]}',
                b'{"claimed":[0],"seen":[0],"leases":{"x":{"ranges":[[0,1]],"deadline":0,"attempt":1}},"gaps":[]}',
                b"[]",
                b"null",
            ]
        ), FLAGS_BYTES
    raise ValueError(f"{kind} plants no value")


# -- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedFault:
    step: int
    kind: FaultKind


@dataclass
class Fault:
    """A fault happening now: its kind, and the generator its details come from."""

    step: int
    kind: FaultKind
    rng: random.Random
    detail: str = ""


class FaultPlan:
    """Which fault (if any) happens at each step.

    Random mode (``rates``): at most one fault per step, kind ``k`` with
    probability ``rates[k]``. Replay mode (``replay``): exactly the faults
    listed. ``enabled`` is switched off for the liveness phase. Each step's
    decision and details come from a generator seeded with (seed, step) alone,
    so a replay without one fault keeps every other fault as it was.
    """

    def __init__(
        self, seed: int, rates: Mapping[FaultKind, float], replay: Iterable[PlannedFault] | None = None
    ) -> None:
        self.seed = seed
        self.rates = [(kind, rates[kind]) for kind in FaultKind if rates.get(kind)]
        self.replay = None if replay is None else {fault.step: fault.kind for fault in replay}
        self.enabled = True

    def fault_at(self, step: int) -> Fault | None:
        if not self.enabled or (self.replay is not None and step not in self.replay):
            return None
        rng = random.Random(f"{self.seed}:fault:{step}")
        draw = rng.random()
        if self.replay is not None:
            return Fault(step, self.replay[step], rng)
        for kind, rate in self.rates:
            if draw < rate:
                return Fault(step, kind, rng)
            draw -= rate
        return None
