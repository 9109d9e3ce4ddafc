"""One in-memory model of memcache for the simulation: items, TTLs, CAS ids, eviction, nodes.

It holds the memcache semantics both backends share and the few places they
differ (``Backend``); it knows nothing of failures, which the views add on
top (``views.py``), nor of the queue. Time is the simulation's (``clock``),
so a TTL runs out only when the scheduler moves time on.

Several nodes stand for a pymemcache ``HashClient`` (or App Engine's own
servers): each key lives on one node, chosen by rendezvous hashing over the
nodes a caller considers alive. A caller that marks a node dead sees its keys
on other nodes (where they are missing, or another version sits), and sees
them again when the mark is lifted: two versions of a key can exist.
"""

from __future__ import annotations

import enum
import zlib
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass

MAX_VALUE_BYTES = 1_000_000
"""Largest value either backend stores (App Engine's ``MAX_VALUE_SIZE``)."""

MAX_RELATIVE_EXPIRY_SECONDS = 30 * 86400
"""Both backends read a larger expiry as an absolute Unix time."""

COUNTER_LIMIT = 2**64
"""memcached counters are unsigned 64-bit: they wrap; App Engine answers None instead."""

FLAGS_BYTES = 0
FLAGS_INT = 3
FLAGS_PICKLED = 2
"""App Engine's value-type flags (``TYPE_STR``, ``TYPE_INT``, ``TYPE_PICKLED``); memcached keeps flags opaque."""


@dataclass(frozen=True)
class Backend:
    """Where App Engine memcache and memcached differ, as the queue sees it."""

    name: str
    incr_changes_cas_id: bool
    """memcached gives an item a new CAS id on ``incr``; the App Engine stub keeps it."""
    counters_wrap: bool
    """memcached wraps a counter at 2**64; App Engine refuses the ``incr``."""
    max_call_bytes: int | None
    """App Engine refuses a call carrying more than 32 MB."""


APPENGINE = Backend("appengine", incr_changes_cas_id=False, counters_wrap=False, max_call_bytes=32 * 1024 * 1024)
MEMCACHED = Backend("memcached", incr_changes_cas_id=True, counters_wrap=True, max_call_bytes=None)


class Outcome(enum.Enum):
    STORED = "stored"
    NOT_STORED = "not stored"  # add: the key was present
    EXISTS = "exists"  # cas: changed since the gets
    NOT_FOUND = "not found"  # cas: the key is gone
    TOO_LARGE = "too large"  # the value is over MAX_VALUE_BYTES: nothing stored
    NOT_NUMERIC = "not numeric"  # incr of a value that is no decimal counter
    OUT_OF_RANGE = "out of range"  # incr past 2**64 on a backend that refuses it


@dataclass
class Item:
    value: bytes
    flags: int
    cas_id: int
    expires_at: float | None


class SimCache:
    """Items on ``node_count`` nodes of ``capacity_bytes`` each, evicting least recently used first.

    ``on_lost(key, reason)`` hears of every item that vanishes other than by a
    caller's delete or its TTL (evicted for room, flushed, restarted, evicted
    by a fault), so the oracle knows which guarantees still apply.
    """

    def __init__(
        self,
        backend: Backend,
        node_count: int,
        capacity_bytes: int,
        clock: Callable[[], float],
        on_lost: Callable[[str, str], None],
    ) -> None:
        self.backend = backend
        self.node_count = node_count
        self.capacity_bytes = capacity_bytes
        self.clock = clock
        self.on_lost = on_lost
        self.nodes: list[OrderedDict[str, Item]] = [OrderedDict() for _ in range(node_count)]
        self.used_bytes = [0] * node_count
        self._next_cas_id = 1

    # -- placement -------------------------------------------------------------

    def node_of(self, key: str, dead_nodes: Collection[int] = ()) -> int:
        """The node holding ``key`` for a caller that considers ``dead_nodes`` down."""
        if self.node_count == 1:
            return 0
        alive = [node for node in range(self.node_count) if node not in dead_nodes] or list(range(self.node_count))
        return max(alive, key=lambda node: zlib.crc32(f"{node}/{key}".encode()))

    def _live_item(self, key: str, dead_nodes: Collection[int]) -> tuple[int, Item | None]:
        node = self.node_of(key, dead_nodes)
        item = self.nodes[node].get(key)
        if item is not None and item.expires_at is not None and item.expires_at <= self.clock():
            self._remove(node, key)
            item = None
        return node, item

    # -- the operations both backends offer ----------------------------------------

    def get(self, key: str, dead_nodes: Collection[int] = ()) -> Item | None:
        node, item = self._live_item(key, dead_nodes)
        if item is not None:
            self.nodes[node].move_to_end(key)
        return item

    def add(
        self,
        key: str,
        value: bytes,
        expire_seconds: float = 0,
        dead_nodes: Collection[int] = (),
        flags: int = FLAGS_BYTES,
    ) -> Outcome:
        if len(value) > MAX_VALUE_BYTES:
            return Outcome.TOO_LARGE
        node, item = self._live_item(key, dead_nodes)
        if item is not None:
            self.nodes[node].move_to_end(key)
            return Outcome.NOT_STORED
        self._store(node, key, value, flags, expire_seconds)
        return Outcome.STORED

    def cas(
        self, key: str, value: bytes, cas_id: int, expire_seconds: float = 0, dead_nodes: Collection[int] = ()
    ) -> Outcome:
        if len(value) > MAX_VALUE_BYTES:
            return Outcome.TOO_LARGE
        node, item = self._live_item(key, dead_nodes)
        if item is None:
            return Outcome.NOT_FOUND
        if item.cas_id != cas_id:
            return Outcome.EXISTS
        self._store(node, key, value, FLAGS_BYTES, expire_seconds)
        return Outcome.STORED

    def incr(self, key: str, delta: int, dead_nodes: Collection[int] = ()) -> int | Outcome | None:
        """The new value; None if the key is missing; an Outcome if the value cannot be incremented."""
        node, item = self._live_item(key, dead_nodes)
        if item is None:
            return None
        if not (item.value.isdigit() and item.value.isascii() and len(item.value) <= 20):
            return Outcome.NOT_NUMERIC
        new_value = int(item.value) + delta
        if new_value >= COUNTER_LIMIT:
            if not self.backend.counters_wrap:
                return Outcome.OUT_OF_RANGE
            new_value %= COUNTER_LIMIT
        self.used_bytes[node] += len(str(new_value)) - len(item.value)
        item.value = str(new_value).encode()
        if self.backend.incr_changes_cas_id:
            item.cas_id = self._new_cas_id()
        self.nodes[node].move_to_end(key)
        return new_value

    def create_counter(self, key: str, value: int, dead_nodes: Collection[int] = ()) -> bool:
        """App Engine's ``incr(..., initial_value=)`` on a missing key: store ``value`` as a counter."""
        return self.add(key, str(value).encode(), 0, dead_nodes, flags=FLAGS_INT) is Outcome.STORED

    def delete(self, key: str, dead_nodes: Collection[int] = ()) -> bool:
        node, item = self._live_item(key, dead_nodes)
        if item is None:
            return False
        self._remove(node, key)
        return True

    # -- what faults do -------------------------------------------------------------

    def plant(self, key: str, value: bytes, flags: int, dead_nodes: Collection[int] = ()) -> None:
        """Store ``value`` whatever is there (another service's ``set``)."""
        node = self.node_of(key, dead_nodes)
        if key in self.nodes[node]:
            self._remove(node, key)
        self._store(node, key, value, flags, 0)

    def give_new_cas_id(self, node: int, key: str) -> None:
        """Keep ``key``'s value but give it a new CAS id (memcached relinking an item)."""
        self.nodes[node][key].cas_id = self._new_cas_id()

    def evict(self, node: int, key: str) -> None:
        """Drop ``key`` from ``node`` (memory pressure elsewhere on the server)."""
        self._remove(node, key)
        self.on_lost(key, "evicted")

    def flush_all(self) -> list[str]:
        """Empty every node; returns the keys lost."""
        return [key for node in range(self.node_count) for key in self._clear(node, "flushed")]

    def restart(self, node: int) -> list[str]:
        """``node`` comes back empty; returns the keys lost."""
        return self._clear(node, f"node {node} restarted")

    def entries(self) -> list[tuple[int, str]]:
        """Every stored (node, key), node by node, oldest use first."""
        return [(node, key) for node, items in enumerate(self.nodes) for key in items]

    # -- bookkeeping ------------------------------------------------------------------

    def _new_cas_id(self) -> int:
        self._next_cas_id += 1
        return self._next_cas_id

    def _store(self, node: int, key: str, value: bytes, flags: int, expire_seconds: float) -> None:
        if not expire_seconds:
            expires_at = None
        elif expire_seconds > MAX_RELATIVE_EXPIRY_SECONDS:
            expires_at = float(expire_seconds)  # an absolute Unix time: long past for any real TTL
        else:
            expires_at = self.clock() + expire_seconds
        old = self.nodes[node].pop(key, None)
        if old is not None:
            self.used_bytes[node] -= len(key) + len(old.value)
        self.nodes[node][key] = Item(value, flags, self._new_cas_id(), expires_at)
        self.used_bytes[node] += len(key) + len(value)
        while self.used_bytes[node] > self.capacity_bytes and len(self.nodes[node]) > 1:
            oldest = next(iter(self.nodes[node]))
            self._remove(node, oldest)
            self.on_lost(oldest, "evicted for room")

    def _remove(self, node: int, key: str) -> None:
        item = self.nodes[node].pop(key)
        self.used_bytes[node] -= len(key) + len(item.value)

    def _clear(self, node: int, reason: str) -> list[str]:
        lost = list(self.nodes[node])
        for key in lost:
            self.on_lost(key, reason)
        self.nodes[node].clear()
        self.used_bytes[node] = 0
        return lost
