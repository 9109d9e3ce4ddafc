"""From leased batches to counts, in two steps: record each batch, then fold batches into the count store.

1. ``count_batch`` (the processing tasks, several at once): one transaction
   stores a leased batch's tally as a ``CountedBatch``, keyed by the lease id,
   with the ids of its messages. Batches are separate entity groups, so
   processors never contend; a batch delivered again (after a failure, a
   stall, a lost reply) finds its record and counts only messages it lacks.
2. ``fold`` (one fold task a second): one transaction adds up to
   ``MAX_BATCHES_PER_FOLD`` recorded batches to the count store
   (clicks/counters.py) and marks them folded. Only the fold writes the
   store, once a second, so no count entity is written more often.

Each message is counted exactly once: its id enters a ``CountedBatch`` in the
same transaction as its counts, and a batch leaves the not-folded set in the
same transaction that adds it to the store. docs/counting.md has the argument,
the costs and the limits.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace

from google.appengine.ext import ndb

from clicks import counters, legacy_counters
from clicks.events import Event

MAX_BATCHES_PER_FOLD = 20
"""Batches one fold commits: each is an entity group of its own, and the SDK's stub (as
Datastore once did) allows 25 entity groups in one transaction."""

logger = logging.getLogger(__name__)


class CountedBatch(ndb.Model):
    """A batch counted (the key's id is its lease id): the tally of its events until it
    is folded into the count store, and the ids of its messages for as long as the
    batch can be delivered again.

    A delivery again that brings messages this one lacks adds a child entity
    (key id 1, 2, ...) holding those.
    """

    message_ids = ndb.StringProperty(repeated=True, indexed=False)
    tally = ndb.JsonProperty(indexed=False)
    """``counters.tally_to_json`` of what the batch adds; None once folded."""
    oldest_event_at = ndb.IntegerProperty(indexed=False)
    counted_at = ndb.DateTimeProperty(required=True)
    folded = ndb.BooleanProperty(default=False)


def _batch_key(batch_id: str) -> ndb.Key:
    return ndb.Key(CountedBatch, batch_id)


def count_batch(batch_id: str, events: Mapping[str, Event], now: float) -> int:
    """Record ``{message id: event}`` under ``batch_id``, each message once however
    often the batch comes; how many this call recorded (0: all were before).
    An event without a time is dated ``now``. One transaction, one entity written
    (and one get: the old layout's marker of the batch, see clicks/legacy_counters.py)."""
    dated = {
        message_id: event if event.at is not None else replace(event, at=int(now))
        for message_id, event in events.items()
    }
    counted_by_old_layout = legacy_counters.counted_message_ids(batch_id)
    return ndb.transaction(lambda: _record(batch_id, dated, counted_by_old_layout, now))


def _record(batch_id: str, events: Mapping[str, Event], counted_before: set[str], now: float) -> int:
    root = _batch_key(batch_id)
    earlier = CountedBatch.query(ancestor=root).fetch()
    counted = counted_before.union(*(batch.message_ids for batch in earlier))
    fresh = {message_id: event for message_id, event in events.items() if message_id not in counted}
    if not fresh:
        return 0
    CountedBatch(
        key=root if not earlier else ndb.Key(CountedBatch, len(earlier), parent=root),
        message_ids=list(fresh),
        tally=counters.tally_to_json(counters.tally_events(fresh.values())),
        oldest_event_at=min(event.at for event in fresh.values()),
        counted_at=counters.stored_datetime(now),
    ).put()
    return len(fresh)


@dataclass(frozen=True)
class FoldReport:
    batches: int
    """Batches folded into the count store."""
    split: str | None = None
    """The period whose shards this fold doubled instead of folding (``<period>/<start>``)."""
    more: bool = False
    """Batches remain to fold: ask for the next fold."""


def unfolded_batches(limit: int) -> list[ndb.Key]:
    """The oldest batches not yet folded (at most ``limit``)."""
    query = CountedBatch.query(CountedBatch.folded == False).order(CountedBatch.counted_at)  # noqa: E712 (ndb)
    return query.fetch(limit, keys_only=True)


def fold(now: float, limits: counters.StoreLimits = counters.StoreLimits()) -> FoldReport:
    """One commit to the count store: fold the oldest batches not yet folded, as much of
    them as fits one commit, or split a period whose shard grew too large (then fold next time)."""
    keys = unfolded_batches(MAX_BATCHES_PER_FOLD + 1)
    if not keys:
        return FoldReport(0)
    report = ndb.transaction(lambda: _fold(keys[:MAX_BATCHES_PER_FOLD], now, limits), xg=True)
    return replace(report, more=report.more or len(keys) > MAX_BATCHES_PER_FOLD)


Period = tuple[str, int]


def _fold(keys: list[ndb.Key], now: float, limits: counters.StoreLimits) -> FoldReport:
    batches = [batch for batch in ndb.get_multi(keys) if batch is not None and not batch.folded]
    if not batches:
        return FoldReport(0)
    tallies = {batch.key: counters.tally_from_json(batch.tally) for batch in batches}
    update = counters.CountsUpdate(limits)
    update.load_headers(period for tally in tallies.values() for period in tally)
    plan, shard_keys = _plan(batches, tallies, update)
    update.load_shards(shard_keys)
    to_split = update.period_to_split()
    if to_split is not None:
        return _split(*to_split, now, limits)
    touched = list({batch.key: batch for batch, _ in plan}.values())
    for batch, period in plan:
        update.add({period: tallies[batch.key].pop(period)})
    for batch in touched:
        rest = tallies[batch.key]
        batch.tally, batch.folded = (counters.tally_to_json(rest), False) if rest else (None, True)
    oldest = min((batch.oldest_event_at for batch in touched if batch.oldest_event_at is not None), default=None)
    ndb.put_multi([*update.entities(now, oldest), *touched])
    return FoldReport(sum(batch.folded for batch in touched), more=not all(batch.folded for batch in batches))


def _plan(
    batches: list[CountedBatch], tallies: dict[ndb.Key, counters.Tally], update: counters.CountsUpdate
) -> tuple[list[tuple[CountedBatch, Period]], set[ndb.Key]]:
    """What one commit folds: batches' periods in order, as many as keep the shards,
    headers and batches it writes within ``StoreLimits.max_entities_per_fold`` (at least
    one period, whose shards are at most ``StoreLimits.max_shards``); and the shards they write."""
    plan: list[tuple[CountedBatch, Period]] = []
    shard_keys: set[ndb.Key] = set()
    header_keys: set[ndb.Key] = set()
    for batch in batches:
        for period, items in sorted(tallies[batch.key].items()):
            wanted_shards = shard_keys | update.shard_keys({period: items})
            wanted_headers = header_keys | {counters.header_key(period)}
            batch_keys = {planned.key for planned, _ in plan} | {batch.key}
            if plan and len(wanted_shards) + len(wanted_headers) + len(batch_keys) > update.limits.max_entities_per_fold:
                return plan, shard_keys
            plan.append((batch, period))
            shard_keys, header_keys = wanted_shards, wanted_headers
    return plan, shard_keys


def _split(period: Period, shards: int, now: float, limits: counters.StoreLimits) -> FoldReport:
    """Double ``period``'s shards, in this commit alone."""
    update = counters.CountsUpdate(limits)
    update.load_headers([period])
    update.split(period, shards)
    ndb.put_multi(update.entities(now, oldest_event_at=None))
    ndb.delete_multi(update.deleted)
    logger.info("count store: %s/%d split into %d shards", *period, 2 * shards)
    return FoldReport(0, split=f"{period[0]}/{period[1]}", more=True)


def migrate_legacy_page(now: float) -> bool:
    """Copy the next page of the old layout's counters into a batch to fold, moving the
    copy's cursor in the same transaction; False once every page is copied (kinds with
    nothing left to copy are passed over in the same call)."""
    key = legacy_counters.migration_key()
    while (page := legacy_counters.read_page(migration := key.get() or legacy_counters.LegacyMigration(key=key))):
        kind, tally, after = page
        ndb.transaction(lambda: _copy_page(kind, migration.cursors.get(kind, ""), after, tally, now), xg=True)
        if tally:
            return True
    return False


def _copy_page(kind: str, position: str, after: str | None, tally: counters.Tally, now: float) -> None:
    """Store ``tally`` as a batch and move ``kind``'s cursor from ``position`` to ``after``,
    unless another step moved it first (then that step copied this page)."""
    key = legacy_counters.migration_key()
    migration = key.get() or legacy_counters.LegacyMigration(key=key)
    if migration.cursors.get(kind, "") != position:
        return
    migration.cursors = {**migration.cursors, kind: after}
    migration.pages += 1
    batch = CountedBatch(
        key=_batch_key(f"legacy-{migration.pages}"),
        tally=counters.tally_to_json(tally),
        counted_at=counters.stored_datetime(now),
    )
    ndb.put_multi([migration, batch] if tally else [migration])


def prune_batches(counted_before: float, limit: int) -> int:
    """Delete at most ``limit`` folded batches counted before POSIX time ``counted_before``; how many."""
    query = CountedBatch.query(
        CountedBatch.folded == True,  # noqa: E712 (ndb)
        CountedBatch.counted_at < counters.stored_datetime(counted_before),
    )
    keys = query.fetch(limit, keys_only=True)
    ndb.delete_multi(keys)
    return len(keys)
