"""A lockless queue on memcache: a message is delivered once, and loss is counted.

Protocol
--------
Keys (all ``cq:<name>:``, built only by ``QueueKeys``): ``w:<s>`` the write
counter of shard ``s``; ``m:<s>:<n>`` slot ``n`` of shard ``s``; ``state`` the
read state (JSON, changed only by compare-and-set); ``gen:<k>`` four copies of
the state's generation number. Slot values are messages (JSON), frames of
messages, or NUL-prefixed marks (``clickqueue.codec``): TOMBSTONE,
GAP_TOMBSTONE, TAKEN, and LEASED(id).

Slots count messages; values hold frames. Each message has a slot number of
its own, but the messages one write stores side by side share one value, a
*frame* of up to ``FRAME_MESSAGES`` (and ``FRAME_BYTES``), in the first of
their slots; the frame *spans* the others, whose keys stay unwritten. Per-key
costs (the client's work, memcache's item header) are paid per frame, while
every count stays per message: a frame evicted leaves its slots empty, and
each counts. Frames are at most ``PROBE_WINDOW`` long, so the counter repair's
windowed search still finds the first slot of some frame in every window of
a stored run.

Write. ``incr(w:<s>, k)`` hands out slots ``n-k+1..n`` of a shard taken in
turn; ``add_multi`` stores each frame in its first slot. A frame whose ``add``
is refused or unanswered is read back, with the slots it spans: holding our
bytes (or a lease's mark of them, or of their first part), it is stored (the
reply was lost); a tombstone means a reader got there first and its messages
go to fresh slots, each slot it spans counted as the reader left it (a
tombstone: skipped; nothing yet: settled by the writer's count CAS if next in
line); anything else means the counter went back (it is repaired above every
stored slot) and its messages go to fresh slots. A writer that took longer
than ``max_write_seconds`` between ``incr`` and ``add`` tombstones its slots
and takes fresh ones.

Claim. A reader ``gets_multi`` the state and every write counter in one call,
plans to move ``claimed[s]`` forward over at most ``max_items`` slots below
the counters it saw, reads those slots, and ends the claim where a frame
does: before a frame that runs past the plan's end, unless it is the first
frame there (then the claim takes its first part). It compare-and-sets the
state (for a lease, with the lease record: id, slot ranges, deadline,
attempt). An expired lease is taken over instead, whole, under the same id
with ``attempt + 1``, by a ``lease()`` whose ``max_items`` is at least its
slot count.

Read. A claimed slot still empty and spanned by no frame the claim read (its
writer is between ``incr`` and ``add``, died there, or the frame was evicted)
gets a tombstone by ``add`` (GAP_TOMBSTONE inside a gap): whichever ``add``
wins owns the slot. Each message or frame is then taken by compare-and-set on
its slot: to TAKEN (expiring in a second) by ``read_multi``, to LEASED(id) by
``lease``. A frame the claim ends inside is taken for its first part (TAKEN
of that part, or LEASED(id) of it) and, once won, its rest is added as a
frame in the next slot, which is its own; a reader that tombstoned that slot
first turns it away to fresh slots, as it would a writer. Messages are
returned only to the reader whose compare-and-set won, or read again later as
LEASED(id) by a holder of that same lease id. ``ack`` removes the lease from
the state by compare-and-set, then deletes its slots.

Counts live in the state, changed in the same CAS as what they count:
``skipped`` (claimed slots outside gaps that gave no message) and ``gapped``
(inside gaps), counted before the reader tombstones anything, corrected after;
``retried`` (slots a writer left for a tombstone, counted once its message is
stored elsewhere, or named as not stored in the error ``write_multi`` raised
when it gave up: not written, so no loss); ``resets``. From these and the
counters, ``stats()`` derives ``lost = skipped - retried`` and
``written == read + lost + depth + leased``.

Invariants, and why they hold
-----------------------------
1. A slot number is handed out once. ``incr`` is atomic; a lost, foreign or
   regressed counter is put back above every slot in use (the state's
   ``used_through`` and a bounded search for the last stored slot) plus
   ``REPAIR_MARGIN``, and the margin is recorded as a gap. A claim takes a
   counter below ``used_through`` for regressed (an older version of it can
   come back from a server some client had marked dead).
2. Each message sits in one slot's value: a writer (or a reader storing the
   rest of a frame) moves on only from a slot that does not hold its bytes,
   and ``add`` never overwrites; a reader moves the rest of a frame only after
   its compare-and-set took the frame's slot.
3. A message is delivered at most once, under every fault below, because
   exclusivity lives in the slot, not in the state: delivery needs a won
   compare-and-set on the slot's message, which only one party can win, and
   LEASED(id) can only be read back by a holder of ``id``. Losing the state,
   a counter, or seeing two versions of a key on two servers can make readers
   claim a slot twice; it cannot make them take it twice.
4. A claimed empty slot is settled by one ``add`` race; tombstones outlive any
   write still allowed to land (``max_write_seconds < tombstone_seconds``).
5. Lock-free, and every call bounded: no key is a lock; a CAS fails only when
   another party's succeeded; retries, claim rounds and searches are capped by
   named constants, and a call that hits one raises or returns empty.
6. Loss is counted: a message that is never delivered left its slot empty or
   foreign when claimed (counted in ``skipped`` before the tombstone that
   could turn its writer away), and ``retried`` is counted only for messages
   that were stored elsewhere or whose caller was told they were not stored.
   A slot a frame spans counts as holding a message only while the claim saw
   that frame; a frame that never got its first slot leaves every slot it
   would have spanned to be counted.
7. ``lease(k)`` and ``read_multi(k)`` return at most ``k`` messages: a claim
   covers at most ``k`` slots, a frame is cut at the claim's end, and where a
   counter that went back made two frames overlap, the one that does not fit
   is taken and written again, not returned.

Fault model (any of these, at any moment, in any combination)
-------------------------------------------------------------
Eviction of any key; ``flush_all``; a server restarting empty, or marked dead
by one client so its keys map elsewhere for a while; an error on any call,
before or after it was applied (lost replies), including part of a multi-key
call; foreign values in any queue key (pickles, garbage, NUL-prefixed bytes,
deeply nested JSON, non-numeric counters, a corrupt state); a process killed
between any two calls; clocks a few seconds apart; values over 1 MB, calls
over 32 MB (App Engine), expiries over 30 days.

Guarantees
----------
* No message is returned by two ``read_multi`` calls or two leases; the only
  repeat is the same lease id, ``attempt + 1``, after expiry or ``release``.
* While the state survives, every message not delivered is in ``lost``, and
  the counts above hold exactly between quiescent points. A write that raised
  ``CacheUnavailableError`` stored nothing (``WriteIncompleteError`` names what
  it may have stored).
* Nothing read from a cache is unpickled; foreign values are skipped and
  counted once; a batch too big for one call is refused before it is written.
* After the faults stop, new messages are delivered and writers do not give up.

Limits (what cannot be promised)
--------------------------------
* A lost or foreign state is a reset (``resets``, also in a new process when a
  counter or generation marker survived; after ``flush_all`` only a process
  that had used the queue can tell). The new state starts ``RECOVERY_SLOTS``
  below the counters: older unread messages, and leases the state held, are
  dropped uncounted, and an ack of a forgotten lease returns False. After a
  reset, ``lost`` is a lower bound.
* ``read_multi`` that dies or raises after its claim leaves those messages
  unread (counted as read); use ``lease`` when every message matters.
* A write counter lost together with the slots it had just handed out (a
  server restart) leaves no trace of them: the repair's gap starts above the
  last slot still stored, so such messages count in ``gapped``, not ``lost``.
  The true loss is then between ``lost`` and ``lost + gapped``. Counts are
  exact only if the writes in flight when a counter is lost fit in
  ``REPAIR_MARGIN`` slots; beyond that two writers can share a slot (both
  messages are still stored, one elsewhere) and ``retried`` can exceed what
  it balances.
* A foreign value that is valid JSON cannot be told from a message; a foreign
  value in a slot counts as one lost message. A counter pushed far ahead makes
  readers walk (and count as lost) the empty range, a bounded step per call;
  if it is then lost before a claim recorded it, the repair's bounded search
  can miss the short run written up there, which waits above the repaired
  counter, uncounted, until writers reach it.
* A lost reply on a claim, or on a ``read_multi`` take, is resolved
  conservatively: the slots are read by whoever wins them, and what cannot be
  told counts as skipped.
* A counter that went back (a flush, or its older version back from a server
  a client had marked dead) hands out slots until a reader repairs it; a write
  that lands in a slot readers had passed, whose tombstone is gone, is never
  read, and counted only as far as ``lost`` is a lower bound after a reset.
  A frame's ``add`` checks only its first slot, so a frame written from such a
  counter can span slots an older value still holds: both are read (the one
  that does not fit moved, as above), and ``read``/``written`` then count
  slots, not messages, for them.
* A read of fewer messages than a frame holds splits it; the rest, stored again
  in the next slot, can be turned away by a reader racing for that slot and
  written once more in fresh slots (``skipped`` and ``retried`` both count it).
  A reader that dies between taking the first part and storing the rest loses
  the rest, counted in ``skipped`` as its slots are claimed; one that gives up
  storing it (turned away ``MAX_WRITE_ATTEMPTS`` times) loses it too, counted
  once per message.
* A writer counts ``retried`` for a turned-away frame's slots when it learns of
  them; those not yet claimed are counted ``skipped`` by the claim that reaches
  them, so until then ``lost`` can read below 0.
"""

from __future__ import annotations

import functools
import itertools
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from clickqueue.cache import CallBudget, ObservedCache, wrap_client
from clickqueue.codec import (
    EMPTY_SLOT,
    GAP_TOMBSTONE,
    LEASE_PREFIX,
    TAKEN,
    TOMBSTONE,
    SlotKind,
    SlotValue,
    encode_frames,
    frame_payload,
    held_payload,
    leased_value,
    read_slot,
    slot_span,
    taken_value,
)
from clickqueue.errors import (
    BatchTooLargeError,
    CacheUnavailableError,
    ContentionError,
    CorruptStateError,
    InvalidArgumentError,
    TooManyLeasesError,
    WriteFailedError,
    WriteIncompleteError,
)
from clickqueue.keys import QueueKeys
from clickqueue.recovery import Recovery, decimal
from clickqueue.state import (
    MAX_CAS_ATTEMPTS,
    MAX_LEASES,
    MAX_STATE_BYTES,
    LeaseRecord,
    ReadState,
    SlotRange,
    StateStore,
    cas_pause_seconds,
)

logger = logging.getLogger(__name__)

MAX_CLAIM_ITEMS = 1000
"""Most slots one claim takes."""

MAX_BATCH_MESSAGES = 10_000
MAX_BATCH_BYTES = 30_000_000
"""One ``write_multi`` is one ``add_multi``: App Engine takes at most 32 MB per call."""

MAX_WRITE_ATTEMPTS = 100
"""Fresh slots a write takes for a message before it gives up (``WriteFailedError``)."""

MAX_CACHE_CALLS_PER_CALL = 500
"""Cache calls one public call may make, whatever the cache holds: past it, the call
raises ``ContentionError`` at its next point where nothing is half-done. A normal
call makes 1 to 6; the most a call needs on its own terms is a write taking all its
``MAX_WRITE_ATTEMPTS`` fresh slots (about 4 calls each)."""

MAX_EMPTY_ROUNDS = 4
"""Claims one ``read_multi``/``lease`` makes that yield nothing before it returns
empty (each after the first also settles up to ``MAX_CLAIM_ITEMS`` empty slots)."""

TAKEN_SECONDS = 1
"""A TAKEN mark only has to win the compare-and-set; then it may vanish."""

MAX_EXPIRY_SECONDS = 30 * 86400
"""Both backends read a longer relative expiry as an absolute (past) time."""

QUEUE_NAME_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,100}")


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


@dataclass
class _Claim:
    ranges: list[SlotRange]
    lease_id: str | None = None
    attempt: int = 0
    holder: str = ""
    settled_slots: int = 0
    slots: dict[str, tuple] = field(default_factory=dict)
    """The claimed slots as read just before the claim's CAS (value, token)."""
    views: dict[str, SlotValue] = field(default_factory=lambda: _Views())
    """What each claimed slot held then, as this claim's reader sees it (decoded once)."""
    table: _Slots | None = None
    """The claimed slots in order."""
    counted: tuple[int, int] = (0, 0)
    """(skipped, gapped): the claimed slots without a message, counted in that CAS."""


@dataclass(frozen=True)
class _Fetched:
    message_keys: list[str]
    """The slots holding the messages (a frame's holds several)."""
    messages: list[Any]
    message_ids: list[str]
    """Each message's own slot key."""
    skipped: int
    gapped: int


def _one_call(method: Callable) -> Callable:
    """Count the cache calls of one public call against ``MAX_CACHE_CALLS_PER_CALL``."""

    @functools.wraps(method)
    def counted(queue: Queue, *args: Any, **kwargs: Any) -> Any:
        with queue._budget.one_call():
            return method(queue, *args, **kwargs)

    return counted


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
        if not 1 <= shards <= 64:
            raise InvalidArgumentError("shards", shards, "use 1 to 64")
        if not tombstone_seconds <= MAX_EXPIRY_SECONDS:
            raise InvalidArgumentError("tombstone_seconds", tombstone_seconds, "use at most 30 days (2592000)")
        if not 0 < max_write_seconds < tombstone_seconds:
            raise InvalidArgumentError(
                "max_write_seconds", max_write_seconds, f"use more than 0 and less than tombstone_seconds ({tombstone_seconds})"
            )
        self.name = name
        self.keys = QueueKeys(name)
        self._budget = CallBudget(MAX_CACHE_CALLS_PER_CALL)
        self.cache = ObservedCache(wrap_client(client), self._budget.spend)
        self.shards = shards
        self.clock = clock
        self._sleep = sleep
        self.tombstone_seconds = tombstone_seconds
        self.max_write_seconds = max_write_seconds
        self._rng = rng or random.SystemRandom()
        first_shard = self._rng.randrange(shards)
        self._writer_shards = itertools.cycle([*range(first_shard, shards), *range(first_shard)])
        self._counter_keys = [self.keys.write_counter(shard) for shard in range(shards)]
        self._store = StateStore(self.cache, self.keys, shards, self._budget.check, self._pause_after_failed_cas)
        self._recovery = Recovery(
            self.cache, self.keys, self._store, seen_before=lambda: self._seen_queue, check_budget=self._budget.check
        )
        self._seen_queue = False

    # -- writing -------------------------------------------------------------------

    def write(self, message: Any) -> None:
        """Append one message: 2 cache calls (``incr``, ``add_multi``)."""
        self.write_multi([message])

    @_one_call
    def write_multi(self, messages: Iterable[Any]) -> None:
        """Append messages in order: 2 cache calls (``incr``, ``add_multi``) for any number.

        Every message is encoded and the batch's size checked first, so a bad
        one writes nothing. A slot found taken costs a ``get_multi``, a retry,
        and 2 calls to count it. Raises ``CacheUnavailableError`` if nothing was
        stored, ``WriteIncompleteError`` if only part may have been.
        """
        messages = list(messages)
        if len(messages) > MAX_BATCH_MESSAGES:
            raise BatchTooLargeError("messages", len(messages), MAX_BATCH_MESSAGES)
        batch = encode_frames(messages)
        if (size := sum(len(payload) for _messages, payload in batch)) > MAX_BATCH_BYTES:
            raise BatchTooLargeError("bytes", size, MAX_BATCH_BYTES)
        if batch:
            _BatchWrite(self, batch, errors_reach_caller=True).run()

    @_one_call
    def requeue(self, messages: Iterable[Any]) -> None:
        """Write messages again (after failed processing): 4 cache calls."""
        messages = list(messages)
        self.write_multi(messages)

        def count(state: ReadState) -> None:
            state.counts.requeued += len(messages)

        if messages:
            self._record_counts(count, f"counts {{'requeued': {len(messages)}}}")

    def _record_counts(self, count: Callable[[ReadState], None], what: str) -> None:
        """Apply ``count`` to the state's counts, at most once (a count lost to an error
        only makes ``lost`` larger)."""

        def change(state: ReadState) -> bool:
            count(state)
            return True

        try:
            self._store.change(change, landed=lambda state: True)
        except (CacheUnavailableError, ContentionError) as error:
            logger.warning("queue %s: could not record %s: %s", self.name, what, error)

    # -- claiming and reading ------------------------------------------------------

    def read(self) -> Any | None:
        """Take the oldest available message, or None: as ``read_multi(1)``."""
        messages = self.read_multi(1)
        return messages[0] if messages else None

    @_one_call
    def read_multi(self, max_items: int = 100) -> list[Any]:
        """Take up to ``max_items`` messages: 4 cache calls (``gets_multi`` and
        ``cas_multi`` of the state, ``gets_multi`` and ``cas_multi`` of the slots);
        1 when the queue is empty. Empty slots cost up to 5 more.

        Messages are gone once returned: a reader that dies holding them loses
        them. Use ``lease`` when processing must survive the reader.
        """
        _check_max_items(max_items)
        for round_number in range(MAX_EMPTY_ROUNDS):
            claim = self._claim(max_items, lease_seconds=None, settle_empty_runs=round_number > 0)
            if not claim.ranges and not claim.settled_slots:
                return []
            if claim.ranges and (fetched := self._fetch(claim)).messages:
                return fetched.messages
        return []

    @_one_call
    def lease(self, max_items: int = 100, seconds: float = 60) -> Lease:
        """Take up to ``max_items`` messages that stay stored until ``ack``: 4 cache
        calls, 3 to take over an expired lease; ``ack`` 3 more.

        A lease not acked within ``seconds`` (its reader died or stalled) is
        delivered again, whole and with the same ``lease_id``, to a later
        ``lease`` call whose ``max_items`` covers it; expired leases go out
        before new messages.
        """
        _check_max_items(max_items)
        if not 0 < seconds <= 86400:
            raise InvalidArgumentError("seconds", seconds, "use more than 0 and at most 86400")
        for round_number in range(MAX_EMPTY_ROUNDS):
            claim = self._claim(max_items, lease_seconds=seconds, settle_empty_runs=round_number > 0)
            if claim.lease_id is None:
                if claim.settled_slots:
                    continue
                break
            lease = Lease(self, claim, self._fetch(claim))
            if lease.messages:
                return lease
            lease.ack()  # nothing in it: settle it now, with its counts
        return Lease(self, _Claim([]), _Fetched([], [], [], 0, 0))

    def _claim(self, max_items: int, lease_seconds: float | None, settle_empty_runs: bool) -> _Claim:
        """Move the state forward over the next slots (or take over an expired
        lease), reading them first: 3 cache calls (``gets_multi`` of the state and
        counters, of the slots, ``cas_multi``), plus repairs of whatever the first
        finds missing, plus 2 to settle runs of slots without messages (``_settle_runs``)."""
        for attempt in range(1, MAX_CAS_ATTEMPTS + 1):
            self._budget.check()
            found = self.cache.gets_multi([self.keys.state, *self._counter_keys])
            if self.keys.state not in found:
                self._recovery.recreate_state(found)
                continue
            raw_state, token = found[self.keys.state]
            try:
                state = self._store.parse(raw_state)
            except CorruptStateError:
                logger.warning("queue %s: replacing a state it did not write", self.name)
                self._recovery.replace_corrupt_state(token, found)
                continue
            counters = [decimal(found[key][0]) if key in found else None for key in self._counter_keys]
            broken = [shard for shard, counter in enumerate(counters) if counter is None or counter < state.used_through(shard)]
            if broken:
                self._recovery.repair_counters(dict.fromkeys(broken, 0))
                continue
            self._seen_queue = True
            claim = self._plan_claim(state, counters, max_items, lease_seconds, settle_empty_runs)
            if not claim.ranges and not claim.settled_slots:
                return claim
            self._count_claimed(claim, state)
            encoded = self._store.encode(state)
            if claim.lease_id is not None and len(encoded) > MAX_STATE_BYTES:
                raise TooManyLeasesError(self.keys.state, len(state.leases))
            applied = self.cache.cas_multi({self.keys.state: (encoded, token)})[self.keys.state]
            if applied or (applied is None and self._claim_landed(claim)):
                return claim
            self._pause_after_failed_cas(attempt)
        raise ContentionError(self.keys.state, MAX_CAS_ATTEMPTS)

    def _pause_after_failed_cas(self, failed_attempts: int) -> None:
        self._sleep(cas_pause_seconds(failed_attempts, self._rng))

    def _plan_claim(
        self,
        state: ReadState,
        counters: list[int],
        max_items: int,
        lease_seconds: float | None,
        settle_empty_runs: bool,
    ) -> _Claim:
        now = self.clock()
        if lease_seconds is not None and (expired_id := state.first_expired_lease(now, max_items)):
            record = state.leases[expired_id]
            record.deadline, record.attempt, record.holder = now + lease_seconds, record.attempt + 1, self._nonce()
            claim = _Claim(record.ranges, expired_id, record.attempt, record.holder)
            claim.table = _Slots(self.keys, record.ranges)
            claim.slots, claim.views = self._read_slots(claim.table, expired_id)
            return claim
        settled = self._settle_runs(state, counters, gaps_only=not settle_empty_runs)
        ends = state.plan_claim(counters, max_items)
        planned = _Slots(self.keys, [SlotRange(shard, state.claimed[shard] + 1, last) for shard, last in ends.items()])
        slots, views = self._read_slots(planned, None)
        ranges = state.claim(counters, max_items, _fit_frames(planned, views, ends))
        if not ranges or lease_seconds is None:
            claim = _Claim(ranges, settled_slots=settled)
        else:
            if len(state.leases) >= MAX_LEASES:
                raise TooManyLeasesError(self.keys.state, MAX_LEASES)
            lease_id, holder = f"{self._rng.getrandbits(128):032x}", self._nonce()
            state.leases[lease_id] = LeaseRecord(ranges, now + lease_seconds, 1, (0, 0), holder)
            claim = _Claim(ranges, lease_id, 1, holder, settled)
        claim.table = planned.claimed_as(self.keys, ranges)
        claim.slots = {key: value for key, value in slots.items() if key in claim.table.position}
        claim.views = _Views((key, view) for key, view in views.items() if key in claim.table.position)
        return claim

    def _read_slots(self, slots: _Slots, lease_id: str | None) -> tuple[dict[str, tuple], _Views]:
        """Read ``slots`` (1 call): each present one's value and token, and what it holds for ``lease_id``."""
        found = self.cache.gets_multi(slots.keys()) if len(slots) else {}
        return found, _Views((key, read_slot(value, lease_id)) for key, (value, _token) in found.items())

    def _settle_runs(self, state: ReadState, counters: list[int], gaps_only: bool) -> int:
        """Claim in bulk, in this claim's CAS, the next slots that hold no message:
        runs inside gaps (empty by design) on every claim, and any run after a
        round that found only empty slots (mass eviction, a counter pushed
        ahead). Up to ``MAX_CLAIM_ITEMS`` slots are read, the empty ones
        tombstoned first (so no writer can fill them after), and each shard's
        run up to its first message or doubtful slot is claimed, counted as
        skipped or gapped: 2 cache calls instead of claims that walk the run
        ``max_items`` slots at a time. Returns the slots claimed."""
        runs = state.runs_to_settle(counters, MAX_CLAIM_ITEMS, gaps_only)
        if not runs:
            return 0
        in_gap = {
            key: part.in_gap for run in runs for part in run for key in self.keys.slots(part.shard, part.numbers())
        }
        found = self.cache.get_multi(list(in_gap))
        run_keys = [
            list(itertools.takewhile(
                lambda key: key not in found or read_slot(found[key]).kind is not SlotKind.MESSAGE,
                [key for part in run for key in self.keys.slots(part.shard, part.numbers())],
            ))
            for run in runs
        ]  # up to each run's first message: what lies beyond is not claimed, so not tombstoned
        empty = {
            key: GAP_TOMBSTONE if in_gap[key] else TOMBSTONE for keys in run_keys for key in keys if key not in found
        }
        added = self.cache.add_multi(empty, self.tombstone_seconds) if empty else {}
        settled_total = 0
        for run, keys in zip(runs, run_keys):
            settled = list(itertools.takewhile(lambda key: added.get(key) is True or key in found, keys))
            gapped = sum(1 for key in settled if in_gap[key])
            state.settle_run(run[0].shard, len(settled) - gapped, gapped)
            settled_total += len(settled)
        return settled_total

    def _count_claimed(self, claim: _Claim, state: ReadState) -> None:
        """Count, in the same CAS as the claim, its slots that hold no message as the
        claim read them (a frame's messages fill the slots it spans): counted before
        anything tombstones them, since a writer a tombstone turns away counts
        ``retried``, which must never exceed what readers counted. A lease's record
        keeps the counts (a takeover counted them when the lease was made)."""
        record = state.leases.get(claim.lease_id)  # None for a read_multi (no lease id)
        if record is not None and record.attempt > 1:
            return
        gaps = [in_gap for *_slot, in_gap in claim.table.uncovered(claim.views, (SlotKind.MESSAGE,))]
        claim.counted = (len(gaps) - sum(gaps), sum(gaps))
        state.counts.add(*claim.counted)
        if record is not None:
            record.precounted = claim.counted

    def _nonce(self) -> str:
        return f"{self._rng.getrandbits(64):016x}"

    def _claim_landed(self, claim: _Claim) -> bool:
        """After a claim's CAS went unanswered: does the state show it? (1 call)
        For ``read_multi``, slots claimed by anyone are fine: the takes decide."""
        found = self.cache.gets_multi([self.keys.state])
        if self.keys.state not in found:
            return False
        try:
            state = self._store.parse(found[self.keys.state][0])
        except CorruptStateError:
            return False
        if claim.lease_id is not None:
            record = state.leases.get(claim.lease_id)
            return record is not None and record.holder == claim.holder
        return all(r.last <= state.claimed[r.shard] for r in claim.ranges)

    def _fetch(self, claim: _Claim) -> _Fetched:
        """Tombstone the claimed slots found empty (and not inside a frame), then take
        the messages: 1 cache call (``cas_multi``); empty slots cost their tombstones
        (1, see ``_tombstone``); a frame the claim ends inside costs the store of its
        rest (2, see ``_take``). ``read_multi`` corrects its counts (2) only if a
        slot changed after the claim read it (a writer stored into it first)."""
        table = claim.table
        found = dict(claim.slots)
        views = _Views(claim.views)
        empty = [slot for slot in table.uncovered(views, PRESENT) if views[slot[0]].kind is SlotKind.EMPTY]
        if empty:
            self._tombstone(empty, views, found, claim.lease_id)
        taken = self._take(claim, views, found)
        delivered = {key: SlotValue(SlotKind.MESSAGE, span=span) for key, span in taken.items()}
        undelivered = [in_gap for *_slot, in_gap in table.uncovered(delivered, (SlotKind.MESSAGE,))]
        held = table.held({key: views[key] for key in taken}, PRESENT)
        fetched = _Fetched(
            [key for (key, *_), _view in held],
            [message for (key, *_), view in held for message in view.messages[: taken[key]]],
            [
                message_id
                for (key, shard, number, _in_gap), _view in held
                for message_id in self.keys.slots(shard, range(number, number + taken[key]))
            ],
            skipped=len(undelivered) - sum(undelivered),
            gapped=sum(undelivered),
        )
        if claim.lease_id is None and (fetched.skipped, fetched.gapped) != claim.counted:
            try:
                self._store.change(_add_counts(fetched.skipped - claim.counted[0], fetched.gapped - claim.counted[1]))
            except (CacheUnavailableError, ContentionError) as error:  # never at the cost of the messages
                logger.warning("queue %s: could not correct counts after a read: %s", self.name, error)
        return fetched

    def _tombstone(
        self, empty: list[_Slot], views: dict[str, SlotValue], found: dict[str, tuple], lease_id: str | None
    ) -> None:
        """Add a tombstone to each empty slot: 1 call. A slot whose ``add`` lost to its
        writer is read again (1 call); one whose ``add`` went unanswered and did not
        land is tried once more, so a late writer is not left to store into it."""
        for _ in range(2):
            tombstones = {key: GAP_TOMBSTONE if in_gap else TOMBSTONE for key, *_, in_gap in empty}
            added = self.cache.add_multi(tombstones, self.tombstone_seconds)
            unsettled = [slot for slot in empty if added.get(slot[0]) is not True]
            if not unsettled:
                return
            found.update(self.cache.gets_multi([key for key, *_ in unsettled]))
            for key, *_ in unsettled:
                if key in found:
                    views[key] = read_slot(found[key][0], lease_id)
            empty = [slot for slot in unsettled if views[slot[0]].kind is SlotKind.EMPTY]
            if not empty:
                return

    def _take(self, claim: _Claim, views: dict[str, SlotValue], found: dict[str, tuple]) -> dict[str, int]:
        """Compare-and-set each message's or frame's slot to TAKEN or LEASED(id): 1 call.
        Returns the slots won (and those already LEASED to this lease), each with
        how many of its messages are this claim's: all, but for a frame running past
        the claim's last slot of its shard, which is cut there. The rest of such a
        frame is stored again in the slot after that (``_BatchWrite``, 2 calls), once
        its first part is won.

        Never more messages than slots claimed: frames overlap only where a write
        counter went back and handed a writer slots inside an older frame. One that
        does not fit is moved: taken (1 call) and written again (``_BatchWrite``)."""
        taken = {key: view.span for key, view in views.items() if view.kind is SlotKind.LEASED_TO_US}
        last_of_shard = {r.shard: r.last for r in claim.ranges}
        room = len(claim.table) - sum(taken.values())
        cut, overflow, first_parts = {}, [], {}
        for (key, shard, number, _in_gap), view in claim.table.held(views, (SlotKind.MESSAGE,)):
            count = min(view.span, last_of_shard[shard] - number + 1)
            if count > room:
                overflow.append(key)
                continue
            cut[key], room = count, room - count
            if count < view.span:
                first_parts[key] = (shard, number + count)
        if overflow:
            self._move(overflow, views, found)
        if not cut:
            return taken
        if claim.lease_id is None:
            takes = {key: (taken_value(count), found[key][1]) for key, count in cut.items()}
            expire_seconds = TAKEN_SECONDS
        else:
            takes = {
                key: (leased_value(claim.lease_id, views[key].payload if count == views[key].span else frame_payload(views[key].messages[:count])), found[key][1])
                for key, count in cut.items()
            }
            expire_seconds = 0
        applied = self.cache.cas_multi(takes, expire_seconds)
        won = {key for key in takes if applied.get(key) is True}
        unanswered = [key for key in takes if applied.get(key) is None]
        if unanswered and claim.lease_id is not None:  # a TAKEN mark cannot say whose it is
            reread = self.cache.gets_multi(unanswered)
            won |= {key for key in reread if read_slot(reread[key][0], claim.lease_id).kind is SlotKind.LEASED_TO_US}
        taken |= {key: cut[key] for key in won}
        for key, rest_at in first_parts.items():
            if key in won:
                self._store_again(views[key].messages[cut[key] :], placed=rest_at)
        return taken

    def _move(self, keys: list[str], views: dict[str, SlotValue], found: dict[str, tuple]) -> None:
        """Take the frames in ``keys`` (TAKEN, compare-and-set: 1 call) and write the
        messages of those won again, in fresh slots."""
        takes = {key: (taken_value(views[key].span), found[key][1]) for key in keys}
        applied = self.cache.cas_multi(takes, TAKEN_SECONDS)
        won = [key for key in keys if applied.get(key) is True]
        if won:
            self._store_again([message for key in won for message in views[key].messages])

    def _store_again(self, messages: Sequence[Any], placed: tuple[int, int] | None = None) -> None:
        """Store messages this read took out of their slot but does not deliver: the rest
        of a frame, in the slot after the part taken (``placed``: its own slot
        numbers; elsewhere if a reader got there first), or a frame that did not fit.
        What cannot be stored is left to be counted: its slots hold nothing."""
        try:
            _BatchWrite(self, encode_frames(messages), errors_reach_caller=False, placed=placed).run()
        except (CacheUnavailableError, ContentionError, WriteFailedError, WriteIncompleteError) as error:
            logger.warning("queue %s: could not store %d messages again: %s", self.name, len(messages), error)

    # -- leases --------------------------------------------------------------------

    @_one_call
    def _ack(self, lease: Lease) -> bool:
        def settle(state: ReadState) -> bool:
            record = state.leases.pop(lease.lease_id, None)
            if record is None:
                return False
            precounted_skipped, precounted_gapped = record.precounted
            state.counts.add(lease._skipped - precounted_skipped, lease._gapped - precounted_gapped)
            return True

        settled = self._store.change(settle, landed=lambda state: lease.lease_id not in state.leases)
        if not lease.message_keys:
            return settled
        if not settled:
            self._clear_own_marks(lease)
            return False
        try:
            self.cache.delete_multi(lease.message_keys)
        except CacheUnavailableError as error:
            logger.warning("queue %s: lease %s acked, its slots not deleted: %s", self.name, lease.lease_id, error)
        return True

    def _clear_own_marks(self, lease: Lease) -> None:
        """Turn the slots still LEASED to this lease into expiring TAKEN marks
        (compare-and-set, so nothing else is ever removed): 2 calls."""
        found = self.cache.gets_multi(lease.message_keys)
        own = {
            key: (taken_value(slot_span(value)), token)
            for key, (value, token) in found.items()
            if value.startswith(LEASE_PREFIX) and read_slot(value, lease.lease_id).kind is SlotKind.LEASED_TO_US
        }
        if own:
            self.cache.cas_multi(own, TAKEN_SECONDS)

    @_one_call
    def _release(self, lease: Lease) -> bool:
        def give_back(state: ReadState) -> bool:
            record = state.leases.get(lease.lease_id)
            if record is None or record.holder != lease.holder or record.deadline == 0:
                return False
            record.deadline = 0
            state.counts.requeued += len(lease.messages)
            return True

        def released(state: ReadState) -> bool:
            record = state.leases.get(lease.lease_id)
            return record is not None and record.holder == lease.holder and record.deadline == 0

        return self._store.change(give_back, landed=released)

    # -- stats ---------------------------------------------------------------------

    @_one_call
    def stats(self) -> QueueStats:
        """Counts of the queue: 1 cache call. All zero while there is no state."""
        found = self.cache.get_multi([self.keys.state, *self._counter_keys])
        if self.keys.state not in found:
            return EMPTY_STATS
        try:
            state = self._store.parse(found[self.keys.state])
        except CorruptStateError:
            return EMPTY_STATS
        allocated = sum(
            max(decimal(found.get(key)) or 0, state.used_through(shard)) - state.base[shard]
            for shard, key in enumerate(self._counter_keys)
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


def _check_max_items(max_items: int) -> None:
    if not 1 <= max_items <= MAX_CLAIM_ITEMS:
        raise InvalidArgumentError("max_items", max_items, f"use 1 to {MAX_CLAIM_ITEMS}")


def _add_counts(skipped: int, gapped: int) -> Callable[[ReadState], bool]:
    def add(state: ReadState) -> bool:
        state.counts.add(skipped, gapped)
        return True

    return add


_Slot = tuple[str, int, int, bool]
"""A claimed slot: its key, shard, number, and whether it lies in a gap."""


class _Views(dict):
    """What slots hold, by key: a slot read as missing holds nothing."""

    def __missing__(self, key: str) -> SlotValue:
        return EMPTY_SLOT


PRESENT = (SlotKind.MESSAGE, SlotKind.LEASED_TO_US, SlotKind.SETTLED, SlotKind.FOREIGN)


class _Slots:
    """Slots of one claim (or of a plan) in order, each as ``_Slot``, and the sparse
    work on them: a read finds a value in a few, frames span the rest."""

    def __init__(self, keys: QueueKeys, ranges: list[SlotRange]) -> None:
        self.ranges = ranges
        self.slots: list[_Slot] = [
            (key, r.shard, number, r.in_gap)
            for r in ranges
            for key, number in zip(keys.slots(r.shard, r.numbers()), r.numbers())
        ]
        self.position = {key: index for index, (key, *_) in enumerate(self.slots)}

    def claimed_as(self, keys: QueueKeys, ranges: list[SlotRange]) -> _Slots:
        """The slots of ``ranges``, a claim made from this plan: the plan itself when
        the claim took it all, outside any gap (the common case)."""
        return self if ranges == self.ranges else _Slots(keys, ranges)

    def __len__(self) -> int:
        return len(self.slots)

    def keys(self) -> list[str]:
        return [key for key, *_ in self.slots]

    def held(self, views: dict[str, SlotValue], kinds: tuple[SlotKind, ...]) -> list[tuple[_Slot, SlotValue]]:
        """The slots holding a value of ``kinds``, in order, each with it."""
        return sorted(
            (
                (self.slots[self.position[key]], view)
                for key, view in views.items()
                if view.kind in kinds and key in self.position
            ),
            key=lambda held: self.position[held[0][0]],
        )

    def uncovered(self, views: dict[str, SlotValue], kinds: tuple[SlotKind, ...]) -> list[_Slot]:
        """The slots neither holding a value of ``kinds`` nor spanned by one (a frame
        spans the slots after its own, in its shard)."""
        covered = bytearray(len(self.slots))
        for (key, shard, number, _in_gap), view in self.held(views, kinds):
            first = self.position[key]
            last = min(first + view.span, len(self.slots))
            while self.slots[last - 1][1:3] != (shard, number + last - 1 - first):  # a shard ends sooner
                last -= 1
            covered[first:last] = b"\x01" * (last - first)
        return [] if 0 not in covered else [slot for slot, is_covered in zip(self.slots, covered) if not is_covered]


def _fit_frames(planned: _Slots, views: dict[str, SlotValue], ends: dict[int, int]) -> dict[int, int]:
    """Cut a planned claim (``ends``: the last slot per shard) so that it ends where a
    frame does: before the frame that runs past a shard's end, if the claim holds
    messages before it in that shard; else the frame stays, and ``_take`` takes
    its first part."""
    fitted = dict(ends)
    first_frame: dict[int, int] = {}
    for (_key, shard, number, _in_gap), view in planned.held(views, (SlotKind.MESSAGE,)):
        first_frame.setdefault(shard, number)
        if number + view.span - 1 > ends[shard] and number > first_frame[shard]:
            fitted[shard] = number - 1
    return fitted


@dataclass(frozen=True)
class _Frame:
    """A payload of one write as placed by an attempt: in the slot of its first
    message, spanning one slot per message (``indices``, in the batch)."""

    number: int
    """Which of the write's payloads it is."""
    key: str
    first: int
    indices: range
    payload: bytes

    def numbers(self) -> range:
        return range(self.first, self.first + len(self.indices))


class _BatchWrite:
    """One ``write_multi``: its payloads (``encode_frames``), slots taken, frames added
    and settled, and what is stored so far.

    ``errors_reach_caller``: the error of a write that gives up tells its caller
    which messages it did not store (``write_multi``), so the slots they left to
    tombstones are no loss; a reader storing messages again has no caller to tell.
    ``placed`` (shard, slot) makes the first attempt store the batch from that slot
    on, without an ``incr``: the rest of a frame a claim took the first part of.
    """

    def __init__(
        self,
        queue: Queue,
        batch: list[tuple[range, bytes]],
        errors_reach_caller: bool,
        placed: tuple[int, int] | None = None,
    ) -> None:
        self.queue = queue
        self.batch = batch
        self.errors_reach_caller = errors_reach_caller
        self.total = sum(len(indices) for indices, _payload in batch)
        self.placed = placed
        self.stored: list[int] = []
        self.unknown: list[int] = []
        self.left_tombstoned: Counter[int] = Counter()
        """Per message, the tombstoned slots it left, which their reader counts as skipped."""
        self.undecided: list[tuple[int, int, int]] = []
        """(shard, slot, message) of a frame turned away whose slot holds no tombstone yet:
        the write's count settles those still unclaimed, and counts those claimed."""
        self.collided = 0
        self.last_key = ""

    def run(self) -> None:
        pending = list(range(len(self.batch)))
        try:
            for _ in range(MAX_WRITE_ATTEMPTS):
                if not pending:
                    break
                self.queue._budget.check()
                pending = self._attempt(pending)
        except (CacheUnavailableError, ContentionError) as error:
            self._record_counts()
            if not self.stored and not self.unknown:
                raise
            raise WriteIncompleteError(error.key, sorted(self.stored), sorted(self.unknown), self.total) from error
        self._record_counts()
        if pending:
            raise WriteFailedError(self.last_key, MAX_WRITE_ATTEMPTS, sorted(self.stored), self.total)
        if self.unknown:
            raise WriteIncompleteError(self.last_key, sorted(self.stored), sorted(self.unknown), self.total)

    def _attempt(self, pending: list[int]) -> list[int]:
        """Take slots for the ``pending`` payloads and add them; return those to write again."""
        queue = self.queue
        started = queue.clock()
        count = sum(len(self.batch[number][0]) for number in pending)
        if self.placed is not None:
            (shard, first), self.placed = self.placed, None
        else:
            shard = next(queue._writer_shards)
            self.last_key = queue.keys.write_counter(shard)
            last = queue.cache.incr(self.last_key, count)
            if last is None:
                queue._recovery.repair_counters({shard: 0})
                return pending
            queue._seen_queue = True
            first = last - count + 1
        offsets = list(itertools.accumulate((len(self.batch[number][0]) for number in pending), initial=first))
        keys = queue.keys.slots(shard, offsets[:-1])
        frames = [
            _Frame(number, key, offset, *self.batch[number]) for number, key, offset in zip(pending, keys, offsets)
        ]
        self.last_key = keys[0]
        if queue.clock() - started > queue.max_write_seconds:
            self._abandon(shard, frames)
            return pending
        added = queue.cache.add_multi({frame.key: frame.payload for frame in frames})
        self.stored += [index for frame in frames if added.get(frame.key) is True for index in frame.indices]
        doubtful = [frame for frame in frames if added.get(frame.key) is not True]
        return self._settle_doubtful(shard, doubtful, added) if doubtful else []

    def _settle_doubtful(self, shard: int, doubtful: list[_Frame], added: dict[str, bool | None]) -> list[int]:
        """Read back the slots of frames whose ``add`` was refused or unanswered (each
        slot a frame spans: 1 call), and decide each frame."""
        unanswered = [index for frame in doubtful if added.get(frame.key) is None for index in frame.indices]
        self.unknown += unanswered
        current = self.queue.cache.get_multi(  # raising leaves the unanswered unknown
            [key for frame in doubtful for key in self.queue.keys.slots(shard, frame.numbers())]
        )
        self.unknown = [index for index in self.unknown if index not in unanswered]
        retry, collided_tops, empty = [], [], []
        for frame in doubtful:
            value = current.get(frame.key)
            lost_reply = added.get(frame.key) is None
            if lost_reply and _holds(value, frame.payload):
                self.stored += frame.indices  # stored; only the reply was lost
                continue
            if lost_reply and value is not None and value.startswith(TAKEN):
                self.unknown += frame.indices  # stored and already taken, or someone else's: cannot tell
                continue
            retry.append(frame.number)
            if value is None:
                empty.append(frame)
            elif value in (TOMBSTONE, GAP_TOMBSTONE):
                self._count_turned_away(shard, frame, current)
            else:
                collided_tops.append(frame.first + slot_span(value) - 1)
        if empty:
            self._abandon(shard, empty)
        if collided_tops:
            self.collided += len(collided_tops)
            self.queue._recovery.repair_counters({shard: max(collided_tops)})
        return retry

    def _count_turned_away(self, shard: int, frame: _Frame, current: dict[str, bytes]) -> None:
        """A reader's tombstone took the frame's first slot: each slot it spans is
        counted by whoever claims it, as its value says (a tombstone: skipped; a gap
        tombstone: gapped; nothing yet: decided by the write's count)."""
        for key, number, index in zip(self.queue.keys.slots(shard, frame.numbers()), frame.numbers(), frame.indices):
            if current.get(key) == TOMBSTONE:
                self.left_tombstoned[index] += 1  # its reader counted it skipped
            elif key not in current:
                self.undecided.append((shard, number, index))

    def _abandon(self, shard: int, frames: list[_Frame]) -> None:
        """Tombstone every slot of the frames this write leaves (1 call), so whoever
        claims them counts them skipped, as their ``retried`` needs: left empty, a
        later counter repair's margin could cover them and count them as gapped."""
        message_of = {
            key: index
            for frame in frames
            for key, index in zip(self.queue.keys.slots(shard, frame.numbers()), frame.indices)
        }
        added = self.queue.cache.add_multi(dict.fromkeys(message_of, TOMBSTONE), self.queue.tombstone_seconds)
        for key, index in message_of.items():
            if added.get(key) is True:
                self.left_tombstoned[index] += 1

    def _record_counts(self) -> None:
        """Add what this write counted to the state, at most once (a count lost to an
        error only makes ``lost`` larger). A slot a message left to a tombstone
        counts as retried once the message is accounted for: stored elsewhere, or
        named to the caller as not stored. A message no caller hears of (a reader
        storing it again) that was not stored keeps one such slot as its loss. The
        slots of turned-away frames that no tombstone settled hold nothing: each is
        claimed here where it is next in line, and counts as retried (for a message
        accounted for) unless it lies in a gap; one further on is counted skipped by
        the reader that claims it."""
        accounted = set(self.stored)
        if self.errors_reach_caller:
            accounted = set(range(self.total)) - set(self.unknown)
        lost_here = set(range(self.total)) - accounted - set(self.unknown)
        retried = sum(
            count - (index in lost_here)
            for index, count in self.left_tombstoned.items()
            if index in accounted or index in lost_here
        )
        undecided = sorted(self.undecided)

        def count(state: ReadState) -> None:
            turned_away = 0
            for shard, number, index in undecided:
                in_gap = state.in_gap(shard, number)
                if number == state.claimed[shard] + 1:
                    state.settle_run(shard, int(not in_gap), int(in_gap))
                turned_away += index in accounted and not in_gap  # claimed or to be: counted as skipped
            state.counts.retried += retried + turned_away
            state.counts.collided += self.collided

        if retried or undecided or self.collided:
            self.queue._record_counts(count, f"a write's counts (retried {retried}, collided {self.collided})")


def _holds(value: bytes | None, payload: bytes) -> bool:
    """Whether ``value`` is ``payload`` as written, or a lease's mark holding it or its
    first part (a reader took the frame's first part, and moved the rest)."""
    if value is None:
        return False
    if value == payload:
        return True
    if not value.startswith(LEASE_PREFIX):
        return False
    held = held_payload(value)
    mine, theirs = read_slot(payload).messages, read_slot(held).messages
    return held == payload or 0 < len(theirs) < len(mine) and frame_payload(mine[: len(theirs)]) == held


class Lease:
    """A batch of messages held for one reader until ``ack`` or ``release``.

    ``lease_id`` stays the same when the batch is delivered again, so a
    consumer can make its processing idempotent per batch; ``message_ids``
    (one per message, its own slot's key) stay the same too, so it can count
    each message once. As a context manager it acks when the block succeeds
    and releases it on an exception. An empty lease (nothing to read) is falsy
    and its ack/release do nothing.
    """

    def __init__(self, queue: Queue, claim: _Claim, fetched: _Fetched) -> None:
        self.queue = queue
        self.lease_id = claim.lease_id
        self.attempt = claim.attempt
        self.holder = claim.holder
        self.message_keys = fetched.message_keys
        self.messages = fetched.messages
        self.message_ids = fetched.message_ids
        self._skipped = fetched.skipped
        self._gapped = fetched.gapped

    def __iter__(self) -> Iterator[Any]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __bool__(self) -> bool:
        return self.lease_id is not None

    def __repr__(self) -> str:
        return f"Lease({self.lease_id!r}, attempt={self.attempt}, messages={len(self.messages)})"

    def ack(self) -> bool:
        """Done with the batch: 3 cache calls. True if this call settled the lease;
        False if a holder of the same id settled it first (after a takeover), or
        the queue forgot it (a reset): then only its own marks are cleared (2 calls)."""
        return self.lease_id is not None and self.queue._ack(self)

    def release(self) -> bool:
        """Give the batch back now, to be delivered again under the same id: 2 cache
        calls. False if this holder's attempt is no longer the current one."""
        return self.lease_id is not None and self.queue._release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.ack()
        else:
            self.release()
