"""Writing: take slots from a shard's counter and ``add`` frames into them.

How it works: ``incr(w:<s>, k)`` hands out slots ``n-k+1..n`` of a shard taken in
turn, and one ``add_multi`` stores each frame in its first slot: 2 cache calls
for any batch. A frame whose ``add`` is refused or unanswered is read back with
the slots it spans and decided: stored (a lost reply), turned away by a reader's
tombstone, or collided with a counter that went back (repaired); those not
stored go to fresh slots. What a write leaves behind is counted in the state,
so that ``lost`` stays exact. The protocol: docs/protocol.md.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from clickqueue.codec import (
    GAP_TOMBSTONE,
    LEASE_PREFIX,
    TAKEN,
    TOMBSTONE,
    encode_frames,
    frame_payload,
    held_payload,
    read_slot,
    slot_span,
)
from clickqueue.context import QueueContext
from clickqueue.errors import (
    BatchTooLargeError,
    CacheUnavailableError,
    ContentionError,
    WriteFailedError,
    WriteIncompleteError,
)
from clickqueue.state import ReadState

logger = logging.getLogger(__name__)

MAX_BATCH_MESSAGES = 10_000
MAX_BATCH_BYTES = 30_000_000
"""One ``write_multi`` is one ``add_multi``: App Engine takes at most 32 MB per call."""

MAX_WRITE_ATTEMPTS = 100
"""Fresh slots a write takes for a message before it gives up (``WriteFailedError``)."""


def write_messages(context: QueueContext, messages: Iterable[Any]) -> None:
    """``Queue.write_multi``: encode and size-check the whole batch first, so a bad
    message writes nothing, then write it."""
    messages = list(messages)
    if len(messages) > MAX_BATCH_MESSAGES:
        raise BatchTooLargeError("messages", len(messages), MAX_BATCH_MESSAGES)
    batch = encode_frames(messages)
    if (size := sum(len(payload) for _messages, payload in batch)) > MAX_BATCH_BYTES:
        raise BatchTooLargeError("bytes", size, MAX_BATCH_BYTES)
    if batch:
        BatchWrite(context, batch, errors_reach_caller=True).run()


def requeue_messages(context: QueueContext, messages: Iterable[Any]) -> None:
    """``Queue.requeue``: write the messages again and count them as requeued."""
    messages = list(messages)
    write_messages(context, messages)

    def count(state: ReadState) -> None:
        state.counts.requeued += len(messages)

    if messages:
        context.record_counts(count, f"counts {{'requeued': {len(messages)}}}")


def store_again(
    context: QueueContext, messages: Sequence[Any], placed: tuple[int, int] | None = None, placed_at: float = 0.0
) -> None:
    """Store messages a read took out of their slot but does not deliver: the rest
    of a frame, in the slot after the part taken (``placed``: its own slot
    numbers, handed out at ``placed_at`` when the claim ending before it was made;
    elsewhere if a reader got there first or ``max_write_seconds`` have passed),
    or a frame that did not fit. What cannot be stored is left to be counted: its
    slots hold nothing."""
    try:
        BatchWrite(context, encode_frames(messages), errors_reach_caller=False, placed=placed, placed_at=placed_at).run()
    except (CacheUnavailableError, ContentionError, WriteFailedError, WriteIncompleteError) as error:
        logger.warning("queue %s: could not store %d messages again: %s", context.name, len(messages), error)


@dataclass(frozen=True)
class Frame:
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


class BatchWrite:
    """One ``write_multi``: its payloads (``encode_frames``), slots taken, frames added
    and settled, and what is stored so far.

    ``errors_reach_caller``: the error of a write that gives up tells its caller
    which messages it did not store (``write_multi``), so the slots they left to
    tombstones are no loss; a reader storing messages again has no caller to tell.
    ``placed`` (shard, slot) makes the first attempt store the batch from that slot
    on, without an ``incr``: the rest of a frame a claim took the first part of,
    its slot handed out at ``placed_at`` (the claim), from when ``max_write_seconds``
    count: readers may tombstone it from then on.
    """

    def __init__(
        self,
        context: QueueContext,
        batch: list[tuple[range, bytes]],
        errors_reach_caller: bool,
        placed: tuple[int, int] | None = None,
        placed_at: float = 0.0,
    ) -> None:
        self.context = context
        self.batch = batch
        self.errors_reach_caller = errors_reach_caller
        self.total = sum(len(indices) for indices, _payload in batch)
        self.placed = placed
        self.placed_at = placed_at
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
                self.context.budget.check()
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
        context = self.context
        started = context.clock()
        count = sum(len(self.batch[number][0]) for number in pending)
        if self.placed is not None:
            (shard, first), self.placed = self.placed, None
            started = self.placed_at
        else:
            shard = next(context.writer_shards)
            self.last_key = context.keys.write_counter(shard)
            last = context.cache.incr(self.last_key, count)
            if last is None:
                context.recovery.repair_counters({shard: 0})
                return pending
            context.seen_queue = True
            first = last - count + 1
        offsets = list(itertools.accumulate((len(self.batch[number][0]) for number in pending), initial=first))
        keys = context.keys.slots(shard, offsets[:-1])
        frames = [
            Frame(number, key, offset, *self.batch[number]) for number, key, offset in zip(pending, keys, offsets)
        ]
        self.last_key = keys[0]
        if context.clock() - started > context.max_write_seconds:
            self._abandon(shard, frames)
            return pending
        added = context.cache.add_multi({frame.key: frame.payload for frame in frames})
        self.stored += [index for frame in frames if added.get(frame.key) is True for index in frame.indices]
        doubtful = [frame for frame in frames if added.get(frame.key) is not True]
        return self._settle_doubtful(shard, doubtful, added) if doubtful else []

    def _settle_doubtful(self, shard: int, doubtful: list[Frame], added: dict[str, bool | None]) -> list[int]:
        """Read back the slots of frames whose ``add`` was refused or unanswered (each
        slot a frame spans: 1 call), and decide each frame."""
        unanswered = [index for frame in doubtful if added.get(frame.key) is None for index in frame.indices]
        self.unknown += unanswered
        current = self.context.cache.get_multi(  # raising leaves the unanswered unknown
            [key for frame in doubtful for key in self.context.keys.slots(shard, frame.numbers())]
        )
        self.unknown = [index for index in self.unknown if index not in unanswered]
        retry, collided_tops, empty = [], [], []
        for frame in doubtful:
            value = current.get(frame.key)
            lost_reply = added.get(frame.key) is None
            if lost_reply and holds(value, frame.payload):
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
            self.context.recovery.repair_counters({shard: max(collided_tops)})
        return retry

    def _count_turned_away(self, shard: int, frame: Frame, current: dict[str, bytes]) -> None:
        """A reader's tombstone took the frame's first slot: each slot it spans is
        counted by whoever claims it, as its value says (a tombstone: skipped; a gap
        tombstone: gapped; nothing yet: decided by the write's count)."""
        for key, number, index in zip(self.context.keys.slots(shard, frame.numbers()), frame.numbers(), frame.indices):
            if current.get(key) == TOMBSTONE:
                self.left_tombstoned[index] += 1  # its reader counted it skipped
            elif key not in current:
                self.undecided.append((shard, number, index))

    def _abandon(self, shard: int, frames: list[Frame]) -> None:
        """Tombstone every slot of the frames this write leaves (1 call), so whoever
        claims them counts them skipped, as their ``retried`` needs: left empty, a
        later counter repair's margin could cover them and count them as gapped."""
        message_of = {
            key: index
            for frame in frames
            for key, index in zip(self.context.keys.slots(shard, frame.numbers()), frame.indices)
        }
        added = self.context.cache.add_multi(dict.fromkeys(message_of, TOMBSTONE), self.context.tombstone_seconds)
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
            self.context.record_counts(count, f"a write's counts (retried {retried}, collided {self.collided})")


def holds(value: bytes | None, payload: bytes) -> bool:
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
