"""A lockless queue on memcache: exactly-once reads, leases, and counted loss.

Protocol
--------
Keys, all prefixed ``cq:<name>:`` and built only by ``QueueKeys``:

* ``w:<s>``      write counter of shard ``s`` (memcache ``incr``); slots start at 1.
* ``m:<s>:<n>``  slot ``n`` of shard ``s``: a message (JSON), or a tombstone.
* ``state``      the read state, changed only by compare-and-set (CAS):
  ``claimed[s]`` (last slot handed to a reader), ``seen[s]`` (highest write
  counter a reader saw), the outstanding ``leases`` (id -> slot ranges,
  deadline, attempt) and ``gaps`` (slot ranges skipped by a reseeded counter).
* ``stat:<x>``   counters of rare events, for ``stats()``.

Write: ``incr(w:<s>, k)`` reserves slots ``n-k+1..n`` of a shard taken in turn;
``add`` stores each message in its slot. An ``add`` that fails found the slot
taken (by a reader's tombstone, normally): the message is retried in a fresh slot.

Claim: ``gets`` the state and every write counter in one call, then CAS the
state forward to ``claimed[s]' <= w:<s>`` (at most ``MAX_CLAIM_ITEMS`` slots),
adding a lease record in the same CAS for ``lease()``. Read: ``get`` the
claimed slots. A slot still empty (its writer is between ``incr`` and ``add``,
died there, or the message was evicted) gets ``add``-ed a reader tombstone:
whichever ``add`` wins owns the slot, so either the reader sees the message or
the writer retries elsewhere. Nobody waits. ``read_multi`` then deletes the
slots and returns only messages whose delete it won; a lease leaves them
stored until ``ack`` (CAS the lease out, then delete the slots). A lease whose
deadline passed is taken over by the next ``lease()`` call: CAS bumps its
deadline and attempt, keeping its id, and the slots are read again.

Invariants, and why they hold:

1. Each slot is claimed once. The state's CAS token changes with every write,
   so of the readers holding one version exactly one moves it on; ``claimed``
   only grows, and a claim never passes a write counter the reader saw.
2. Each message sits in exactly one slot: ``add`` stores nothing when it fails,
   and a writer moves on only after a failed ``add``.
3. A claimed empty slot is settled by one ``add`` race, and tombstones outlive
   any write that is still allowed to land (``max_write_seconds`` is checked
   between ``incr`` and ``add``; a slower writer takes a fresh slot).
   With 1-3, a message is returned by exactly one read or lease (a lease can
   come back only after its deadline, under the same id, or after ``release``).
4. Lock-free: no key is a lock and nobody waits holding anything. A CAS
   fails only when another party's succeeded, and a writer retries only
   after a reader's tombstone won its slot (it gives up, with
   ``WriteFailedError``, after ``MAX_WRITE_ATTEMPTS`` slots). A dead reader
   holds nothing but a lease that expires.
5. Lost counters: a slot number is never handed out twice. A party whose
   ``incr`` (or claim) finds no counter reseeds it above every slot already
   used: the last stored slot above ``max(claimed, seen)`` (scanned for), plus
   ``MAX_CLAIM_ITEMS``, since one claim may rest on a counter value read just
   before it vanished. The skipped slots are recorded in ``gaps`` first, so
   readers count them apart from lost ones. A new state is added before its
   counters, so nobody sees counters without a state unless the state was
   lost. A reader that finds no state recreates it at the write counters
   (never re-reading: no duplicates), counts the messages it skips over as
   lost and reset-tombstones the empty slots there, so writes still in
   flight to them move up. ``resets`` counts each lost counter or state.
6. Loss is counted: ``skipped`` counts claimed slots found empty,
   ``retried`` the writers that hit a reader tombstone, so
   ``lost = skipped - retried`` is the messages whose slot held nothing:
   evicted, or their writer died between ``incr`` and ``add``.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from clickqueue.cache import Cache, wrap_client
from clickqueue.codec import RESET_TOMBSTONE, TOMBSTONE, decode_message, encode_message, is_tombstone
from clickqueue.errors import (
    CorruptStateError,
    InvalidArgumentError,
    ShardMismatchError,
    TooManyLeasesError,
    WriteFailedError,
)

logger = logging.getLogger(__name__)

MAX_CLAIM_ITEMS = 1000
"""Most slots one claim takes; also the margin a reseeded write counter skips."""

MAX_LEASES = 1000
"""Most outstanding leases the state carries (it must stay one memcache value)."""

MAX_WRITE_ATTEMPTS = 100
QUEUE_NAME_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,100}")
STAT_NAMES = ("skipped", "retried", "collided", "gapped", "requeued", "resets")


@dataclass(frozen=True)
class QueueKeys:
    """Every memcache key of one queue."""

    name: str

    @property
    def prefix(self) -> str:
        return f"cq:{self.name}:"

    @property
    def state(self) -> str:
        return f"{self.prefix}state"

    def write_counter(self, shard: int) -> str:
        return f"{self.prefix}w:{shard}"

    def slot(self, shard: int, number: int) -> str:
        return self.slots(shard, [number])[0]

    def slots(self, shard: int, numbers: Iterable[int]) -> list[str]:
        """The keys of slots ``numbers`` of ``shard``, built fast: reads and writes take hundreds."""
        shard_prefix = f"{self.prefix}m:{shard}:"
        return [f"{shard_prefix}{number}" for number in numbers]

    def stat(self, stat_name: str) -> str:
        return f"{self.prefix}stat:{stat_name}"


@dataclass(frozen=True)
class SlotRange:
    """Slots ``first..last`` (inclusive) of one shard."""

    shard: int
    first: int
    last: int

    def numbers(self) -> range:
        return range(self.first, self.last + 1)


@dataclass
class LeaseRecord:
    ranges: list[SlotRange]
    deadline: float
    attempt: int


@dataclass
class ReadState:
    """The value under ``QueueKeys.state``: what readers have claimed and leased."""

    claimed: list[int]
    seen: list[int]
    leases: dict[str, LeaseRecord] = field(default_factory=dict)
    gaps: list[SlotRange] = field(default_factory=list)

    @classmethod
    def starting_at(cls, claimed: list[int]) -> ReadState:
        return cls(claimed=list(claimed), seen=list(claimed))

    @classmethod
    def from_bytes(cls, key: str, raw: bytes) -> ReadState:
        try:
            data = json.loads(raw)
            return cls(
                claimed=[int(n) for n in data["claimed"]],
                seen=[int(n) for n in data["seen"]],
                leases={
                    lease_id: LeaseRecord(
                        ranges=[SlotRange(*bounds) for bounds in record["ranges"]],
                        deadline=float(record["deadline"]),
                        attempt=int(record["attempt"]),
                    )
                    for lease_id, record in data["leases"].items()
                },
                gaps=[SlotRange(*bounds) for bounds in data["gaps"]],
            )
        except (ValueError, KeyError, TypeError) as error:
            raise CorruptStateError(key) from error

    def to_bytes(self) -> bytes:
        data = {
            "claimed": self.claimed,
            "seen": self.seen,
            "leases": {
                lease_id: {
                    "ranges": [[r.shard, r.first, r.last] for r in record.ranges],
                    "deadline": record.deadline,
                    "attempt": record.attempt,
                }
                for lease_id, record in self.leases.items()
            },
            "gaps": [[r.shard, r.first, r.last] for r in self.gaps],
        }
        return json.dumps(data, separators=(",", ":")).encode()

    def claim(self, write_counters: Sequence[int], max_items: int) -> list[SlotRange]:
        """Advance ``claimed`` over up to ``max_items`` written slots, fullest shard first."""
        self.seen = [max(seen, counter) for seen, counter in zip(self.seen, write_counters)]
        backlog = {
            shard: counter - self.claimed[shard]
            for shard, counter in enumerate(write_counters)
            if counter > self.claimed[shard]
        }
        ranges = []
        remaining = max_items
        for shard in sorted(backlog, key=backlog.get, reverse=True):
            if remaining == 0:
                break
            taken = min(backlog[shard], remaining)
            ranges.append(SlotRange(shard, self.claimed[shard] + 1, self.claimed[shard] + taken))
            self.claimed[shard] += taken
            remaining -= taken
        self.gaps = [gap for gap in self.gaps if gap.last > self.claimed[gap.shard]]
        return ranges

    def used_through(self, shard: int) -> int:
        """The highest slot of ``shard`` the state knows to have been handed out."""
        gap_ends = [gap.last for gap in self.gaps if gap.shard == shard]
        return max(self.claimed[shard], self.seen[shard], *gap_ends)

    def first_expired_lease(self, now: float) -> str | None:
        expired = [lease_id for lease_id, record in self.leases.items() if record.deadline <= now]
        return min(expired, key=lambda lease_id: self.leases[lease_id].deadline, default=None)


@dataclass(frozen=True)
class QueueStats:
    """Counts since the queue's state was created (estimates after a reset).

    ``depth`` slots are written but not yet claimed; ``lost`` messages were gone
    from their slot when read; ``leased`` slots sit in outstanding leases.
    """

    depth: int
    written: int
    read: int
    requeued: int
    skipped: int
    lost: int
    retried: int
    collided: int
    leased: int
    resets: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Claim:
    ranges: list[SlotRange]
    gaps: list[SlotRange] = field(default_factory=list)
    lease_id: str | None = None
    attempt: int = 0


class Queue:
    """A named FIFO-per-shard queue of JSON messages on memcache.

    ``client`` is None for App Engine memcache, a pymemcache client for
    memcached, or any ``clickqueue.cache.Cache``. Every process using one queue
    name must use the same ``shards``. ``clock`` gives lease deadlines and the
    writers' stall check; ``tombstone_seconds`` must exceed ``max_write_seconds``.
    """

    def __init__(
        self,
        name: str,
        client: object | None = None,
        *,
        shards: int = 1,
        clock: Callable[[], float] = time.time,
        tombstone_seconds: int = 3600,
        max_write_seconds: float = 60,
    ) -> None:
        if not QUEUE_NAME_PATTERN.fullmatch(name):
            raise InvalidArgumentError("queue name", name, "use 1-100 characters of [A-Za-z0-9._:-]")
        if not 1 <= shards <= 64:
            raise InvalidArgumentError("shards", shards, "use 1 to 64")
        if not 0 < max_write_seconds < tombstone_seconds:
            raise InvalidArgumentError("max_write_seconds", max_write_seconds, "must be below tombstone_seconds")
        self.name = name
        self.keys = QueueKeys(name)
        self.cache: Cache = wrap_client(client)
        self.shards = shards
        self.clock = clock
        self.tombstone_seconds = tombstone_seconds
        self.max_write_seconds = max_write_seconds
        first_shard = random.randrange(shards)
        self._writer_shards = itertools.cycle([*range(first_shard, shards), *range(first_shard)])
        self._counter_keys = [self.keys.write_counter(shard) for shard in range(shards)]
        self._has_seen_queue = False

    # -- writing ---------------------------------------------------------------

    def write(self, message: Any) -> None:
        """Append one message: 2 cache calls (``incr``, ``add``)."""
        self.write_multi([message])

    def write_multi(self, messages: Iterable[Any]) -> None:
        """Append messages in order: 2 cache calls (``incr``, ``add_multi``) for any number.

        Every message is encoded and checked first, so a bad one writes nothing.
        A slot lost to a reader's tombstone costs one ``get_multi`` and a retry.
        """
        pending = [encode_message(message) for message in messages]
        for _ in range(MAX_WRITE_ATTEMPTS):
            if not pending:
                return
            shard = next(self._writer_shards)
            started = self.clock()
            last = self.cache.incr(self.keys.write_counter(shard), len(pending))
            if last is None:
                self._reseed_write_counter(shard)
                continue
            self._has_seen_queue = True
            slots = dict(zip(self.keys.slots(shard, range(last - len(pending) + 1, last + 1)), pending))
            if self.clock() - started > self.max_write_seconds:
                self._count("retried", len(slots))
                continue
            not_stored = self.cache.add_multi(slots)
            if not_stored:
                self._count_lost_slots(not_stored)
            pending = [slots[key] for key in not_stored]
        if pending:
            raise WriteFailedError(self.keys.write_counter(shard), MAX_WRITE_ATTEMPTS)

    def requeue(self, messages: Iterable[Any]) -> None:
        """Write messages again (after failed processing): 3 cache calls."""
        messages = list(messages)
        self.write_multi(messages)
        self._count("requeued", len(messages))

    def _count_lost_slots(self, keys: list[str]) -> None:
        """Tell tombstone hits (``retried``) from anything else (``collided``)."""
        current = self.cache.get_multi(keys)
        hit_tombstones = sum(1 for key in keys if current.get(key) == TOMBSTONE)
        self._count("retried", hit_tombstones)
        self._count("collided", len(keys) - hit_tombstones)

    def _reseed_write_counter(self, shard: int) -> None:
        """Recreate a lost write counter above every slot number already handed out."""
        counter_key = self.keys.write_counter(shard)
        found = self.cache.get_multi([self.keys.state, *self._counter_keys])
        if self.keys.state not in found:
            self._recreate_state([int(found[key]) if key in found else None for key in self._counter_keys])
            return
        if counter_key in found:
            return  # another party reseeded it first
        top = self._last_stored_slot(shard, self._parse_state(found[self.keys.state]).used_through(shard))
        if top == 0:
            self.cache.add_multi({counter_key: b"0"})  # nothing was ever written to this shard
            return
        gap = None

        def record_gap(state: ReadState) -> bool:
            nonlocal gap
            floor = max(state.used_through(shard), top)
            gap = SlotRange(shard, floor + 1, floor + MAX_CLAIM_ITEMS)
            state.gaps.append(gap)
            return True

        def forget_gap(state: ReadState) -> bool:
            if gap not in state.gaps:
                return False
            state.gaps.remove(gap)
            return True

        if not self._change_state(record_gap):
            return  # the state vanished meanwhile: the next incr starts over
        if self.cache.add_multi({counter_key: str(gap.last).encode()}):
            # Another party set the counter first. Only a later reseed puts it past
            # our whole gap (ours is then never handed out); otherwise forget ours.
            winner = self.cache.get_multi([counter_key]).get(counter_key)
            if winner is None or int(winner) < gap.last:
                self._change_state(forget_gap)
            return
        self._count("resets", 1)

    def _last_stored_slot(self, shard: int, floor: int) -> int:
        """The highest slot above ``floor`` holding anything (the lost counter's
        value, give or take writes still in flight), scanning up
        ``MAX_CLAIM_ITEMS`` slots per call until a window is empty."""
        top = floor
        while True:
            numbers = range(top + 1, top + MAX_CLAIM_ITEMS + 1)
            window = dict(zip(self.keys.slots(shard, numbers), numbers))
            stored = self.cache.get_multi(list(window))
            if not stored:
                return top
            top = max(window[key] for key in stored)

    def _create_state(self, claimed: list[int]) -> bool:
        """Add a state starting after ``claimed``, then any missing write counters.

        Returns whether this call created the state. Nobody can have claimed
        from a state just created, so counters created with it need no margin.
        """
        if self.cache.add_multi({self.keys.state: ReadState.starting_at(claimed).to_bytes()}):
            return False
        self.cache.add_multi({key: str(start).encode() for key, start in zip(self._counter_keys, claimed)})
        return True

    def _change_state(self, change: Callable[[ReadState], bool]) -> bool:
        """Apply ``change`` to the state by gets + CAS, retrying on contention.

        ``change`` edits the state it is given and returns False to give up.
        Returns whether a change was stored (False also when there is no state).
        """
        while True:
            found = self.cache.gets_multi([self.keys.state])
            if self.keys.state not in found:
                return False
            raw_state, token = found[self.keys.state]
            state = self._parse_state(raw_state)
            if not change(state):
                return False
            if self.cache.cas(self.keys.state, state.to_bytes(), token):
                return True

    # -- claiming and reading --------------------------------------------------

    def read(self) -> Any | None:
        """Take the oldest available message, or None: as ``read_multi(1)``."""
        messages = self.read_multi(1)
        return messages[0] if messages else None

    def read_multi(self, max_items: int = 100) -> list[Any]:
        """Take up to ``max_items`` messages: 4 cache calls (``gets_multi``, ``cas``,
        ``get_multi``, ``delete_multi``); 1 when the queue is empty. Slots that
        held only tombstones are claimed past without returning an empty list.

        Messages are gone once returned: a reader that dies holding them loses
        them. Use ``lease`` when processing must survive the reader.
        """
        while True:
            claim = self._claim(max_items, lease_seconds=None)
            if not claim.ranges:
                return []
            keys, messages = self._fetch(claim)
            if keys:
                break
        not_deleted = set(self.cache.delete_multi(keys))
        if not_deleted:
            self._count("skipped", len(not_deleted))
        return [message for key, message in zip(keys, messages) if key not in not_deleted]

    def lease(self, max_items: int = 100, seconds: float = 60) -> Lease:
        """Take up to ``max_items`` messages that stay stored until ``ack``: 3 cache
        calls (``gets_multi``, ``cas``, ``get_multi``), and ``ack`` 3 more.

        A lease not acked within ``seconds`` (its reader died or stalled) is
        delivered again, with the same ``lease_id``, to a later ``lease`` call;
        expired leases go out before new messages.
        """
        if not 0 < seconds <= 86400:
            raise InvalidArgumentError("seconds", seconds, "use more than 0 and at most 86400")
        while True:
            claim = self._claim(max_items, lease_seconds=seconds)
            if claim.lease_id is None:
                return Lease(self, None, 0, [], [])
            lease = Lease(self, claim.lease_id, claim.attempt, *self._fetch(claim))
            if lease.messages:
                return lease
            lease.ack()

    def _claim(self, max_items: int, lease_seconds: float | None) -> _Claim:
        if not 1 <= max_items <= MAX_CLAIM_ITEMS:
            raise InvalidArgumentError("max_items", max_items, f"use 1 to {MAX_CLAIM_ITEMS}")
        while True:
            found = self.cache.gets_multi([self.keys.state, *self._counter_keys])
            counters = [int(found[key][0]) if key in found else None for key in self._counter_keys]
            if self.keys.state not in found:
                self._recreate_state(counters)
                continue
            lost_counters = [shard for shard, counter in enumerate(counters) if counter is None]
            if lost_counters:
                for shard in lost_counters:
                    self._reseed_write_counter(shard)
                continue
            raw_state, token = found[self.keys.state]
            state = self._parse_state(raw_state)
            self._has_seen_queue = True
            now = self.clock()
            gaps = list(state.gaps)
            expired_id = state.first_expired_lease(now) if lease_seconds is not None else None
            if expired_id is not None:
                record = state.leases[expired_id]
                record.deadline, record.attempt = now + lease_seconds, record.attempt + 1
                claim = _Claim(record.ranges, gaps, expired_id, record.attempt)
            else:
                ranges = state.claim(counters, max_items)
                if not ranges:
                    return _Claim([])
                if lease_seconds is None:
                    claim = _Claim(ranges, gaps)
                else:
                    if len(state.leases) >= MAX_LEASES:
                        raise TooManyLeasesError(self.keys.state, MAX_LEASES)
                    claim = _Claim(ranges, gaps, uuid.uuid4().hex, 1)
                    state.leases[claim.lease_id] = LeaseRecord(ranges, now + lease_seconds, 1)
            if self.cache.cas(self.keys.state, state.to_bytes(), token):
                return claim

    def _recreate_state(self, counters: list[int | None]) -> None:
        """Start a missing state at the write counters, so nothing is read twice.

        The messages still stored below the counters are skipped unread (or sat
        in a lease the state forgot): they are counted as lost, found by reading
        back ``MAX_CLAIM_ITEMS`` slots per call until a window holds none. Empty
        slots there get a reset tombstone, so a write still in flight to one of
        them fails and goes to a fresh slot instead of below the new state.
        """
        claimed = [counter or 0 for counter in counters]
        if not self._create_state(claimed) or not (self._has_seen_queue or any(claimed)):
            return
        self._count("resets", 1)
        for shard, counter in enumerate(claimed):
            for top in range(counter, 0, -MAX_CLAIM_ITEMS):
                window = self.keys.slots(shard, range(max(1, top - MAX_CLAIM_ITEMS + 1), top + 1))
                stored = self.cache.get_multi(window)
                empty = [key for key in window if key not in stored]
                stored_meanwhile = self.cache.add_multi(dict.fromkeys(empty, RESET_TOMBSTONE), self.tombstone_seconds)
                skipped = len(stored_meanwhile) + sum(1 for value in stored.values() if not is_tombstone(value))
                if not skipped:
                    break
                self._count("skipped", skipped)

    def _parse_state(self, raw_state: bytes) -> ReadState:
        state = ReadState.from_bytes(self.keys.state, raw_state)
        if len(state.claimed) != self.shards:
            raise ShardMismatchError(self.keys.state, len(state.claimed), self.shards)
        return state

    def _fetch(self, claim: _Claim) -> tuple[list[str], list[Any]]:
        """Read claimed slots in order: 1 ``get_multi``; empty slots cost an
        ``add_multi`` of tombstones and a ``get_multi`` of the ``add``s lost."""
        keys = [key for r in claim.ranges for key in self.keys.slots(r.shard, r.numbers())]
        found = self.cache.get_multi(keys)
        empty = [key for key in keys if key not in found]
        if empty:
            written_meanwhile = self.cache.add_multi(dict.fromkeys(empty, TOMBSTONE), self.tombstone_seconds)
            if written_meanwhile:
                found.update(self.cache.get_multi(written_meanwhile))
            in_gaps = {key for gap in claim.gaps for key in self.keys.slots(gap.shard, gap.numbers())}
            tombstoned = set(empty) - set(written_meanwhile)
            self._count("gapped", len(tombstoned & in_gaps))
            self._count("skipped", len(tombstoned - in_gaps))
        message_keys, messages = [], []
        for key in keys:
            value = found.get(key)
            if value is None or is_tombstone(value):
                continue
            try:
                messages.append(decode_message(value))
            except ValueError:
                logger.warning("slot %s holds no JSON message; counted as skipped", key)
                self._count("skipped", 1)
                continue
            message_keys.append(key)
        return message_keys, messages

    # -- leases ----------------------------------------------------------------

    def _settle_lease(self, lease: Lease, acknowledge: bool) -> bool:
        """CAS the lease out of the state (ack) or make it due now (release).

        Returns whether this lease was still outstanding. An ack deletes the
        slots even when it was not: the messages were processed.
        """

        def settle(state: ReadState) -> bool:
            record = state.leases.get(lease.lease_id)
            if record is None or (not acknowledge and record.attempt != lease.attempt):
                return False
            if acknowledge:
                del state.leases[lease.lease_id]
            else:
                record.deadline = 0
            return True

        held = self._change_state(settle)
        if acknowledge:
            if lease.message_keys:
                self.cache.delete_multi(lease.message_keys)
        elif held:
            self._count("requeued", len(lease.messages))
        return held

    # -- stats -----------------------------------------------------------------

    def stats(self) -> QueueStats:
        """Counts of the queue: 1 cache call."""
        stat_keys = {name: self.keys.stat(name) for name in STAT_NAMES}
        found = self.cache.get_multi([self.keys.state, *self._counter_keys, *stat_keys.values()])
        stat = {name: int(found.get(key, 0)) for name, key in stat_keys.items()}
        state = (
            self._parse_state(found[self.keys.state])
            if self.keys.state in found
            else ReadState.starting_at([0] * self.shards)
        )
        counters = [int(found[key]) if key in found else seen for key, seen in zip(self._counter_keys, state.seen)]
        allocated, claimed = sum(counters), sum(state.claimed)
        return QueueStats(
            depth=max(0, allocated - claimed),
            written=allocated - stat["retried"] - stat["collided"] - stat["gapped"],
            read=claimed - stat["skipped"] - stat["gapped"],
            requeued=stat["requeued"],
            skipped=stat["skipped"],
            lost=max(0, stat["skipped"] - stat["retried"]),
            retried=stat["retried"],
            collided=stat["collided"],
            leased=sum(len(r.numbers()) for record in state.leases.values() for r in record.ranges),
            resets=stat["resets"],
        )

    def _count(self, stat_name: str, amount: int) -> None:
        if amount:
            self.cache.incr(self.keys.stat(stat_name), amount, initial_value=0)


class Lease:
    """A batch of messages held for one reader until ``ack`` or ``release``.

    ``lease_id`` stays the same when the batch is delivered again, so a
    consumer can make its processing idempotent per batch. As a context
    manager it acks when the block succeeds and releases it on an exception.
    An empty lease (nothing to read) is falsy and its ack/release do nothing.
    """

    def __init__(
        self, queue: Queue, lease_id: str | None, attempt: int, message_keys: list[str], messages: list[Any]
    ) -> None:
        self.queue = queue
        self.lease_id = lease_id
        self.attempt = attempt
        self.message_keys = message_keys
        self.messages = messages

    def __iter__(self) -> Iterator[Any]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __bool__(self) -> bool:
        return self.lease_id is not None

    def __repr__(self) -> str:
        return f"Lease({self.lease_id!r}, attempt={self.attempt}, messages={len(self.messages)})"

    def ack(self) -> bool:
        """Done with the batch: 3 cache calls. False if it had expired and was
        already taken over or acked elsewhere (this processing was a repeat)."""
        return self.lease_id is not None and self.queue._settle_lease(self, acknowledge=True)

    def release(self) -> bool:
        """Give the batch back now, to be delivered again under the same id: 3 cache calls
        (``gets_multi``, ``cas``, and the ``requeued`` count)."""
        return self.lease_id is not None and self.queue._settle_lease(self, acknowledge=False)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.ack()
        else:
            self.release()
