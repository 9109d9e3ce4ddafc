"""Click and view counters in Datastore, updated once per batch of events.

All counters live in one entity group (under the ``EventTotals`` entity), so a
batch is one ordinary single-group transaction however many items it touches
(no cross-group limit of 25): one ``ItemCounts`` put per item, the totals, the
``TopItems`` ranking, and an ``AppliedBatch`` marker keyed by the batch id. A
batch delivered again (its lease expired, or it was given back after a failure
that followed the commit) finds its marker and changes nothing. The group
serialises commits, and queue.yaml runs one processing task at a time, so they
seldom contend.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime

from google.appengine.ext import ndb

from handlers.events import Event

MAX_EVENTS_PER_COMMIT = 400
"""Most events one batch may hold: its commit writes up to one entity per event
plus three, and Datastore takes at most 500 entities per commit."""

TOP_ITEMS = 100
"""How many items ``TopItems`` ranks, and /stats lists."""


class EventTotals(ndb.Model):
    """Counts over every item; the parent of all counter entities."""

    click = ndb.IntegerProperty(default=0, indexed=False)
    view = ndb.IntegerProperty(default=0, indexed=False)


class ItemCounts(ndb.Model):
    """Counts of one item (the key's id)."""

    click = ndb.IntegerProperty(default=0, indexed=False)
    view = ndb.IntegerProperty(default=0, indexed=False)
    total = ndb.ComputedProperty(lambda counts: counts.click + counts.view)


class TopItems(ndb.Model):
    """The ``TOP_ITEMS`` items with the most events, most first (ties by item):
    ``[[item, click, view], ...]``, so /stats reads one entity, not a query.

    Each batch's transaction re-ranks the old list together with the items it
    changed. That is exact because counts only grow: an item the batch did not
    change had at least ``TOP_ITEMS`` items ranked above it if it was outside
    the list, and all of them still are.
    """

    entries = ndb.JsonProperty(required=True)


class AppliedBatch(ndb.Model):
    """Marks a batch id whose events are in the counters.

    A marker is needed only while its batch can still be delivered again
    (``Settings.marker_retention_seconds``); ``prune_markers`` deletes older ones.
    """

    applied_at = ndb.DateTimeProperty(auto_now_add=True)


def _totals_key() -> ndb.Key:
    # Built per call: a key takes the app id from the environment it is made in.
    return ndb.Key(EventTotals, "all")


def _item_key(item: str) -> ndb.Key:
    return ndb.Key(ItemCounts, item, parent=_totals_key())


def _top_items_key() -> ndb.Key:
    return ndb.Key(TopItems, "all", parent=_totals_key())


def _add(counts: EventTotals | ItemCounts, by_type: Counter[str]) -> None:
    counts.click += by_type["click"]
    counts.view += by_type["view"]


def apply_batch(batch_id: str, events: Sequence[Event]) -> bool:
    """Add the events to the counters unless ``batch_id`` was applied; True if this call did."""
    applied = _apply_batch(batch_id, events, seed=None)
    if applied is None:
        # Once per datastore: rank what was counted before TopItems existed by the
        # index, outside the transaction. A commit in between creates TopItems,
        # which then wins over this seed.
        applied = _apply_batch(batch_id, events, seed=ranked_by_query(TOP_ITEMS))
    return applied


@ndb.transactional()
def _apply_batch(batch_id: str, events: Sequence[Event], seed: list[list] | None) -> bool | None:
    """``apply_batch`` in one transaction; None, writing nothing, if TopItems is missing and no seed is given."""
    by_item: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        by_item[event.item][event.type] += 1
    totals_key = _totals_key()
    marker_key = ndb.Key(AppliedBatch, batch_id, parent=totals_key)
    items = list(by_item)
    marker, totals, top, *item_counts = ndb.get_multi(
        [marker_key, totals_key, _top_items_key(), *map(_item_key, items)]
    )
    if marker is not None:
        return False
    totals = totals or EventTotals(key=totals_key)
    _add(totals, Counter(event.type for event in events))
    updated = []
    for item, counts in zip(items, item_counts):
        counts = counts or ItemCounts(key=_item_key(item))
        _add(counts, by_item[item])
        updated.append(counts)
    if top is None:
        if seed is None:
            return None
        top = TopItems(key=_top_items_key(), entries=seed)
    top.entries = _rank(top.entries, [[counts.key.id(), counts.click, counts.view] for counts in updated])
    ndb.put_multi([AppliedBatch(key=marker_key), totals, top, *updated])
    return True


def _rank(entries: list[list], changed: list[list]) -> list[list]:
    """``entries`` with the ``changed`` ones replaced or added, the top ``TOP_ITEMS`` of them."""
    by_item = {item: [item, click, view] for item, click, view in [*entries, *changed]}
    return sorted(by_item.values(), key=lambda entry: (-(entry[1] + entry[2]), entry[0]))[:TOP_ITEMS]


def ranked_by_query(limit: int) -> list[list]:
    """The top items by the index, for data counted before ``TopItems`` existed."""
    query = ItemCounts.query(ancestor=_totals_key()).order(-ItemCounts.total)
    return [[counts.key.id(), counts.click, counts.view] for counts in query.fetch(limit)]


def _as_dict(counts: EventTotals | ItemCounts | None) -> dict[str, int]:
    return {"click": counts.click if counts else 0, "view": counts.view if counts else 0}


def totals() -> dict[str, int]:
    """Clicks and views over all items: one get."""
    return _as_dict(_totals_key().get())


def item_counts(item: str) -> dict[str, int]:
    """Clicks and views of one item (zero if never seen): one get."""
    return _as_dict(_item_key(item).get())


def top_items() -> list[dict[str, object]]:
    """The ``TOP_ITEMS`` items with the most events, most first: one get."""
    top = _top_items_key().get()
    entries = top.entries if top is not None else ranked_by_query(TOP_ITEMS)
    return [{"item": item, "click": click, "view": view} for item, click, view in entries]


def prune_markers(applied_before: float, limit: int) -> int:
    """Delete at most ``limit`` markers applied before POSIX time ``applied_before``; how many it deleted."""
    cutoff = datetime.fromtimestamp(applied_before, tz=UTC).replace(tzinfo=None)  # ndb stores naive UTC
    query = AppliedBatch.query(AppliedBatch.applied_at < cutoff, ancestor=_totals_key())
    keys = query.fetch(limit, keys_only=True)
    ndb.delete_multi(keys)
    return len(keys)
