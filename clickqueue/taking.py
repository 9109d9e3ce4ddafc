"""Taking: settle the claimed slots and take their messages, slot by slot.

How it works: a claimed slot still empty, and spanned by no frame the claim
read, gets a tombstone by ``add`` (whichever ``add`` wins owns the slot). Each
message or frame is then taken by compare-and-set on its own slot, to TAKEN
(``read_multi``) or LEASED(id) (``lease``): only the reader whose CAS won gets
its messages. A frame the claim ends inside is taken for its first part, its
rest stored again in the next slot. The protocol: docs/protocol.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clickqueue.cache import Applied
from clickqueue.claiming import MAX_CLAIM_ITEMS, Claim, check_max_items, claim
from clickqueue.codec import GAP_TOMBSTONE, TOMBSTONE, SlotKind, SlotValue, frame_payload, leased_value, read_slot, taken_value
from clickqueue.context import QueueContext
from clickqueue.errors import CacheUnavailableError, ContentionError
from clickqueue.slots import PRESENT, Slot, Views
from clickqueue.state import ReadState
from clickqueue.writing import store_again

logger = logging.getLogger(__name__)

MAX_EMPTY_ROUNDS = 4
"""Claims one ``read_multi``/``lease`` makes that yield nothing before it returns
empty (each after the first also settles up to ``MAX_CLAIM_ITEMS`` empty slots)."""

TAKEN_SECONDS = 1
"""A TAKEN mark only has to win the compare-and-set; then it may vanish."""

MAX_REFUSED_TAKE_RETRIES = 3
"""Times a take refused while its slot still holds what the claim read is tried again."""


@dataclass(frozen=True)
class Fetched:
    """What taking a claim's slots gave its reader."""

    message_keys: list[str]
    """The slots holding the messages (a frame's holds several)."""
    messages: list[Any]
    message_ids: list[str]
    """Each message's own slot key."""
    skipped: int
    gapped: int


NOTHING_FETCHED = Fetched([], [], [], 0, 0)


def read_messages(context: QueueContext, max_items: int) -> list[Any]:
    """``Queue.read_multi``: claim and take, up to ``MAX_EMPTY_ROUNDS`` claims that
    yield nothing (each after the first settles runs of empty slots in bulk). The
    takes go in the claim's CAS when they can (``takes_with_claim``)."""
    check_max_items(max_items)
    for round_number in range(MAX_EMPTY_ROUNDS):
        made = claim(
            context, max_items, lease_seconds=None, settle_empty_runs=round_number > 0, takes_with=takes_with_claim
        )
        if not made.ranges and not made.settled_slots:
            return []
        if made.ranges and (fetched := fetch(context, made)).messages:
            return fetched.messages
    return []


def takes_with_claim(made: Claim) -> tuple[dict[str, tuple[bytes, object]], int]:
    """The takes a ``read_multi`` sends in its claim's CAS, and their expiry: every
    claimed message or frame, to TAKEN. None (they follow the claim, as a lease's
    do) when a claimed slot is empty (its tombstone's ``add`` race comes first),
    a frame is cut at the claim's end (its rest belongs after the claim that
    lands), or a frame does not fit."""
    views = made.views
    if made.lease_id is not None or any(
        views[slot.key].kind is SlotKind.EMPTY for slot in made.table.uncovered(views, PRESENT)
    ):
        return {}, TAKEN_SECONDS
    plan = plan_takes(made, views)
    if plan.overflow or plan.rests:
        return {}, TAKEN_SECONDS
    return {key: (taken_value(count), made.slots[key][1]) for key, count in plan.counts.items()}, TAKEN_SECONDS


def fetch(context: QueueContext, made: Claim) -> Fetched:
    """Tombstone the claimed slots found empty (and not inside a frame), then take
    the messages: 1 cache call (``cas_multi``), none if they were taken with the
    claim; empty slots cost their tombstones (1, see ``tombstone``); a frame the
    claim ends inside costs the store of its rest (2, see ``take``).
    ``read_multi`` corrects its counts (2) only if a slot changed after the claim
    read it (a writer stored into it first), or if its claim did not land."""
    table = made.table
    found = dict(made.slots)
    views = Views(made.views)
    if made.taken_with_claim is not None:
        takes = {key: (taken_value(views[key].span), found[key][1]) for key in made.taken_with_claim}
        answers = retry_refused_takes(context, takes, made.taken_with_claim, found, TAKEN_SECONDS)
        taken = {key: views[key].span for key, answer in answers.items() if answer is True}
    else:
        empty = [slot for slot in table.uncovered(views, PRESENT) if views[slot.key].kind is SlotKind.EMPTY]
        if empty:
            tombstone(context, empty, views, found, made.lease_id)
        taken = take(context, made, views, found)
    delivered = {key: SlotValue(SlotKind.MESSAGE, span=span) for key, span in taken.items()}
    undelivered = [slot.in_gap for slot in table.uncovered(delivered, (SlotKind.MESSAGE,))]
    held = table.held({key: views[key] for key in taken}, PRESENT)
    fetched = Fetched(
        [slot.key for slot, _view in held],
        [message for slot, view in held for message in view.messages[: taken[slot.key]]],
        [
            message_id
            for slot, _view in held
            for message_id in context.keys.slots(slot.shard, range(slot.number, slot.number + taken[slot.key]))
        ],
        skipped=len(undelivered) - sum(undelivered),
        gapped=sum(undelivered),
    )
    if not made.landed:
        claim_delivered(context, made, taken)
    elif made.lease_id is None and (fetched.skipped, fetched.gapped) != made.counted:
        skipped, gapped = fetched.skipped - made.counted[0], fetched.gapped - made.counted[1]

        def correct(state: ReadState) -> bool:
            state.counts.add(skipped, gapped)
            return True

        change_counts(context, correct)
    return fetched


def change_counts(context: QueueContext, change: Callable[[ReadState], bool]) -> None:
    """Correct the state's counts after a read (2 calls), never at the cost of its messages."""
    try:
        context.store.change(change)
    except (CacheUnavailableError, ContentionError) as error:
        logger.warning("queue %s: could not correct counts after a read: %s", context.name, error)


def claim_delivered(context: QueueContext, made: Claim, taken: dict[str, int]) -> None:
    """After a ``read_multi`` whose claim lost while takes sent with it won (2 calls):
    claim the slots it delivered that run on from where the claims now end (as
    read: no other claim may count them), and take off ``skipped`` (``gapped``)
    each other slot it delivered, which the claim that covers it counts as
    giving no message. A slot is only claimed here if a frame this reader won
    spans it, so nothing another reader stored (a frame's rest) is passed over."""
    delivered: dict[int, set[int]] = {}
    for key, count in taken.items():
        slot = made.table.slots[made.table.position[key]]
        delivered.setdefault(slot.shard, set()).update(range(slot.number, slot.number + count))

    def count_as_read(state: ReadState) -> bool:
        ends = {}
        skipped = gapped = 0
        for shard, numbers in delivered.items():
            end = state.claimed[shard]
            while end + 1 in numbers:
                end += 1
            if end > state.claimed[shard]:
                ends[shard] = end
            for number in numbers:
                if number <= state.claimed[shard] or number > end:
                    in_gap = state.in_gap(shard, number)
                    skipped, gapped = skipped - (not in_gap), gapped - in_gap
        state.claim(state.seen, MAX_CLAIM_ITEMS, ends)
        state.counts.add(skipped, gapped)
        return True

    change_counts(context, count_as_read)


def tombstone(
    context: QueueContext,
    empty: list[Slot],
    views: dict[str, SlotValue],
    found: dict[str, tuple[bytes, object]],
    lease_id: str | None,
) -> None:
    """Add a tombstone to each empty slot: 1 call. A slot whose ``add`` lost to its
    writer is read again (1 call); one whose ``add`` went unanswered and did not
    land is tried once more, so a late writer is not left to store into it."""
    for _ in range(2):
        tombstones = {slot.key: GAP_TOMBSTONE if slot.in_gap else TOMBSTONE for slot in empty}
        added = context.cache.add_multi(tombstones, context.tombstone_seconds)
        unsettled = [slot for slot in empty if added.get(slot.key) is not True]
        if not unsettled:
            return
        found.update(context.cache.gets_multi([slot.key for slot in unsettled]))
        for slot in unsettled:
            if slot.key in found:
                views[slot.key] = read_slot(found[slot.key][0], lease_id)
        empty = [slot for slot in unsettled if views[slot.key].kind is SlotKind.EMPTY]
        if not empty:
            return


def take(
    context: QueueContext, made: Claim, views: dict[str, SlotValue], found: dict[str, tuple[bytes, object]]
) -> dict[str, int]:
    """Compare-and-set each message's or frame's slot to TAKEN or LEASED(id): 1 call.
    Returns the slots won (and those already LEASED to this lease), each with
    how many of its messages are this claim's: all, but for a frame running past
    the claim's last slot of its shard, which is cut there. The rest of such a
    frame is stored again in the slot after that (``store_again``, 2 calls), once
    its first part is won.

    Never more messages than slots claimed: frames overlap only where a write
    counter went back and handed a writer slots inside an older frame. One that
    does not fit is moved: taken (1 call) and written again (``store_again``)."""
    taken = {key: view.span for key, view in views.items() if view.kind is SlotKind.LEASED_TO_US}
    plan = plan_takes(made, views)
    cut, overflow, first_parts = plan.counts, plan.overflow, plan.rests
    if overflow:
        move(context, overflow, views, found)
    if not cut:
        return taken
    if made.lease_id is None:
        takes = {key: (taken_value(count), found[key][1]) for key, count in cut.items()}
        expire_seconds = TAKEN_SECONDS
    else:
        takes = {
            key: (leased_value(made.lease_id, views[key].payload if count == views[key].span else frame_payload(views[key].messages[:count])), found[key][1])
            for key, count in cut.items()
        }
        expire_seconds = 0
    applied = retry_refused_takes(
        context, takes, context.cache.cas_multi(takes, expire_seconds), found, expire_seconds
    )
    won = {key for key in takes if applied.get(key) is True}
    unanswered = [key for key in takes if applied.get(key) is None]
    if unanswered and made.lease_id is not None:  # a TAKEN mark cannot say whose it is
        reread = context.cache.gets_multi(unanswered)
        won |= {key for key in reread if read_slot(reread[key][0], made.lease_id).kind is SlotKind.LEASED_TO_US}
    taken |= {key: cut[key] for key in won}
    for key, rest_at in first_parts.items():
        if key in won:
            store_again(context, views[key].messages[cut[key] :], placed=rest_at, placed_at=made.claimed_at)
    return taken


@dataclass(frozen=True)
class TakePlan:
    """Which messages a claim takes, from what it read."""

    counts: dict[str, int]
    """Each message's or frame's slot, with how many of its messages are the claim's."""
    overflow: list[str]
    """Frames that do not fit (two overlapping: a counter went back): moved."""
    rests: dict[str, tuple[int, int]]
    """Frames cut at the claim's end: where their rest is stored (shard, slot)."""


def retry_refused_takes(
    context: QueueContext,
    takes: dict[str, tuple[bytes, object]],
    applied: dict[str, Applied],
    found: dict[str, tuple[bytes, object]],
    expire_seconds: int,
) -> dict[str, Applied]:
    """Try again the takes refused while their slot still holds the bytes the claim
    read (1 call to read them, 1 to take them, per round; none when no take was
    refused). Only a take changes a message's slot, so the same bytes mean no one
    took it: memcached refused a CAS on an item no client changed (seen under
    memory churn). Refused for a changed slot, a take stays refused."""
    applied = dict(applied)
    for _ in range(MAX_REFUSED_TAKE_RETRIES):
        refused = [key for key in takes if applied.get(key) is False]
        if not refused:
            break
        reread = context.cache.gets_multi(refused)
        again = {
            key: (takes[key][0], token) for key, (value, token) in reread.items() if value == found[key][0]
        }
        if not again:
            break
        found.update({key: reread[key] for key in again})
        applied.update(context.cache.cas_multi(again, expire_seconds))
    return applied


def plan_takes(made: Claim, views: dict[str, SlotValue]) -> TakePlan:
    """Every claimed message or frame, cut at the claim's last slot of its shard,
    as long as the claim has room for it (slots already LEASED to it take room)."""
    last_of_shard = {r.shard: r.last for r in made.ranges}
    room = len(made.table) - sum(view.span for view in views.values() if view.kind is SlotKind.LEASED_TO_US)
    plan = TakePlan({}, [], {})
    for slot, view in made.table.held(views, (SlotKind.MESSAGE,)):
        count = min(view.span, last_of_shard[slot.shard] - slot.number + 1)
        if count > room:
            plan.overflow.append(slot.key)
            continue
        plan.counts[slot.key], room = count, room - count
        if count < view.span:
            plan.rests[slot.key] = (slot.shard, slot.number + count)
    return plan


def move(context: QueueContext, keys: list[str], views: dict[str, SlotValue], found: dict[str, tuple[bytes, object]]) -> None:
    """Take the frames in ``keys`` (TAKEN, compare-and-set: 1 call) and write the
    messages of those won again, in fresh slots."""
    takes = {key: (taken_value(views[key].span), found[key][1]) for key in keys}
    applied = context.cache.cas_multi(takes, TAKEN_SECONDS)
    won = [key for key in keys if applied.get(key) is True]
    if won:
        store_again(context, [message for key in won for message in views[key].messages])
