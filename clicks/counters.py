"""Click, view and bot counts in Datastore, stored as rollups, and every read of them.

The count store (docs/counting.md draws it):

* A *period* is all time, one UTC day, or one UTC hour. Each period's counts
  per item are split by a hash of the item over the period's *shards*
  (``CountShard``), each one entity holding many items' counts as one JSON
  object. A period starts with one shard and doubles them when one grows past
  ``SHARD_SPLIT_BYTES``, so an entity stays far under Datastore's 1 MiB.
* ``PeriodTotals`` holds each period's totals and shard count: the all-time
  period's in the entity ``all`` (the root of every count entity, so one
  commit is one entity group), a day's and its hours' in the entity of that day.
* ``RankedItems`` holds the top items by clicks and views.

Only the fold (clicks/counting.py) writes them, in one commit at a time,
paced to one a second: so no entity is written more than once a second, and
a commit writes one entity per shard it changes, however many events it adds.
Reads never need more than two round trips: a header, then the shards it names.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from google.appengine.ext import ndb

from clicks.events import Event

COUNTS = ("click", "view", "bots")
"""What each count holds: clicks and views by people, and events of known bots."""

BUCKET_SECONDS = {"hour": 3600, "day": 86400}
"""The time periods, by name: UTC hours and days (POSIX time has no leap seconds)."""

ALL_TIME = ("all", 0)
"""The all-time period, as ``(period, start)``."""

TOP_ITEMS = 100
"""How many items ``RankedItems`` ranks, and /stats lists."""



@dataclass(frozen=True)
class StoreLimits:
    """How large the count store's entities grow (tests pass smaller ones)."""

    shard_split_bytes: int = 100_000
    """A period whose shard holds more than this (its JSON) doubles its shards at the next fold that touches it."""
    max_shards: int = 64
    """Most shards a period splits into: past 64 x 100 KB (about 300,000 items of 20
    characters), shards grow instead, up to ``max_shard_bytes``."""
    max_shard_bytes: int = 900_000
    """Largest shard written (Datastore's entity limit is 1,048,572 bytes)."""
    max_entities_per_fold: int = 490
    """Entities one fold plans to write (shards, headers, batches), under Datastore's 500
    per commit with the ranking."""

Counts = list[int]
"""``[click, view, bots]``."""

Tally = dict[tuple[str, int], dict[str, Counts]]
"""Counts to add: ``{(period, start): {item: [click, view, bots]}}``."""


class CountStoreFullError(Exception):
    """A shard would outgrow ``StoreLimits.max_shard_bytes``: the period holds more items than the store is built for."""

    def __init__(self, shard_key: str, size_bytes: int, limits: StoreLimits) -> None:
        super().__init__(
            f"count shard {shard_key} would hold {size_bytes} bytes, over {limits.max_shard_bytes}: a period "
            f"with {limits.max_shards} shards is full (docs/counting.md, limits); its batches wait, recorded"
        )
        self.shard_key = shard_key


def bucket_start(at: int, bucket: str) -> int:
    """The start (POSIX seconds) of the ``bucket`` holding time ``at``."""
    return at - at % BUCKET_SECONDS[bucket]


def event_column(event: Event) -> int:
    """Where an event counts in ``[click, view, bots]``."""
    return 2 if event.bot else COUNTS.index(event.type)


def tally_events(events: Iterable[Event]) -> Tally:
    """What ``events`` (each dated) add: to their item in all time, in their day and in their hour."""
    tally: Tally = {}
    for event in events:
        column = event_column(event)
        assert event.at is not None, "events are dated before they are tallied"
        for period in (ALL_TIME, ("day", bucket_start(event.at, "day")), ("hour", bucket_start(event.at, "hour"))):
            tally.setdefault(period, {}).setdefault(event.item, [0, 0, 0])[column] += 1
    return tally


def add_tally(into: Tally, tally: Tally) -> None:
    """Add ``tally`` into ``into``."""
    for period, items in tally.items():
        target = into.setdefault(period, {})
        for item, counts in items.items():
            current = target.setdefault(item, [0, 0, 0])
            for column, count in enumerate(counts):
                current[column] += count


def tally_to_json(tally: Tally) -> dict[str, dict[str, Counts]]:
    return {f"{period}/{start}": items for (period, start), items in tally.items()}


def tally_from_json(stored: Mapping[str, Mapping[str, Counts]]) -> Tally:
    tally: Tally = {}
    for name, items in stored.items():
        period, start = name.split("/")
        tally[(period, int(start))] = {item: list(counts) for item, counts in items.items()}
    return tally


# -- entities ------------------------------------------------------------------------


class PeriodTotals(ndb.Model):
    """Totals of periods and their shard counts: ``periods`` maps ``"<period>/<start>"``
    to ``[click, view, bots, shards]``.

    Entity ``all`` holds the all-time period, and when the last fold happened and
    how old its oldest event was then; it is the parent of every count entity.
    Entity ``day/<start>`` holds that UTC day and its hours (``day_start`` lets
    a series read a range of days in one query).
    """

    periods = ndb.JsonProperty(required=True)
    day_start = ndb.DateTimeProperty()
    last_commit_at = ndb.DateTimeProperty(indexed=False)
    last_commit_lag_seconds = ndb.IntegerProperty(indexed=False)


class CountShard(ndb.Model):
    """The counts of one period's items whose hash falls in this shard: compact JSON
    ``{item: [click, view, bots]}``. Key id ``<period>/<start>/<shards>/<index>``."""

    counts = ndb.BlobProperty(default=b"{}")


class RankedItems(ndb.Model):
    """The ``TOP_ITEMS`` items with the most clicks and views, most first (ties by
    item): ``[[item, click, view, bots], ...]``, so /stats reads one entity.

    Each fold re-ranks the old list together with the items it changed. That is
    exact because counts only grow: an item the fold did not change had at
    least ``TOP_ITEMS`` items ranked above it if it was outside the list, and all
    of them still are.
    """

    entries = ndb.JsonProperty(required=True)


def root_key() -> ndb.Key:
    # Built per call: a key takes the app id from the environment it is made in.
    return ndb.Key(PeriodTotals, "all")


def header_key(period: tuple[str, int]) -> ndb.Key:
    """The ``PeriodTotals`` entity that holds ``period``'s header."""
    if period == ALL_TIME:
        return root_key()
    return ndb.Key(PeriodTotals, f"day/{bucket_start(period[1], 'day')}", parent=root_key())


def _ranking_key() -> ndb.Key:
    return ndb.Key(RankedItems, "all", parent=root_key())


def shard_index(item: str, shards: int) -> int:
    """Which of a period's ``shards`` (a power of two) holds ``item``: a hash stable
    across processes, whose low bits split a shard in two when the shards double."""
    return zlib.crc32(item.encode()) & (shards - 1)


def _shard_key(period: tuple[str, int], shards: int, index: int) -> ndb.Key:
    name, start = period
    return ndb.Key(CountShard, f"{name}/{start}/{shards}/{index}", parent=root_key())


def _encode(counts: Mapping[str, Counts]) -> bytes:
    return json.dumps(counts, separators=(",", ":")).encode()


def _decode(shard: CountShard | None) -> dict[str, Counts]:
    return json.loads(shard.counts) if shard is not None else {}


def stored_datetime(posix_seconds: float) -> datetime:
    return datetime.fromtimestamp(posix_seconds, tz=UTC).replace(tzinfo=None)  # ndb stores naive UTC


def posix_seconds(stored: datetime) -> int:
    return int(stored.replace(tzinfo=UTC).timestamp())


def _period_name(period: tuple[str, int]) -> str:
    return f"{period[0]}/{period[1]}"


# -- the fold's update ----------------------------------------------------------------


@dataclass
class CountsUpdate:
    """One commit's change to the count store, built inside the fold's transaction:
    the headers of the periods it touches, then the shards it changes.

    ``plan`` says what adding a tally would write; ``add`` adds it; ``entities``
    are what the commit puts, ``deleted`` what it deletes. A period whose shard
    has grown past ``StoreLimits.shard_split_bytes`` is split (``split``) in a commit of its own.
    """

    limits: StoreLimits = StoreLimits()
    headers: dict[ndb.Key, PeriodTotals] = field(default_factory=dict)
    changed_headers: set[ndb.Key] = field(default_factory=set)
    shards: dict[ndb.Key, dict[str, Counts]] = field(default_factory=dict)
    changed_items: dict[str, Counts] = field(default_factory=dict)
    deleted: list[ndb.Key] = field(default_factory=list)

    def load_headers(self, periods: Iterable[tuple[str, int]]) -> None:
        """Read the headers of ``periods`` (one get of those not read yet)."""
        keys = sorted({header_key(period) for period in periods} - self.headers.keys(), key=lambda key: key.id())
        for key, stored in zip(keys, ndb.get_multi(keys), strict=True):
            self.headers[key] = stored or PeriodTotals(key=key, periods={}, day_start=_day_start_of(key))

    def header(self, period: tuple[str, int]) -> Counts:
        """``[click, view, bots, shards]`` of ``period`` (its header must be loaded)."""
        return self.headers[header_key(period)].periods.get(_period_name(period), [0, 0, 0, 1])

    def _changed_header(self, period: tuple[str, int]) -> Counts:
        key = header_key(period)
        self.changed_headers.add(key)
        return self.headers[key].periods.setdefault(_period_name(period), [0, 0, 0, 1])

    def shard_keys(self, tally: Tally) -> set[ndb.Key]:
        """The shards that adding ``tally`` writes (headers loaded)."""
        keys = set()
        for period, items in tally.items():
            shards = self.header(period)[3]
            keys |= {_shard_key(period, shards, index) for index in {shard_index(item, shards) for item in items}}
        return keys

    def load_shards(self, keys: Iterable[ndb.Key]) -> None:
        missing = [key for key in keys if key not in self.shards]
        for key, stored in zip(missing, ndb.get_multi(missing), strict=True):
            self.shards[key] = _decode(stored)

    def period_to_split(self) -> tuple[tuple[str, int], int] | None:
        """A loaded period (with its shard count) that has a shard past the split size and may still split."""
        for key, counts in self.shards.items():
            name, start, shards, _ = key.id().split("/")
            if int(shards) < self.limits.max_shards and len(_encode(counts)) > self.limits.shard_split_bytes:
                return (name, int(start)), int(shards)
        return None

    def split(self, period: tuple[str, int], shards: int) -> None:
        """Double ``period``'s shards: every item moves to its shard among twice as many."""
        old_keys = [_shard_key(period, shards, index) for index in range(shards)]
        self.load_shards(old_keys)
        doubled = {_shard_key(period, 2 * shards, index): {} for index in range(2 * shards)}
        new_keys = list(doubled)
        for key in old_keys:
            for item, counts in self.shards.pop(key).items():
                doubled[new_keys[shard_index(item, 2 * shards)]][item] = counts
        self.shards.update(doubled)  # every shard of a period's count exists: a missing one means a split
        self.deleted += old_keys
        self._changed_header(period)[3] = 2 * shards

    def add(self, tally: Tally) -> None:
        """Add ``tally`` to the loaded headers and shards. A shard's key is built once per
        period, not per item: building and hashing ``ndb.Key``s was most of a fold's CPU."""
        for period, items in tally.items():
            header = self._changed_header(period)
            shards = header[3]
            by_index: dict[int, dict[str, Counts]] = {}
            for item, counts in items.items():
                index = shard_index(item, shards)
                if index not in by_index:
                    by_index[index] = self.shards[_shard_key(period, shards, index)]
                stored = by_index[index].setdefault(item, [0, 0, 0])
                for column, count in enumerate(counts):
                    stored[column] += count
                    header[column] += count
                if period == ALL_TIME:
                    self.changed_items[item] = stored

    def entities(self, now: float, oldest_event_at: int | None) -> list[ndb.Model]:
        """What the commit puts: the headers, the changed shards, the re-ranked items;
        the all-time header notes when this fold happened and how old its oldest event was."""
        shards = []
        for key, counts in self.shards.items():
            encoded = _encode(counts)
            if len(encoded) > self.limits.max_shard_bytes:
                raise CountStoreFullError(key.id(), len(encoded), self.limits)
            shards.append(CountShard(key=key, counts=encoded))
        if oldest_event_at is not None and root_key() in self.changed_headers:
            root = self.headers[root_key()]
            root.last_commit_at = stored_datetime(now)
            root.last_commit_lag_seconds = max(0, int(now) - oldest_event_at)
        ranked = []
        if self.changed_items:
            ranking = _ranking_key().get() or RankedItems(key=_ranking_key(), entries=[])
            ranking.entries = _rank(ranking.entries, self.changed_items)
            ranked = [ranking]
        return [*(self.headers[key] for key in self.changed_headers), *shards, *ranked]


def _day_start_of(key: ndb.Key) -> datetime | None:
    name = key.id()
    return stored_datetime(int(name.split("/")[1])) if name.startswith("day/") else None


def _rank(entries: list[list], changed: Mapping[str, Counts]) -> list[list]:
    """``entries`` with the ``changed`` items replaced or added, the top ``TOP_ITEMS`` of them."""
    by_item = {entry[0]: entry for entry in entries}
    by_item.update((item, [item, *counts]) for item, counts in changed.items())
    return sorted(by_item.values(), key=lambda entry: (-(entry[1] + entry[2]), entry[0]))[:TOP_ITEMS]


# -- reads -------------------------------------------------------------------------


def click_through_rate(click: int, view: int) -> float | None:
    """Clicks per view; None without views."""
    return click / view if view else None


def as_dict(click: int, view: int, bots: int) -> dict[str, object]:
    """Counts as /stats answers them, with the click-through rate."""
    return {"click": click, "view": view, "bots": bots, "ctr": click_through_rate(click, view)}


NOTHING: Counts = [0, 0, 0]


def _all_time() -> PeriodTotals | None:
    return root_key().get()


def totals() -> dict[str, object]:
    """Counts over all items: one get."""
    stored = _all_time()
    header = stored.periods.get(_period_name(ALL_TIME)) if stored else None
    return as_dict(*(header or NOTHING)[:3])


def last_commit() -> dict[str, object]:
    """When the last fold happened (POSIX seconds, None before any) and how old its oldest event was then."""
    stored = _all_time()
    if stored is None or stored.last_commit_at is None:
        return {"at": None, "lag_seconds": None}
    return {"at": posix_seconds(stored.last_commit_at), "lag_seconds": stored.last_commit_lag_seconds}


def _item_in_periods(item: str, periods: list[tuple[str, int]], headers: Mapping[str, Counts]) -> dict:
    """``item``'s counts in each of ``periods`` whose header (``[..., shards]`` by period
    name) is given; None where the period's shards changed since (a split)."""
    keys = {
        period: _shard_key(period, headers[_period_name(period)][3], shard_index(item, headers[_period_name(period)][3]))
        for period in periods
        if _period_name(period) in headers
    }
    found = dict(zip(keys, ndb.get_multi(list(keys.values())), strict=True))
    return {
        period: (NOTHING if period not in keys else None if found[period] is None else _decode(found[period]).get(item, NOTHING))
        for period in periods
    }


def item_counts(item: str) -> dict[str, object]:
    """Counts of one item (zero if never seen): two gets (the all-time shard count, then its shard)."""
    for _ in range(3):  # a split between the two gets moves the item: read again
        stored = _all_time()
        headers = stored.periods if stored else {}
        counts = _item_in_periods(item, [ALL_TIME], headers)[ALL_TIME]
        if counts is not None:
            return as_dict(*counts)
    raise RuntimeError(f"item {item!r}: its shard kept moving while read")


def top_items() -> list[dict[str, object]]:
    """The ``TOP_ITEMS`` items with the most clicks and views, most first: one get."""
    ranking = _ranking_key().get()
    return [{"item": item, **as_dict(*counts)} for item, *counts in (ranking.entries if ranking else [])]


def series(item: str | None, bucket: str, start: int, end: int) -> list[dict[str, object]]:
    """Counts of ``item`` (None: of all items) per ``bucket`` starting in
    ``[start, end)`` (POSIX seconds, ``start`` a bucket's start), empty buckets
    included, oldest first: one query of the days' totals, and for an item one
    get of its shard in each bucket that has counts."""
    step = BUCKET_SECONDS[bucket]
    periods = [(bucket, at) for at in range(start, end, step)]
    for _ in range(3):  # a split between the query and the gets moves the item: read again
        days = PeriodTotals.query(
            PeriodTotals.day_start >= stored_datetime(bucket_start(start, "day")),
            PeriodTotals.day_start < stored_datetime(end),
            ancestor=root_key(),
        )
        headers = {name: header for day in days.fetch() for name, header in day.periods.items()}
        if item is None:
            found = {period: headers.get(_period_name(period), NOTHING)[:3] for period in periods}
        else:
            found = _item_in_periods(item, periods, headers)
        if None not in found.values():
            return [{"start": at, **as_dict(*found[(bucket, at)])} for _, at in periods]
    raise RuntimeError(f"item {item!r}: its shards kept moving while read")
