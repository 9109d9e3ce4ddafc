"""Leases: messages held for one reader until ``ack``, delivered again whole, under
the same id, if the reader dies or stalls.

How it works: a lease is a claim whose record (id, slot ranges, deadline,
attempt, holder) lives in the state, and whose slots are taken to LEASED(id)
instead of TAKEN. An expired lease is taken over, whole, with ``attempt + 1``.
``ack`` removes the record by compare-and-set, then deletes the slots;
``release`` sets the deadline to now. The protocol: docs/protocol.md.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from clickqueue.claiming import check_max_items, claim
from clickqueue.codec import LEASE_PREFIX, SlotKind, read_slot, slot_span, taken_value
from clickqueue.context import QueueContext, one_call
from clickqueue.errors import CacheUnavailableError, InvalidArgumentError
from clickqueue.state import ReadState
from clickqueue.taking import MAX_EMPTY_ROUNDS, NOTHING_FETCHED, TAKEN_SECONDS, Fetched, fetch

logger = logging.getLogger(__name__)

MAX_LEASE_SECONDS = 86400


def lease_messages(context: QueueContext, max_items: int, seconds: float) -> Lease:
    """``Queue.lease``: an expired lease (taken over) or a new one; empty leases made
    along the way (their slots held nothing) are acked at once, with their counts."""
    check_max_items(max_items)
    if not 0 < seconds <= MAX_LEASE_SECONDS:
        raise InvalidArgumentError("seconds", seconds, f"use more than 0 and at most {MAX_LEASE_SECONDS}")
    for round_number in range(MAX_EMPTY_ROUNDS):
        made = claim(context, max_items, lease_seconds=seconds, settle_empty_runs=round_number > 0)
        if made.lease_id is None:
            if made.settled_slots:
                continue
            break
        lease = Lease(context, made.lease_id, made.attempt, made.holder, fetch(context, made))
        if lease.messages:
            return lease
        lease.ack()  # nothing in it: settle it now, with its counts
    return Lease(context, None, 0, "", NOTHING_FETCHED)


class Lease:
    """A batch of messages held for one reader until ``ack`` or ``release``.

    ``lease_id`` stays the same when the batch is delivered again, so a
    consumer can make its processing idempotent per batch; ``message_ids``
    (one per message, its own slot's key) stay the same too, so it can count
    each message once. As a context manager it acks when the block succeeds
    and releases it on an exception. An empty lease (nothing to read) is falsy
    and its ack/release do nothing.
    """

    def __init__(self, context: QueueContext, lease_id: str | None, attempt: int, holder: str, fetched: Fetched) -> None:
        self.context = context
        """The queue's parts (the library's own; see ``clickqueue.context``)."""
        self.lease_id = lease_id
        self.attempt = attempt
        self.holder = holder
        self.message_keys = fetched.message_keys
        self.messages = fetched.messages
        self.message_ids = fetched.message_ids
        self._fetched = fetched

    def __iter__(self) -> Iterator[Any]:
        return iter(self.messages)

    def __len__(self) -> int:
        return len(self.messages)

    def __bool__(self) -> bool:
        return self.lease_id is not None

    def __repr__(self) -> str:
        return f"Lease({self.lease_id!r}, attempt={self.attempt}, messages={len(self.messages)})"

    @one_call
    def ack(self) -> bool:
        """Done with the batch: 3 cache calls. True if this call settled the lease;
        False if a holder of the same id settled it first (after a takeover), or
        the queue forgot it (a reset): then only its own marks are cleared (2 calls)."""
        return self._settle()

    @one_call
    def release(self) -> bool:
        """Give the batch back now, to be delivered again under the same id: 2 cache
        calls. False if this holder's attempt is no longer the current one."""
        return self._give_back()

    def __enter__(self) -> Lease:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if exc_type is None:
            self.ack()
        else:
            self.release()

    def _settle(self) -> bool:
        """Remove the lease from the state with the counts its reader found (1 CAS
        round), then delete its slots (1 call). An empty lease has nothing to settle."""
        context, fetched, lease_id = self.context, self._fetched, self.lease_id
        if lease_id is None:
            return False

        def settle(state: ReadState) -> bool:
            record = state.leases.pop(lease_id, None)
            if record is None:
                return False
            precounted_skipped, precounted_gapped = record.precounted
            state.counts.add(fetched.skipped - precounted_skipped, fetched.gapped - precounted_gapped)
            return True

        settled = context.store.change(settle, landed=lambda state: lease_id not in state.leases)
        if not self.message_keys:
            return settled
        if not settled:
            self._clear_own_marks(lease_id)
            return False
        try:
            context.cache.delete_multi(self.message_keys)
        except CacheUnavailableError as error:
            logger.warning("queue %s: lease %s acked, its slots not deleted: %s", context.name, lease_id, error)
        return True

    def _clear_own_marks(self, lease_id: str) -> None:
        """Turn the slots still LEASED to this lease into expiring TAKEN marks
        (compare-and-set, so nothing else is ever removed): 2 calls."""
        cache = self.context.cache
        found = cache.gets_multi(self.message_keys)
        own = {
            key: (taken_value(slot_span(value)), token)
            for key, (value, token) in found.items()
            if value.startswith(LEASE_PREFIX) and read_slot(value, lease_id).kind is SlotKind.LEASED_TO_US
        }
        if own:
            cache.cas_multi(own, TAKEN_SECONDS)

    def _give_back(self) -> bool:
        """Set the lease's deadline to now, if this holder's attempt is the current one."""
        holder, count, lease_id = self.holder, len(self.messages), self.lease_id
        if lease_id is None:
            return False

        def give_back(state: ReadState) -> bool:
            record = state.leases.get(lease_id)
            if record is None or record.holder != holder or record.deadline == 0:
                return False
            record.deadline = 0
            state.counts.requeued += count
            return True

        def released(state: ReadState) -> bool:
            record = state.leases.get(lease_id)
            return record is not None and record.holder == holder and record.deadline == 0

        return self.context.store.change(give_back, landed=released)
