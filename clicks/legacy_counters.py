"""The counters as stored before the count store, read only to be copied into it and pruned.

One entity per item and per item's hour and day, and a marker per counted
batch, all under ``EventTotals``.

Nothing writes them any more. ``clicks.counting.migrate_legacy_page`` copies
them into the count store a page at a time (``read_page``); ``count_batch``
consults the old markers (``counted_message_ids``), so a batch the old layout
counted just before a deploy is not counted again; the cron job
deletes old markers after the retention (``prune_markers``). Totals, the
ranking and the all-items series are not copied: the count store derives them
from the items, as the old layout kept them in the same transactions.
"""

from __future__ import annotations

from google.appengine.datastore.datastore_query import Cursor
from google.appengine.ext import ndb

from clicks import counters

PAGE_ENTITIES = 100
"""Old counters copied per page: one batch, whose fold writes at most a shard and a
day's totals per counter, well within one commit."""

ALL_ITEMS = "*"
"""The old layout's item of the all-items buckets (derived now, so not copied)."""

class EventTotals(ndb.Model):
    """The old layout's root (its counts are the sum of its items')."""


class _OldCounts(ndb.Model):
    click = ndb.IntegerProperty(default=0, indexed=False)
    view = ndb.IntegerProperty(default=0, indexed=False)
    bots = ndb.IntegerProperty(default=0, indexed=False)


class ItemCounts(_OldCounts):
    """The old layout's all-time counts of one item (the key's id)."""


class BucketCounts(_OldCounts):
    """The old layout's counts of one item (or all, ``*``) in one UTC hour or day."""

    bucket = ndb.StringProperty()
    item = ndb.StringProperty()
    start = ndb.DateTimeProperty()


class AppliedBatch(ndb.Model):
    """The old layout's marker of a counted batch (the key's id is its lease id)."""

    applied_at = ndb.DateTimeProperty()
    message_ids = ndb.StringProperty(repeated=True, indexed=False)


class LegacyMigration(ndb.Model):
    """How far the copy is: per old kind, the cursor after the last page copied (absent
    before the first page, None once the kind is copied); pages copied so far."""

    cursors = ndb.JsonProperty(default={})
    pages = ndb.IntegerProperty(default=0, indexed=False)

    @property
    def done(self) -> bool:
        return all(self.cursors.get(kind._get_kind(), "") is None for kind in COPIED_KINDS)


COPIED_KINDS = (ItemCounts, BucketCounts)


def root_key() -> ndb.Key:
    return ndb.Key(EventTotals, "all")


def migration_key() -> ndb.Key:
    return ndb.Key(LegacyMigration, "all")


def _tally(counter: _OldCounts) -> counters.Tally:
    counts = [counter.click, counter.view, counter.bots or 0]
    if isinstance(counter, BucketCounts):
        if counter.item == ALL_ITEMS:
            return {}
        return {(counter.bucket, counters.posix_seconds(counter.start)): {counter.item: counts}}
    return {counters.ALL_TIME: {counter.key.id(): counts}}


def read_page(migration: LegacyMigration) -> tuple[str, counters.Tally, str | None] | None:
    """The next page to copy: its kind, what it adds, and the cursor after it (None at
    the kind's end); None once every kind is copied."""
    for kind in COPIED_KINDS:
        position = migration.cursors.get(kind._get_kind(), "")
        if position is None:
            continue
        query = kind.query(ancestor=root_key()).order(kind.key)
        start = Cursor(urlsafe=position) if position else None
        page, after, more = query.fetch_page(PAGE_ENTITIES, start_cursor=start)
        tally: counters.Tally = {}
        for counter in page:
            counters.add_tally(tally, _tally(counter))
        return kind._get_kind(), tally, after.urlsafe().decode() if more and after else None
    return None


def counted_message_ids(batch_id: str) -> set[str]:
    """The ids of the messages the old layout counted in batch ``batch_id``: one get."""
    marker = ndb.Key(AppliedBatch, batch_id, parent=root_key()).get()
    return set(marker.message_ids) if marker is not None else set()


def prune_markers(applied_before: float, limit: int) -> int:
    """Delete at most ``limit`` old markers applied before POSIX time ``applied_before``; how many."""
    query = AppliedBatch.query(AppliedBatch.applied_at < counters.stored_datetime(applied_before), ancestor=root_key())
    keys = query.fetch(limit, keys_only=True)
    ndb.delete_multi(keys)
    return len(keys)
