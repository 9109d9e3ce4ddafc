"""Click and view counters in Datastore, updated once per batch of events.

All counters live in one entity group (under the ``EventTotals`` entity), so a
batch is one ordinary single-group transaction however many items it touches
(no cross-group limit of 25): one ``ItemCounts`` put per item, the totals, and
an ``AppliedBatch`` marker keyed by the batch id. A batch delivered again (its
lease expired, or it was given back after a failure that followed the commit)
finds its marker and changes nothing. The group serialises commits, and
queue.yaml runs one processing task at a time, so they seldom contend.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence

from google.appengine.ext import ndb

from handlers.events import Event

MAX_EVENTS_PER_COMMIT = 400
"""Most events one batch may hold: its commit writes up to one entity per event
plus two, and Datastore takes at most 500 entities per commit."""


class EventTotals(ndb.Model):
    """Counts over every item; the parent of all counter entities."""

    click = ndb.IntegerProperty(default=0, indexed=False)
    view = ndb.IntegerProperty(default=0, indexed=False)


class ItemCounts(ndb.Model):
    """Counts of one item (the key's id)."""

    click = ndb.IntegerProperty(default=0, indexed=False)
    view = ndb.IntegerProperty(default=0, indexed=False)
    total = ndb.ComputedProperty(lambda counts: counts.click + counts.view)


class AppliedBatch(ndb.Model):
    """Marks a batch id whose events are in the counters.

    A marker is needed only while its batch can still be delivered again;
    ``applied_at`` lets old ones be pruned (by a TTL policy or a query).
    """

    applied_at = ndb.DateTimeProperty(auto_now_add=True)


def _totals_key() -> ndb.Key:
    # Built per call: a key takes the app id from the environment it is made in.
    return ndb.Key(EventTotals, "all")


def _item_key(item: str) -> ndb.Key:
    return ndb.Key(ItemCounts, item, parent=_totals_key())


def _add(counts: EventTotals | ItemCounts, by_type: Counter[str]) -> None:
    counts.click += by_type["click"]
    counts.view += by_type["view"]


@ndb.transactional()
def apply_batch(batch_id: str, events: Sequence[Event]) -> bool:
    """Add the events to the counters unless ``batch_id`` was applied; True if this call did."""
    by_item: defaultdict[str, Counter[str]] = defaultdict(Counter)
    for event in events:
        by_item[event.item][event.type] += 1
    totals_key = _totals_key()
    marker_key = ndb.Key(AppliedBatch, batch_id, parent=totals_key)
    items = list(by_item)
    marker, totals, *item_counts = ndb.get_multi([marker_key, totals_key, *map(_item_key, items)])
    if marker is not None:
        return False
    totals = totals or EventTotals(key=totals_key)
    _add(totals, Counter(event.type for event in events))
    updated = []
    for item, counts in zip(items, item_counts):
        counts = counts or ItemCounts(key=_item_key(item))
        _add(counts, by_item[item])
        updated.append(counts)
    ndb.put_multi([AppliedBatch(key=marker_key), totals, *updated])
    return True


def _as_dict(counts: EventTotals | ItemCounts | None) -> dict[str, int]:
    return {"click": counts.click if counts else 0, "view": counts.view if counts else 0}


def totals() -> dict[str, int]:
    """Clicks and views over all items: one get."""
    return _as_dict(_totals_key().get())


def item_counts(item: str) -> dict[str, int]:
    """Clicks and views of one item (zero if never seen): one get."""
    return _as_dict(_item_key(item).get())


def top_items(limit: int) -> list[dict[str, object]]:
    """The ``limit`` items with the most events, most first (an ancestor query: strongly consistent)."""
    query = ItemCounts.query(ancestor=_totals_key()).order(-ItemCounts.total)
    return [{"item": counts.key.id(), **_as_dict(counts)} for counts in query.fetch(limit)]
