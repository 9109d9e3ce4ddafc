"""/stats: exact totals, the top items, queue counters; /stats?item= for one item."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from google.appengine.ext import ndb

from handlers import counters
from handlers.events import Event

QUEUE_STATS = {"depth", "written", "read", "requeued", "lost"}


def apply(batch_id: str, counts: dict[str, tuple[int, int]]) -> None:
    """Commit ``{item: (clicks, views)}`` as one batch."""
    events = [
        Event(event_type, item)
        for item, (clicks, views) in counts.items()
        for event_type, times in (("click", clicks), ("view", views))
        for _ in range(times)
    ]
    counters.apply_batch(batch_id, events)


def test_stats_of_nothing_are_zero(app):
    response = app.get("/stats", status=200)

    assert response.json["totals"] == {"click": 0, "view": 0}
    assert response.json["items"] == []
    assert QUEUE_STATS <= set(response.json["queue"])


def test_stats_show_exact_totals_and_items(app):
    apply("batch-1", {"a": (2, 1), "b": (0, 5)})
    apply("batch-2", {"a": (1, 0), "c": (1, 1)})

    response = app.get("/stats", status=200)

    assert response.json["totals"] == {"click": 4, "view": 7}
    assert response.json["items"] == [
        {"item": "b", "click": 0, "view": 5},
        {"item": "a", "click": 3, "view": 1},
        {"item": "c", "click": 1, "view": 1},
    ]


def test_stats_list_the_100_items_with_most_events(app):
    apply("batch-1", {f"item-{n:03}": (n, 1) for n in range(150)})

    items = app.get("/stats", status=200).json["items"]

    assert [entry["item"] for entry in items] == [f"item-{n:03}" for n in range(149, 49, -1)]


def test_stats_show_the_queue_counters(app):
    app.post_json("/track", {"events": [{"type": "view", "item": "a"}] * 3}, status=202)

    queue = app.get("/stats", status=200).json["queue"]

    assert (queue["depth"], queue["written"], queue["read"], queue["lost"]) == (3, 3, 0, 0)


def test_stats_of_one_item(app):
    apply("batch-1", {"a": (2, 5), "b": (1, 1)})

    response = app.get("/stats", {"item": "a"}, status=200)

    assert response.json == {"item": "a", "click": 2, "view": 5}


def test_stats_of_an_unknown_item_are_zero(app):
    response = app.get("/stats", {"item": "never-seen"}, status=200)

    assert response.json == {"item": "never-seen", "click": 0, "view": 0}


@pytest.mark.parametrize(
    "item",
    [
        pytest.param("", id="empty"),
        pytest.param("i" * 129, id="129-characters"),
        pytest.param("a b", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param(["a", "b"], id="given-twice"),
    ],
)
def test_stats_of_a_bad_item_are_refused(app, item):
    response = app.get("/stats", {"item": item}, status=400)

    assert set(response.json) == {"error"}


def ranked_by_brute_force(counts: Counter) -> list[dict[str, object]]:
    """Every item's counts, most events first, ties by item: the top TOP_ITEMS of them."""
    entries = [{"item": item, "click": counts["click", item], "view": counts["view", item]} for _, item in counts]
    unique = {entry["item"]: entry for entry in entries}.values()
    return sorted(unique, key=lambda entry: (-(entry["click"] + entry["view"]), entry["item"]))[: counters.TOP_ITEMS]


@pytest.mark.parametrize("seed", range(5))
def test_top_items_stay_exact_over_many_batches(testbed, seed):
    rng = random.Random(seed)
    items = [f"item-{n:03}" for n in range(300)]
    counts: Counter = Counter()

    for batch in range(40):
        events = [Event(rng.choice(("click", "view")), rng.choice(items[: rng.randint(1, 300)])) for _ in range(60)]
        counters.apply_batch(f"batch-{batch}", events)
        counts.update((event.type, event.item) for event in events)

    assert counters.top_items() == ranked_by_brute_force(counts)


def test_items_counted_before_the_ranking_existed_are_ranked(testbed):
    parent = ndb.Key(counters.EventTotals, "all")
    ndb.put_multi(
        [counters.ItemCounts(key=ndb.Key(counters.ItemCounts, f"old-{n}", parent=parent), view=n) for n in range(1, 4)]
    )
    before = counters.top_items()

    apply("batch-1", {"new": (2, 0), "old-1": (5, 0)})

    assert [entry["item"] for entry in before] == ["old-3", "old-2", "old-1"]
    assert counters.top_items() == [
        {"item": "old-1", "click": 5, "view": 1},
        {"item": "old-3", "click": 0, "view": 3},
        {"item": "new", "click": 2, "view": 0},
        {"item": "old-2", "click": 0, "view": 2},
    ]
