"""The queue: a lockless queue on memcache, where a message is delivered once and
loss is counted.

``Queue`` is the facade; each step of the protocol lives in a module of its own:
``writing`` (slots from a counter, frames added), ``claiming`` (the read state
moved forward by compare-and-set), ``taking`` (claimed slots settled and their
messages taken, slot by slot), ``leases`` (messages held until ``ack``), with
``recovery`` for lost or foreign keys and ``state`` for the read state. The
protocol, its invariants, fault model, guarantees and limits:
docs/protocol.md (one home; the docstrings only point there).
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from clickqueue.cache import Cache
from clickqueue.context import QueueContext, one_call
from clickqueue.errors import CorruptStateError, InvalidArgumentError
from clickqueue.keys import QueueKeys
from clickqueue.leases import Lease, lease_messages
from clickqueue.recovery import decimal
from clickqueue.taking import read_messages
from clickqueue.writing import requeue_messages, write_messages

MAX_EXPIRY_SECONDS = 30 * 86400
"""Both backends read a longer relative expiry as an absolute (past) time."""

QUEUE_NAME_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,100}")
MAX_SHARDS = 64


@dataclass(frozen=True)
class QueueStats:
    """Counts since the queue's state was created (see the module docstring).

    ``depth`` messages wait unclaimed; ``leased`` slots sit in outstanding
    leases; ``lost`` messages were gone from their slot (evicted, foreign, or
    their writer died) and ``written == read + lost + depth + leased``.
    ``gapped`` slots lay in a repaired counter's margin (or a recreated
    state's lookback) and held nothing: never handed out, or lost with their
    counter, so the true loss is at most ``lost + gapped``. ``resets`` counts
    lost or foreign states and counters: after one, the counts restart from it.
    While a write counter is gone, ``written`` and ``depth`` leave out what it
    handed out since the last claim, until a read or write repairs it
    (docs/protocol.md, "Limits").
    """

    depth: int
    written: int
    read: int
    requeued: int
    skipped: int
    gapped: int
    lost: int
    retried: int
    collided: int
    leased: int
    resets: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


EMPTY_STATS = QueueStats(**dict.fromkeys(QueueStats.__dataclass_fields__, 0))


class Queue:
    """A named FIFO-per-shard queue of JSON messages on memcache.

    ``client`` is None for App Engine memcache, a pymemcache client for
    memcached, or any object with the ``clickqueue.cache.Cache`` methods.
    Every process using one queue name must use the same ``shards``. ``clock``
    gives lease deadlines and the writers' stall check; ``sleep`` the pause
    after a lost compare-and-set; ``rng`` gives lease ids, the first shard and
    those pauses (a seeded one makes a simulation replayable).
    """

    def __init__(
        self,
        name: str,
        client: object | None = None,
        *,
        shards: int = 1,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        tombstone_seconds: int = 3600,
        max_write_seconds: float = 60,
    ) -> None:
        if not QUEUE_NAME_PATTERN.fullmatch(name):
            raise InvalidArgumentError("queue name", name, "use 1-100 characters of [A-Za-z0-9._:-]")
        if not 1 <= shards <= MAX_SHARDS:
            raise InvalidArgumentError("shards", shards, f"use 1 to {MAX_SHARDS}")
        if not tombstone_seconds <= MAX_EXPIRY_SECONDS:
            raise InvalidArgumentError("tombstone_seconds", tombstone_seconds, f"use at most 30 days ({MAX_EXPIRY_SECONDS})")
        if not 0 < max_write_seconds < tombstone_seconds:
            raise InvalidArgumentError(
                "max_write_seconds", max_write_seconds, f"use more than 0 and less than tombstone_seconds ({tombstone_seconds})"
            )
        self.context = QueueContext.build(
            name,
            client,
            shards=shards,
            clock=clock,
            sleep=sleep,
            rng=rng or random.SystemRandom(),
            tombstone_seconds=tombstone_seconds,
            max_write_seconds=max_write_seconds,
        )
        """The queue's parts (the library's own; see ``clickqueue.context``)."""
        self.name = name
        self.keys: QueueKeys = self.context.keys
        self.cache: Cache = self.context.cache
        self.shards = shards
        self.clock = clock
        self.tombstone_seconds = tombstone_seconds
        self.max_write_seconds = max_write_seconds

    def write(self, message: Any) -> None:
        """Append one message: 2 cache calls (``incr``, ``add_multi``)."""
        self.write_multi([message])

    @one_call
    def write_multi(self, messages: Iterable[Any]) -> None:
        """Append messages in order: 2 cache calls (``incr``, ``add_multi``) for any number.

        Every message is encoded and the batch's size checked first, so a bad
        one writes nothing. A slot found taken costs a ``get_multi``, a retry,
        and 2 calls to count it. Raises ``CacheUnavailableError`` if nothing was
        stored, ``WriteIncompleteError`` if only part may have been.
        """
        write_messages(self.context, messages)

    @one_call
    def requeue(self, messages: Iterable[Any]) -> None:
        """Write messages again (after failed processing): 4 cache calls."""
        requeue_messages(self.context, messages)

    def read(self) -> Any | None:
        """Take the oldest available message, or None: as ``read_multi(1)``."""
        messages = self.read_multi(1)
        return messages[0] if messages else None

    @one_call
    def read_multi(self, max_items: int = 100) -> list[Any]:
        """Take up to ``max_items`` messages: 2 cache calls (``gets_multi`` of the
        state, the counters and the slots read ahead; ``cas_multi`` of the state and
        of the slots' takes), one round trip each on one server; 3 when the claim's
        slots were not read ahead (this object's first claim, another reader claimed
        since, or the claim is over twice this object's last: they are read on their
        own); 1 when the queue is empty. Empty slots, a frame cut at the claim's end
        or a claim lost to another reader cost more (docs/protocol.md, "Calls").

        Messages are gone once returned: a reader that dies holding them loses
        them. Use ``lease`` when processing must survive the reader.
        """
        return read_messages(self.context, max_items)

    @one_call
    def lease(self, max_items: int = 100, seconds: float = 60) -> Lease:
        """Take up to ``max_items`` messages that stay stored until ``ack``: 3 cache
        calls, 4 when its slots were not read ahead (as ``read_multi``), 3 to take
        over an expired lease; ``ack`` 3 more.

        A lease not acked within ``seconds`` (its reader died or stalled) is
        delivered again, whole and with the same ``lease_id``, to a later
        ``lease`` call whose ``max_items`` covers it; expired leases go out
        before new messages.
        """
        return lease_messages(self.context, max_items, seconds)

    @one_call
    def stats(self) -> QueueStats:
        """Counts of the queue: 1 cache call. All zero while there is no state."""
        return read_stats(self.context)


def read_stats(context: QueueContext) -> QueueStats:
    """The counts ``Queue.stats`` answers, from one read of the state and counters."""
    found = context.cache.get_multi([context.keys.state, *context.counter_keys])
    if context.keys.state not in found:
        return EMPTY_STATS
    try:
        state = context.store.parse(found[context.keys.state])
    except CorruptStateError:
        return EMPTY_STATS
    allocated = sum(
        max(decimal(found.get(key)) or 0, state.used_through(shard)) - state.base[shard]
        for shard, key in enumerate(context.counter_keys)
    )
    claimed = sum(claimed - base for claimed, base in zip(state.claimed, state.base))
    unclaimed_gap = state.unclaimed_gap_slots()
    leased = state.leased_slots()
    counts = state.counts
    return QueueStats(
        depth=allocated - claimed - unclaimed_gap,
        written=allocated - counts.retried - counts.gapped - unclaimed_gap,
        read=claimed - leased - counts.skipped - counts.gapped,
        requeued=counts.requeued,
        skipped=counts.skipped,
        gapped=counts.gapped,
        lost=counts.skipped - counts.retried,
        retried=counts.retried,
        collided=counts.collided,
        leased=leased,
        resets=counts.resets,
    )
