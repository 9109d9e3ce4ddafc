"""No entity is hot: at a sustained 1,000 events a second, posted to /track and counted by
the app's own processing and fold tasks run when they are due (a simulated clock), no
entity is written more than once a second over any 10 s, and the counts are exact."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from google.appengine.ext import testbed as testbed_module

from bench.datastore_writes import recording
from handlers import counters

EVENTS_PER_SECOND = 1_000
SECONDS = 30
POST_EVENTS = 500
ITEMS = 1_000
WINDOW_SECONDS = 10


def zipf_items(count: int, seed: int) -> list[str]:
    """``count`` items drawn Zipf(1.1) from ``ITEMS``, as real traffic concentrates on few."""
    weights = [1 / rank**1.1 for rank in range(1, ITEMS + 1)]
    return [f"item-{n}" for n in random.Random(seed).choices(range(ITEMS), weights, k=count)]


def run_due_tasks(app, stub, now: float) -> None:
    """Run every task due by ``now``, as App Engine would: processing first, then folds."""
    for queue_name in ("process", "fold"):
        for task in stub.get_filtered_tasks(queue_names=[queue_name]):
            if task.eta_posix <= now:
                headers = {"X-AppEngine-QueueName": queue_name, "X-AppEngine-TaskName": task.name}
                app.post(task.url, task.payload or b"", headers=headers, status=200)
                stub.DeleteTask(queue_name, task.name)


@pytest.fixture
def one_thousand_events_a_second(app, testbed, clock):
    """Post ``EVENTS_PER_SECOND`` for ``SECONDS`` simulated seconds, running due tasks each
    second, then until none is left; the Datastore writes, timed by the simulated clock."""
    stub = testbed.get_stub(testbed_module.TASKQUEUE_SERVICE_NAME)
    items = iter(zipf_items(EVENTS_PER_SECOND * SECONDS, seed=16))
    posted = Counter()
    with recording(clock) as writes:
        for _ in range(SECONDS):
            for _ in range(EVENTS_PER_SECOND // POST_EVENTS):
                events = [{"type": "view", "item": next(items)} for _ in range(POST_EVENTS)]
                app.post_json("/track", {"events": events}, status=202)
                posted.update(event["item"] for event in events)
            clock.advance(1)
            run_due_tasks(app, stub, clock())
        while stub.get_filtered_tasks(queue_names=["process", "fold"]):
            clock.advance(1)
            run_due_tasks(app, stub, clock())
    return posted, writes


def test_no_entity_is_written_more_than_once_a_second_over_any_ten_seconds(one_thousand_events_a_second):
    _, writes = one_thousand_events_a_second

    entity, most = writes.most_in_window(WINDOW_SECONDS)

    assert most <= WINDOW_SECONDS, f"{entity} written {most} times in {WINDOW_SECONDS} s"


def test_counts_at_one_thousand_events_a_second_are_exact(one_thousand_events_a_second):
    posted, _ = one_thousand_events_a_second

    assert counters.totals()["view"] == EVENTS_PER_SECOND * SECONDS
    assert {item: counters.item_counts(item)["view"] for item in posted} == dict(posted)


def test_one_thousand_events_a_second_cost_under_a_twentieth_of_a_write_each(one_thousand_events_a_second):
    _, writes = one_thousand_events_a_second

    assert len(writes.writes) / (EVENTS_PER_SECOND * SECONDS) <= 0.05
