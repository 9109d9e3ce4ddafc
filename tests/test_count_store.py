"""The count store (clicks/counters.py) and the two counting steps (clicks/counting.py):
what each step writes, how periods split, where the store stops, and each message counted
once when a batch comes again or a commit fails."""

from __future__ import annotations

import pytest
from google.appengine.ext import ndb

from bench.datastore_writes import recording
from clicks import counters, counting
from clicks.events import Event
from tests.support.counting import fold_all

START = 1_740_787_200  # 2025-03-01T00:00:00Z
DAY = 86400
PERIODS = {"all/0", f"day/{START}", f"hour/{START}"}
"""The periods an event at START counts in."""
SMALL_SHARDS = counters.StoreLimits(shard_split_bytes=300, max_shards=8)


def views(count: int, at: int = START, first: int = 0) -> dict[str, Event]:
    """One view of each of ``count`` items, each under a message id of its own."""
    return {f"message-{n}": Event("view", f"item-{n:05}", at=at) for n in range(first, first + count)}


def all_time_shards() -> int:
    return counters.root_key().get().periods["all/0"][3]


@pytest.fixture
def writes(testbed):
    with recording() as recorded:
        yield recorded


def test_recording_a_batch_writes_one_entity(writes):
    counting.count_batch("lease-1", views(1000), START)

    assert writes.paths() == ["CountedBatch:lease-1"]


@pytest.mark.parametrize("events", [1, 1000])
def test_fold_writes_each_changed_shard_and_header_once_however_many_events(writes, events):
    counting.count_batch("lease-1", views(events), START)
    writes.clear()

    counting.fold(START + 1)

    root = "PeriodTotals:all"
    assert writes.paths() == sorted(
        [
            "CountedBatch:lease-1",
            root,
            f"{root}/CountShard:all/0/1/0",
            f"{root}/CountShard:day/{START}/1/0",
            f"{root}/CountShard:hour/{START}/1/0",
            f"{root}/PeriodTotals:day/{START}",
            f"{root}/RankedItems:all",
        ]
    )
    assert writes.commit_sizes == [7]


def test_fold_folds_at_most_its_batches_and_says_more_remain(testbed):
    for batch in range(counting.MAX_BATCHES_PER_FOLD + 1):
        counting.count_batch(f"lease-{batch}", views(1, first=batch), START)

    first, second = counting.fold(START + 1), counting.fold(START + 2)

    assert (first.batches, first.more) == (counting.MAX_BATCHES_PER_FOLD, True)
    assert (second.batches, second.more) == (1, False)
    assert counters.totals()["view"] == counting.MAX_BATCHES_PER_FOLD + 1


def test_period_whose_shard_outgrows_the_split_size_splits_in_a_commit_of_its_own(writes):
    counting.count_batch("lease-1", views(20), START)
    counting.fold(START, SMALL_SHARDS)
    counting.count_batch("lease-2", views(1, first=20), START)
    writes.clear()

    report = counting.fold(START + 1, SMALL_SHARDS)

    assert (report.batches, report.more) == (0, True)
    assert report.split in PERIODS
    split_shards = {path.split("/CountShard:")[1] for path in writes.paths() if "/CountShard:" in path}
    assert split_shards == {f"{report.split}/{shards}/{index}" for shards, index in [(1, 0), (2, 0), (2, 1)]}
    assert not any(path.startswith("CountedBatch") for path in writes.paths())
    assert counting.unfolded_batches(10) == [ndb.Key(counting.CountedBatch, "lease-2")]


def test_split_keeps_every_items_counts(testbed):
    events = views(200)
    for start in range(0, 200, 20):
        counting.count_batch(f"lease-{start}", dict(list(events.items())[start : start + 20]), START)
        fold_all_with(SMALL_SHARDS)

    assert all_time_shards() == SMALL_SHARDS.max_shards
    assert [counters.item_counts(event.item)["view"] for event in events.values()] == [1] * 200
    assert counters.totals()["view"] == 200
    assert counters.series("item-00007", "hour", START, START + 3600)[0]["view"] == 1


def fold_all_with(limits: counters.StoreLimits) -> None:
    while counting.fold(START + 1, limits).more:
        pass


def test_full_period_raises_count_store_full_and_its_batch_waits(testbed):
    full = counters.StoreLimits(shard_split_bytes=300, max_shards=1, max_shard_bytes=300)
    counting.count_batch("lease-1", views(50), START)

    with pytest.raises(counters.CountStoreFullError) as raised:
        counting.fold(START + 1, full)

    assert raised.value.shard_key in {f"{period}/1/0" for period in PERIODS}
    assert counting.unfolded_batches(10) == [ndb.Key(counting.CountedBatch, "lease-1")]
    assert counters.totals()["view"] == 0


@pytest.mark.parametrize("max_entities", [9, counters.StoreLimits().max_entities_per_fold])
def test_every_fold_commit_writes_at_most_its_entity_limit_and_the_ranking(writes, max_entities):
    limits = counters.StoreLimits(max_entities_per_fold=max_entities)
    events = {f"message-{day}": Event("click", "a", at=START + day * DAY) for day in range(400)}
    counting.count_batch("lease-1", events, START)
    writes.clear()

    while counting.fold(START + 1, limits).more:
        pass

    assert max(writes.commit_sizes) <= max_entities + 1
    assert counters.item_counts("a")["click"] == 400
    assert [day["click"] for day in counters.series("a", "day", START, START + 400 * DAY)] == [1] * 400


@pytest.mark.parametrize("after_applying", [False, True], ids=["commit-failed", "reply-lost"])
def test_fold_whose_commit_failed_counts_each_message_once_when_run_again(testbed, datastore_rpc_faults, after_applying):
    counting.count_batch("lease-1", views(5), START)
    datastore_rpc_faults.fail_next("Commit", after_applying=after_applying)

    with pytest.raises(Exception):
        counting.fold(START + 1)
    fold_all(START + 2)

    assert counters.totals()["view"] == 5
    assert [counters.item_counts(f"item-{n:05}")["view"] for n in range(5)] == [1] * 5
