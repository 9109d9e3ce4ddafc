"""No entity is hot: at a sustained 1,000 events a second, posted to /track and counted by
the app's own processing and fold tasks run when they are due (a simulated clock), no
entity is written more than once a second over any 10 s, and the counts are exact."""

from __future__ import annotations

import pytest
from google.appengine.ext import testbed as testbed_module

from bench.counting import AppTasks, Workload, expected_counts
from bench.datastore_writes import recording
from clicks import counters

EVENTS_PER_SECOND = 1_000
SECONDS = 30
POST_EVENTS = 500
ITEMS = 1_000
WINDOW_SECONDS = 10


@pytest.fixture
def one_thousand_events_a_second(app, testbed, clock):
    """Post ``EVENTS_PER_SECOND`` (Zipf(1.1) over ``ITEMS``, one in ten a click) for
    ``SECONDS`` simulated seconds, running due tasks each second, then until none is
    left; the events, and the Datastore writes timed by the simulated clock."""
    stub = testbed.get_stub(testbed_module.TASKQUEUE_SERVICE_NAME)
    events = Workload(EVENTS_PER_SECOND * SECONDS, ITEMS, zipf=True).make_events()
    with recording(clock) as writes:
        AppTasks(app, stub, clock).post_paced(events, EVENTS_PER_SECOND, POST_EVENTS)
    return events, writes


def test_no_entity_is_written_more_than_once_a_second_over_any_ten_seconds(one_thousand_events_a_second):
    _, writes = one_thousand_events_a_second

    entity, most = writes.most_in_window(WINDOW_SECONDS)

    assert most <= WINDOW_SECONDS, f"{entity} written {most} times in {WINDOW_SECONDS} s"


def test_counts_at_one_thousand_events_a_second_are_exact(one_thousand_events_a_second):
    events, _ = one_thousand_events_a_second

    totals = counters.totals()
    assert totals["click"] + totals["view"] == EVENTS_PER_SECOND * SECONDS
    stored = {item: counters.item_counts(item) for item in expected_counts(events)}
    assert {item: (counts["click"], counts["view"]) for item, counts in stored.items()} == expected_counts(events)


def test_one_thousand_events_a_second_cost_under_a_twentieth_of_a_write_each(one_thousand_events_a_second):
    _, writes = one_thousand_events_a_second

    assert len(writes.writes) / (EVENTS_PER_SECOND * SECONDS) <= 0.05
