"""Click, view and bot counters in Datastore: in total, per item, and per hour and
per day (UTC), each counted exactly once per queued message.

All counters live in one entity group (under the ``EventTotals`` entity), so a
commit is one ordinary single-group transaction however many items it touches.
The group serialises commits, and queue.yaml runs one processing task at a
time, so they seldom contend.

**A batch in commits of at most 500 entities.** Datastore takes at most
``MAX_ENTITIES_PER_COMMIT`` entities in one commit. An event touches up to five
counters (its item, the item's hour and day, the totals' hour and day), so a
batch of 100 events on 100 items on 100 days needs 503 entities with the
totals, the ranking and the marker. ``plan_commits`` splits a batch into commits
that each fit; each commit updates, in one transaction, the totals, the items,
the hour and day buckets of its events, the ``TopItems`` ranking and the
batch's ``AppliedBatch`` marker. Totals and time buckets thus never disagree.

**Exactly once, per message, however the batch is split.** The marker is keyed
by the lease id (the same when the batch is delivered again) and lists the ids
of the messages already counted (``lease.message_ids``, the slot of each
message, stable across deliveries); each commit adds its messages' ids in the
same transaction as their counts. A delivery again counts only the messages
its marker does not list: after a failure between two commits of a batch, the
rest is counted and nothing twice. A redelivered lease rarely differs from the
first: a message missing from it (evicted meanwhile) was counted once if a
commit took it before, and is lost otherwise, as the queue's ``lost`` says; a
message the first delivery lacked is not in the marker, so it is counted, once.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime

from google.appengine.ext import ndb

from handlers.events import Event

MAX_ENTITIES_PER_COMMIT = 500
"""Datastore's limit on the entities one commit writes."""

FIXED_ENTITIES_PER_COMMIT = 3
"""Written by every commit: the marker, the totals and the ranking."""

MAX_EVENTS_PER_LEASE = 400
"""Most events one batch may hold: its marker lists each one's id, and it is
counted in at most ``ceil(400 * 5 / 497) = 5`` commits."""

TOP_ITEMS = 100
"""How many items ``TopItems`` ranks, and /stats lists."""

ALL_ITEMS = "*"
"""The item of the totals' time buckets: outside the item alphabet, so no item's."""

BUCKET_SECONDS = {"hour": 3600, "day": 86400}
"""The time buckets, by name: UTC hours and days (POSIX time has no leap seconds)."""

COUNTS = ("click", "view", "bots")
"""What each counter holds: clicks and views by people, and events of known bots."""


class Counts(ndb.Model):
    """The counts every counter entity holds (a base: it has no entities of its own)."""

    click = ndb.IntegerProperty(default=0, indexed=False)
    view = ndb.IntegerProperty(default=0, indexed=False)
    bots = ndb.IntegerProperty(default=0, indexed=False)

    def add(self, tally: Counter[str]) -> None:
        self.click += tally["click"]
        self.view += tally["view"]
        self.bots += tally["bots"]


class EventTotals(Counts):
    """Counts over every item; the parent of all counter entities. Also when
    the last commit happened and how old its oldest event was then: together
    with the queue's depth, how far processing lags."""

    last_commit_at = ndb.DateTimeProperty(indexed=False)
    last_commit_lag_seconds = ndb.IntegerProperty(indexed=False)


class ItemCounts(Counts):
    """Counts of one item (the key's id)."""

    total = ndb.ComputedProperty(lambda counts: counts.click + counts.view)


class BucketCounts(Counts):
    """Counts of one item, or of all (``ALL_ITEMS``), in one UTC hour or day.

    Key id ``<bucket>/<start, POSIX seconds>/<item>``; ``series`` reads a range
    of them with one query (index.yaml: ancestor, bucket, item, start).
    """

    bucket = ndb.StringProperty(required=True, choices=tuple(BUCKET_SECONDS))
    item = ndb.StringProperty(required=True)
    start = ndb.DateTimeProperty(required=True)


class TopItems(ndb.Model):
    """The ``TOP_ITEMS`` items with the most clicks and views, most first (ties
    by item): ``[[item, click, view, bots], ...]``, so /stats reads one entity,
    not a query.

    Each commit re-ranks the old list together with the items it changed. That
    is exact because counts only grow: an item the commit did not change had at
    least ``TOP_ITEMS`` items ranked above it if it was outside the list, and
    all of them still are. Lists stored before bots were counted have no bots.
    """

    entries = ndb.JsonProperty(required=True)


class AppliedBatch(ndb.Model):
    """Marks a batch (the key's id is its lease id) and lists the ids of its
    messages already counted.

    A marker is needed only while its batch can still be delivered again
    (``Settings.marker_retention_seconds``, counted from its last commit);
    ``prune_markers`` deletes older ones.
    """

    applied_at = ndb.DateTimeProperty(required=True)
    """When its last commit happened."""
    message_ids = ndb.StringProperty(repeated=True, indexed=False)


def _totals_key() -> ndb.Key:
    # Built per call: a key takes the app id from the environment it is made in.
    return ndb.Key(EventTotals, "all")


def _item_key(item: str) -> ndb.Key:
    return ndb.Key(ItemCounts, item, parent=_totals_key())


def _bucket_key(bucket: str, start: int, item: str) -> ndb.Key:
    return ndb.Key(BucketCounts, f"{bucket}/{start}/{item}", parent=_totals_key())


def _top_items_key() -> ndb.Key:
    return ndb.Key(TopItems, "all", parent=_totals_key())


def _stored_datetime(posix_seconds: float) -> datetime:
    return datetime.fromtimestamp(posix_seconds, tz=UTC).replace(tzinfo=None)  # ndb stores naive UTC


def _posix_seconds(stored: datetime) -> int:
    return int(stored.replace(tzinfo=UTC).timestamp())


def bucket_start(at: int, bucket: str) -> int:
    """The start (POSIX seconds) of the ``bucket`` holding time ``at``."""
    return at - at % BUCKET_SECONDS[bucket]


def _counter_keys(event: Event) -> list[ndb.Key]:
    """Every counter an event adds to, but the totals."""
    keys = [_item_key(event.item)]
    for bucket in BUCKET_SECONDS:
        start = bucket_start(event.at, bucket)
        keys += [_bucket_key(bucket, start, event.item), _bucket_key(bucket, start, ALL_ITEMS)]
    return keys


def _tally(events: Iterable[Event]) -> Counter[str]:
    return Counter("bots" if event.bot else event.type for event in events)


def plan_commits(events: Mapping[str, Event], max_entities: int = MAX_ENTITIES_PER_COMMIT) -> list[dict[str, Event]]:
    """Split ``{message id: event}`` (each dated) into commits of at most
    ``max_entities`` entities, an item's events together."""
    commits: list[dict[str, Event]] = []
    keys: set[ndb.Key] = set()
    for message_id, event in sorted(events.items(), key=lambda pair: (pair[1].item, pair[1].at)):
        new_keys = set(_counter_keys(event)) - keys
        if not commits or FIXED_ENTITIES_PER_COMMIT + len(keys) + len(new_keys) > max_entities:
            commits.append({})
            keys = set(_counter_keys(event))
        else:
            keys |= new_keys
        commits[-1][message_id] = event
    return commits


def apply_batch(batch_id: str, events: Mapping[str, Event], max_entities: int = MAX_ENTITIES_PER_COMMIT) -> int:
    """Add ``{message id: event}`` to the counters, each message once per ``batch_id``,
    in commits of at most ``max_entities`` entities; how many this call added (0:
    all were counted before). An event without a time is dated now.
    """
    now = int(time.time())
    dated = {
        message_id: event if event.at is not None else replace(event, at=now) for message_id, event in events.items()
    }
    added = 0
    for commit in plan_commits(dated, max_entities):
        committed = _commit(batch_id, commit, seed=None)
        if committed is None:
            # Once per datastore: rank what was counted before TopItems existed by the
            # index, outside the transaction. A commit in between creates TopItems,
            # which then wins over this seed.
            committed = _commit(batch_id, commit, seed=ranked_by_query(TOP_ITEMS))
        added += committed
    return added


@ndb.transactional()
def _commit(batch_id: str, events: dict[str, Event], seed: list[list] | None) -> int | None:
    """One commit of ``apply_batch``: the events its marker does not list; how many.
    None, writing nothing, if TopItems is missing and no seed is given."""
    totals_key = _totals_key()
    marker_key = ndb.Key(AppliedBatch, batch_id, parent=totals_key)
    marker, totals, top = ndb.get_multi([marker_key, totals_key, _top_items_key()])
    counted = set(marker.message_ids) if marker is not None else set()
    fresh = {message_id: event for message_id, event in events.items() if message_id not in counted}
    if not fresh:
        return 0
    if top is None and seed is None:
        return None
    by_key: defaultdict[ndb.Key, list[Event]] = defaultdict(list)
    for event in fresh.values():
        for key in _counter_keys(event):
            by_key[key].append(event)
    keys = list(by_key)
    updated = [stored or _new_counter(key) for key, stored in zip(keys, ndb.get_multi(keys), strict=True)]
    for counter in updated:
        counter.add(_tally(by_key[counter.key]))
    totals = totals or EventTotals(key=totals_key)
    totals.add(_tally(fresh.values()))
    now = time.time()
    totals.last_commit_at = _stored_datetime(now)
    totals.last_commit_lag_seconds = max(0, int(now) - min(event.at for event in fresh.values()))
    top = top or TopItems(key=_top_items_key(), entries=seed)
    changed_items = [[c.key.id(), c.click, c.view, c.bots] for c in updated if isinstance(c, ItemCounts)]
    top.entries = _rank(top.entries, changed_items)
    marker = marker or AppliedBatch(key=marker_key)
    marker.applied_at = totals.last_commit_at
    marker.message_ids = [*marker.message_ids, *fresh]
    ndb.put_multi([marker, totals, top, *updated])
    return len(fresh)


def _new_counter(key: ndb.Key) -> Counts:
    if key.kind() == ItemCounts._get_kind():
        return ItemCounts(key=key)
    bucket, start, item = key.id().split("/", 2)
    return BucketCounts(key=key, bucket=bucket, item=item, start=_stored_datetime(int(start)))


def _ranked_entry(entry: list) -> list:
    """``[item, click, view, bots]``, from a stored entry with or without bots."""
    item, click, view, *bots = entry
    return [item, click, view, bots[0] if bots else 0]


def _rank(entries: list[list], changed: list[list]) -> list[list]:
    """``entries`` with the ``changed`` ones replaced or added, the top ``TOP_ITEMS`` of them."""
    by_item = {entry[0]: entry for entry in map(_ranked_entry, [*entries, *changed])}
    return sorted(by_item.values(), key=lambda entry: (-(entry[1] + entry[2]), entry[0]))[:TOP_ITEMS]


def ranked_by_query(limit: int) -> list[list]:
    """The top items by the index, for data counted before ``TopItems`` existed."""
    query = ItemCounts.query(ancestor=_totals_key()).order(-ItemCounts.total)
    return [[counts.key.id(), counts.click, counts.view, counts.bots] for counts in query.fetch(limit)]


def click_through_rate(click: int, view: int) -> float | None:
    """Clicks per view; None without views."""
    return click / view if view else None


def as_dict(click: int, view: int, bots: int) -> dict[str, object]:
    """Counts as /stats answers them, with the click-through rate."""
    return {"click": click, "view": view, "bots": bots, "ctr": click_through_rate(click, view)}


def _counts_dict(counts: Counts | None) -> dict[str, object]:
    return as_dict(*(getattr(counts, name) if counts else 0 for name in COUNTS))


def totals() -> dict[str, object]:
    """Counts over all items: one get."""
    return _counts_dict(_totals_key().get())


def last_commit() -> dict[str, object]:
    """When the last commit happened (POSIX seconds, None before any) and how old its oldest event was then."""
    stored = _totals_key().get()
    if stored is None or stored.last_commit_at is None:
        return {"at": None, "lag_seconds": None}
    return {"at": _posix_seconds(stored.last_commit_at), "lag_seconds": stored.last_commit_lag_seconds}


def item_counts(item: str) -> dict[str, object]:
    """Counts of one item (zero if never seen): one get."""
    return _counts_dict(_item_key(item).get())


def top_items() -> list[dict[str, object]]:
    """The ``TOP_ITEMS`` items with the most clicks and views, most first: one get."""
    top = _top_items_key().get()
    entries = top.entries if top is not None else ranked_by_query(TOP_ITEMS)
    return [{"item": item, **as_dict(*counts)} for item, *counts in map(_ranked_entry, entries)]


def series(item: str | None, bucket: str, start: int, end: int) -> list[dict[str, object]]:
    """Counts of ``item`` (None: of all items) per ``bucket`` starting in
    ``[start, end)`` (POSIX seconds, ``start`` a bucket's start), empty buckets
    included, oldest first: one query."""
    query = BucketCounts.query(
        BucketCounts.bucket == bucket,
        BucketCounts.item == (item or ALL_ITEMS),
        BucketCounts.start >= _stored_datetime(start),
        BucketCounts.start < _stored_datetime(end),
        ancestor=_totals_key(),
    ).order(BucketCounts.start)
    found = {_posix_seconds(counts.start): counts for counts in query.fetch()}
    return [
        {"start": bucket_at, **_counts_dict(found.get(bucket_at))}
        for bucket_at in range(start, end, BUCKET_SECONDS[bucket])
    ]


def prune_markers(applied_before: float, limit: int) -> int:
    """Delete at most ``limit`` markers last applied before POSIX time ``applied_before``; how many it deleted."""
    query = AppliedBatch.query(AppliedBatch.applied_at < _stored_datetime(applied_before), ancestor=_totals_key())
    keys = query.fetch(limit, keys_only=True)
    ndb.delete_multi(keys)
    return len(keys)
