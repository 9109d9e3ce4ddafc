"""Claiming: move the read state forward over the next slots, or take over an
expired lease, by one compare-and-set on the state.

How it works: one ``gets_multi`` reads the state, every write counter
(recovery repairs what is missing or went back) and the slots after where this
process last saw the claims end (read ahead); the claim plans at most
``max_items`` slots below the counters, reads those not read ahead (none when
no one claimed since), ends where a frame does,
counts the slots without a message, and compare-and-sets the state with it
(for a lease, with its record; for a ``read_multi`` whose slots all hold
messages, with the takes of them). Runs of slots that hold nothing (gaps, mass
eviction) are tombstoned and claimed in bulk in the same CAS. Claiming never
delivers: taking does, slot by slot. The protocol: docs/protocol.md.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

from clickqueue.cache import Applied
from clickqueue.codec import GAP_TOMBSTONE, TOMBSTONE, SlotKind, read_slot
from clickqueue.context import QueueContext
from clickqueue.errors import ContentionError, CorruptStateError, InvalidArgumentError, TooManyLeasesError
from clickqueue.recovery import decimal
from clickqueue.slots import SlotTable, Views, fit_frames
from clickqueue.state import MAX_CAS_ATTEMPTS, MAX_LEASES, MAX_STATE_BYTES, LeaseRecord, ReadState, SlotRange

logger = logging.getLogger(__name__)

MAX_CLAIM_ITEMS = 1000
"""Most slots one claim takes."""

READ_AHEAD_FACTOR = 2
"""The first read of a claim reads ahead, in all, this many times what the process's last
claim took (at most ``max_items``), shared evenly over the shards, up to ``max_items`` per
shard: a claim like the last is read ahead whole when it shares evenly, or when it gives one
shard everything on up to 2 shards."""

MIN_READ_AHEAD_PER_SHARD = 4
"""Slots read ahead per shard after a claim that took fewer: an empty poll stays small."""


@dataclass(frozen=True)
class ReadAhead:
    """Slots read with the state, past where this process last saw the claims end."""

    keys: frozenset[str]
    found: dict[str, tuple[bytes, object]]


@dataclass
class Claim:
    """Slots one reader claimed (for a lease: under ``lease_id``, attempt, holder)."""

    ranges: list[SlotRange]
    table: SlotTable
    """The claimed slots in order."""
    lease_id: str | None = None
    attempt: int = 0
    holder: str = ""
    settled_slots: int = 0
    """Slots of runs holding no message that this claim's CAS settled in bulk."""
    slots: dict[str, tuple[bytes, object]] = field(default_factory=dict)
    """The claimed slots as read just before the claim's CAS (value, token)."""
    views: Views = field(default_factory=Views)
    """What each claimed slot held then, as this claim's reader sees it (decoded once)."""
    counted: tuple[int, int] = (0, 0)
    """(skipped, gapped): the claimed slots without a message, counted in that CAS."""
    taken_with_claim: dict[str, Applied] | None = None
    """For a ``read_multi`` whose takes went in its claim's CAS: each slot's answer."""
    claimed_at: float = 0.0
    """When the claim's CAS was sent (``context.clock``): the slot after it is handed
    out from then on, for the rest of a frame the claim cuts."""
    landed: bool = True
    """False when that CAS lost on the state while some of the takes sent with it won:
    the reader delivers what it took, and the claim that does land counts those slots."""


TakesWithClaim = Callable[[Claim], tuple[dict[str, tuple[bytes, object]], int]]
"""The takes (compare-and-sets of slots, and their expiry) a reader sends in its claim's
CAS, planned from the claim; none when they must wait for it (``taking.takes_with_claim``)."""


def check_max_items(max_items: int) -> None:
    if not 1 <= max_items <= MAX_CLAIM_ITEMS:
        raise InvalidArgumentError("max_items", max_items, f"use 1 to {MAX_CLAIM_ITEMS}")


def claim(
    context: QueueContext,
    max_items: int,
    lease_seconds: float | None,
    settle_empty_runs: bool,
    takes_with: TakesWithClaim | None = None,
) -> Claim:
    """Move the state forward over the next slots (or take over an expired lease),
    reading them first: 2 cache calls (``gets_multi`` of the state, the counters
    and the slots read ahead; ``cas_multi``) when the claim's slots were read
    ahead, 3 when not (another reader claimed since this process last did: they
    are read on their own), plus repairs of whatever the first finds missing,
    plus 2 to settle runs of slots without messages (``settle_runs``).

    ``takes_with`` plans takes to send in the same ``cas_multi`` as the claim. If
    the state's CAS loses while some of them win, the claim is returned with
    ``landed`` False: those messages are this reader's all the same (the slot's
    CAS decides delivery), and the claim that lands counts their slots."""
    keys = context.keys
    for attempt in range(1, MAX_CAS_ATTEMPTS + 1):
        context.budget.check()
        ahead = read_ahead_keys(context, max_items)
        found = context.cache.gets_multi([keys.state, *context.counter_keys, *ahead])
        if keys.state not in found:
            context.recovery.recreate_state(found)
            continue
        raw_state, token = found[keys.state]
        try:
            state = context.store.parse(raw_state)
        except CorruptStateError:
            logger.warning("queue %s: replacing a state it did not write", context.name)
            context.recovery.replace_corrupt_state(token, found)
            continue
        counters = [decimal(found[key][0]) if key in found else None for key in context.counter_keys]
        broken = [shard for shard, counter in enumerate(counters) if counter is None or counter < state.used_through(shard)]
        if broken:
            context.recovery.repair_counters(dict.fromkeys(broken, 0))
            continue
        context.seen_queue = True
        read_ahead = ReadAhead(frozenset(ahead), {key: found[key] for key in ahead if key in found})
        planned = plan_claim(context, state, cast(list[int], counters), max_items, lease_seconds, settle_empty_runs, read_ahead)
        context.last_claimed = list(state.claimed)  # this claim's end; if its CAS loses, a guess at the winner's
        context.last_claim_slots = len(planned.table)
        if not planned.ranges and not planned.settled_slots:
            return planned
        count_claimed(planned, state)
        encoded = context.store.encode(state)
        if planned.lease_id is not None and len(encoded) > MAX_STATE_BYTES:
            raise TooManyLeasesError(keys.state, len(state.leases))
        takes, takes_expire_seconds = takes_with(planned) if takes_with is not None else ({}, 0)
        planned.claimed_at = context.clock()
        answers = context.cache.cas_multi(
            {keys.state: (encoded, token), **takes}, dict.fromkeys(takes, takes_expire_seconds) if takes else 0
        )
        if takes:
            planned.taken_with_claim = {key: answers.get(key) for key in takes}
        applied = answers.get(keys.state)
        if applied or (applied is None and claim_landed(context, planned)):
            return planned
        if any(answer is True for answer in (planned.taken_with_claim or {}).values()):
            planned.landed = False
            return planned
        context.pause_after_failed_cas(attempt)
    raise ContentionError(keys.state, MAX_CAS_ATTEMPTS)


def plan_claim(
    context: QueueContext,
    state: ReadState,
    counters: list[int],
    max_items: int,
    lease_seconds: float | None,
    settle_empty_runs: bool,
    read_ahead: ReadAhead,
) -> Claim:
    """The claim to make on ``state`` (changed in place, for the claim's CAS)."""
    now = context.clock()
    if lease_seconds is not None and (expired_id := state.first_expired_lease(now, max_items)):
        record = state.leases[expired_id]
        record.deadline, record.attempt, record.holder = now + lease_seconds, record.attempt + 1, context.nonce()
        taken_over = Claim(record.ranges, SlotTable(context.keys, record.ranges), expired_id, record.attempt, record.holder)
        taken_over.slots, taken_over.views = read_slots(context, taken_over.table, expired_id, read_ahead)
        return taken_over
    settled = settle_runs(context, state, counters, gaps_only=not settle_empty_runs)
    ends = state.plan_claim(counters, max_items)
    planned = SlotTable(context.keys, [SlotRange(shard, state.claimed[shard] + 1, last) for shard, last in ends.items()])
    slots, views = read_slots(context, planned, None, read_ahead)
    ranges = state.claim(counters, max_items, fit_frames(planned, views, ends))
    table = planned.claimed_as(context.keys, ranges)
    if not ranges or lease_seconds is None:
        made = Claim(ranges, table, settled_slots=settled)
    else:
        if len(state.leases) >= MAX_LEASES:
            raise TooManyLeasesError(context.keys.state, MAX_LEASES)
        lease_id, holder = f"{context.rng.getrandbits(128):032x}", context.nonce()
        state.leases[lease_id] = LeaseRecord(ranges, now + lease_seconds, 1, (0, 0), holder)
        made = Claim(ranges, table, lease_id, 1, holder, settled)
    position = table.position
    made.slots = {key: value for key, value in slots.items() if key in position}
    made.views = Views((key, view) for key, view in views.items() if key in position)
    return made


def read_ahead_keys(context: QueueContext, max_items: int) -> list[str]:
    """The slots to read with the state: per shard, those after where this process
    last saw the claims end, as many as ``READ_AHEAD_FACTOR`` and
    ``MIN_READ_AHEAD_PER_SHARD`` say. They are the claim's own when no one claimed
    since and it takes about what the last one did; none before this process's first claim."""
    if context.last_claimed is None:
        return []
    wanted = READ_AHEAD_FACTOR * min(max_items, context.last_claim_slots)
    per_shard = min(max_items, max(MIN_READ_AHEAD_PER_SHARD, wanted // context.shards))
    return [
        key
        for shard, last in enumerate(context.last_claimed)
        for key in context.keys.slots(shard, range(last + 1, last + 1 + per_shard))
    ]


def read_slots(
    context: QueueContext, slots: SlotTable, lease_id: str | None, read_ahead: ReadAhead
) -> tuple[dict[str, tuple[bytes, object]], Views]:
    """Read ``slots``: each present one's value and token, and what it holds for
    ``lease_id``. Those read ahead are taken from there; the rest cost 1 call. A value
    read ahead is as good as one read now: a slot seen empty is settled by the
    ``add`` race of its tombstone, one seen holding a message by the CAS of its take."""
    wanted = slots.keys()
    found = {key: read_ahead.found[key] for key in wanted if key in read_ahead.found}
    unread = [key for key in wanted if key not in read_ahead.keys]
    if unread:
        found.update(context.cache.gets_multi(unread))
    return found, Views((key, read_slot(value, lease_id)) for key, (value, _token) in found.items())


def settle_runs(context: QueueContext, state: ReadState, counters: list[int], gaps_only: bool) -> int:
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
    keys = context.keys
    in_gap = {key: part.in_gap for run in runs for part in run for key in keys.slots(part.shard, part.numbers())}
    found = context.cache.get_multi(list(in_gap))
    run_keys = [
        list(itertools.takewhile(
            lambda key: key not in found or read_slot(found[key]).kind is not SlotKind.MESSAGE,
            [key for part in run for key in keys.slots(part.shard, part.numbers())],
        ))
        for run in runs
    ]  # up to each run's first message: what lies beyond is not claimed, so not tombstoned
    empty = {key: GAP_TOMBSTONE if in_gap[key] else TOMBSTONE for keys_ in run_keys for key in keys_ if key not in found}
    added = context.cache.add_multi(empty, context.tombstone_seconds) if empty else {}
    settled_total = 0
    for run, run_key_list in zip(runs, run_keys):
        settled = list(itertools.takewhile(lambda key: added.get(key) is True or key in found, run_key_list))
        gapped = sum(1 for key in settled if in_gap[key])
        state.settle_run(run[0].shard, len(settled) - gapped, gapped)
        settled_total += len(settled)
    return settled_total


def count_claimed(made: Claim, state: ReadState) -> None:
    """Count, in the same CAS as the claim, its slots that hold no message as the
    claim read them (a frame's messages fill the slots it spans): counted before
    anything tombstones them, since a writer a tombstone turns away counts
    ``retried``, which must never exceed what readers counted. A lease's record
    keeps the counts (a takeover counted them when the lease was made)."""
    record = state.leases.get(made.lease_id) if made.lease_id is not None else None  # None for a read_multi
    if record is not None and record.attempt > 1:
        return
    gaps = [slot.in_gap for slot in made.table.uncovered(made.views, (SlotKind.MESSAGE,))]
    made.counted = (len(gaps) - sum(gaps), sum(gaps))
    state.counts.add(*made.counted)
    if record is not None:
        record.precounted = made.counted


def claim_landed(context: QueueContext, made: Claim) -> bool:
    """After a claim's CAS went unanswered: does the state show it? (1 call)
    For ``read_multi``, slots claimed by anyone are fine: the takes decide."""
    keys = context.keys
    found = context.cache.gets_multi([keys.state])
    if keys.state not in found:
        return False
    try:
        state = context.store.parse(found[keys.state][0])
    except CorruptStateError:
        return False
    if made.lease_id is not None:
        record = state.leases.get(made.lease_id)
        return record is not None and record.holder == made.holder
    return all(r.last <= state.claimed[r.shard] for r in made.ranges)
