"""/stats: exact totals, the top items, queue counters and the last commit; /stats?item=
for one item; bots counted apart; the click-through rate."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from tests.support.counting import count_now, keyed
from clicks import counters
from clicks.events import Event

QUEUE_STATS = {"depth", "written", "read", "requeued", "lost", "leased", "resets"}
NOTHING = {"click": 0, "view": 0, "bots": 0, "ctr": None}


def apply(batch_id: str, counts: dict[str, tuple[int, int]], bots: dict[str, int] | None = None) -> None:
    """Commit ``{item: (clicks, views)}`` and ``bots`` (``{item: bot views}``) as one batch."""
    events = [
        Event(event_type, item)
        for item, (clicks, views) in counts.items()
        for event_type, times in (("click", clicks), ("view", views))
        for _ in range(times)
    ]
    events += [Event("view", item, bot=True) for item, times in (bots or {}).items() for _ in range(times)]
    count_now(batch_id, keyed(events))


def counts(click: int, view: int, bots: int = 0) -> dict[str, object]:
    return {"click": click, "view": view, "bots": bots, "ctr": click / view if view else None}


def test_stats_of_nothing_are_zero(app):
    response = app.get("/stats", status=200)

    assert response.json["totals"] == NOTHING
    assert response.json["items"] == []
    assert QUEUE_STATS <= set(response.json["queue"])
    assert response.json["last_commit"] == {"at": None, "lag_seconds": None}


def test_stats_show_exact_totals_and_items(app):
    apply("batch-1", {"a": (2, 1), "b": (0, 5)})
    apply("batch-2", {"a": (1, 0), "c": (1, 1)})

    response = app.get("/stats", status=200)

    assert response.json["totals"] == counts(4, 7)
    assert response.json["items"] == [
        {"item": "b", **counts(0, 5)},
        {"item": "a", **counts(3, 1)},
        {"item": "c", **counts(1, 1)},
    ]


def test_click_through_rate_is_clicks_per_view_and_null_without_views(app):
    apply("batch-1", {"viewed": (1, 4), "never-viewed": (3, 0)})

    items = {entry["item"]: entry["ctr"] for entry in app.get("/stats", status=200).json["items"]}

    assert items == {"viewed": 0.25, "never-viewed": None}


def test_bots_are_counted_apart_per_item_and_in_total(app):
    apply("batch-1", {"a": (1, 2), "b": (0, 1)}, bots={"a": 5, "c": 1})

    stats = app.get("/stats", status=200).json

    assert stats["totals"] == counts(1, 3, bots=6)
    assert stats["items"] == [
        {"item": "a", **counts(1, 2, bots=5)},
        {"item": "b", **counts(0, 1)},
        {"item": "c", **counts(0, 0, bots=1)},
    ]


def test_bots_do_not_rank_an_item(app):
    apply("batch-1", {"people": (0, 2)}, bots={"crawled": 50})

    items = app.get("/stats", status=200).json["items"]

    assert [entry["item"] for entry in items] == ["people", "crawled"]


def test_last_commit_says_when_and_how_old_its_oldest_event_was(app, clock):
    count_now("batch-1", keyed([Event("view", "a", at=int(clock.now))]))

    last_commit = app.get("/stats", status=200).json["last_commit"]

    assert last_commit["at"].endswith("Z")
    assert last_commit["lag_seconds"] >= 0


def test_stats_list_the_100_items_with_most_events(app):
    apply("batch-1", {f"item-{n:03}": (n, 1) for n in range(150)})

    items = app.get("/stats", status=200).json["items"]

    assert [entry["item"] for entry in items] == [f"item-{n:03}" for n in range(149, 49, -1)]


def test_stats_show_the_queue_counters(app):
    app.post_json("/track", {"events": [{"type": "view", "item": "a"}] * 3}, status=202)

    queue = app.get("/stats", status=200).json["queue"]

    assert (queue["depth"], queue["written"], queue["read"], queue["lost"]) == (3, 3, 0, 0)


def test_stats_of_one_item(app):
    apply("batch-1", {"a": (2, 5), "b": (1, 1)}, bots={"a": 3})

    response = app.get("/stats", {"item": "a"}, status=200)

    assert response.json == {"item": "a", **counts(2, 5, bots=3)}


def test_stats_of_an_unknown_item_are_zero(app):
    response = app.get("/stats", {"item": "never-seen"}, status=200)

    assert response.json == {"item": "never-seen", **NOTHING}


@pytest.mark.parametrize(
    "item",
    [
        pytest.param("", id="empty"),
        pytest.param("i" * 129, id="129-characters"),
        pytest.param("a b", id="space"),
        pytest.param("a/b", id="slash"),
        pytest.param("*", id="the-totals-series-name"),
        pytest.param(["a", "b"], id="given-twice"),
    ],
)
def test_stats_of_a_bad_item_are_refused(app, item):
    response = app.get("/stats", {"item": item}, status=400)

    assert set(response.json) == {"error"}


def ranked_by_brute_force(counted: Counter) -> list[dict[str, object]]:
    """Every item's counts, most events first, ties by item: the top TOP_ITEMS of them."""
    items = {item for _, item in counted}
    entries = [{"item": item, **counts(counted["click", item], counted["view", item])} for item in items]
    return sorted(entries, key=lambda entry: (-(entry["click"] + entry["view"]), entry["item"]))[: counters.TOP_ITEMS]


@pytest.mark.parametrize("seed", range(5))
def test_top_items_stay_exact_over_many_batches(testbed, seed):
    rng = random.Random(seed)
    items = [f"item-{n:03}" for n in range(300)]
    counted: Counter = Counter()

    for batch in range(40):
        events = [Event(rng.choice(("click", "view")), rng.choice(items[: rng.randint(1, 300)])) for _ in range(60)]
        count_now(f"batch-{batch}", keyed(events))
        counted.update((event.type, event.item) for event in events)

    assert counters.top_items() == ranked_by_brute_force(counted)
