"""A batch is counted in commits of at most 500 entities (Datastore's limit), and
exactly once per message however it is split, failed between commits, or delivered
again with a message missing or added."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest
from google.appengine.api import apiproxy_stub_map
from google.appengine.ext import ndb

from handlers import counters
from handlers.events import Event

HOUR = 3600
DAY = 86400
START = 1_740_787_200  # 2025-03-01T00:00:00Z


class CommitSizes:
    """Counts the entities each Datastore transaction writes, from its Put RPCs.

    The stub's transaction handle is ``id()`` of a Python object, so a later
    transaction can get the handle of one already ended: each handle's count is
    taken when its transaction commits or rolls back."""

    def __init__(self) -> None:
        self.entities_by_transaction: defaultdict[int, int] = defaultdict(int)
        self.committed: list[int] = []

    def hook(self, service, call, request, response, rpc) -> None:
        if call == "Put" and request.HasField("transaction"):
            self.entities_by_transaction[request.transaction.handle] += len(request.entity)
        elif call in ("Commit", "Rollback"):
            written = self.entities_by_transaction.pop(request.handle, 0)
            if call == "Commit" and written:
                self.committed.append(written)

    def sizes(self) -> list[int]:
        """Entities written by each commit that wrote any, in order."""
        return list(self.committed)


@pytest.fixture
def commit_sizes(testbed):
    sizes = CommitSizes()
    hooks = apiproxy_stub_map.apiproxy.GetPreCallHooks()
    hooks.Append("clickqueue-test-commit-sizes", sizes.hook, "datastore_v3")
    yield sizes
    hooks.Clear()


@pytest.fixture
def ranked(testbed):
    """TopItems exists already (its first commit is not what these tests count)."""
    counters.apply_batch("first", {"first": Event("view", "first", at=START)})
    ndb.get_context().clear_cache()


def spread_events(count: int) -> dict[str, Event]:
    """``count`` events, each on an item, in an hour and on a day of its own."""
    return {f"m{n}": Event("view", f"item-{n:03}", at=START + n * DAY) for n in range(count)}


def stored_counts(events: dict[str, Event]) -> dict:
    """What Datastore holds for the events' items, hours and days, and in total."""
    ndb.get_context().clear_cache()
    hours = defaultdict(set)
    for event in events.values():
        hours[event.item].add(counters.bucket_start(event.at, "hour"))
    return {
        "items": {item: counters.item_counts(item)["view"] for item in hours},
        "hours": {
            item: sum(point["view"] for point in counters.series(item, "hour", min(starts), max(starts) + HOUR))
            for item, starts in hours.items()
        },
        "all hours": sum(point["view"] for point in counters.series(None, "hour", START, START + 101 * DAY)),
        "all days": sum(point["view"] for point in counters.series(None, "day", START, START + 101 * DAY)),
    }


def expected_counts(events: dict[str, Event], extra: int = 0) -> dict:
    """As ``stored_counts``, for each event counted once (``extra``: the ``ranked`` fixture's)."""
    views = Counter(event.item for event in events.values())
    return {
        "items": dict(views),
        "hours": dict(views),
        "all hours": len(events) + extra,
        "all days": len(events) + extra,
    }


def test_batch_on_100_items_on_100_days_is_counted_in_two_commits_under_the_limit(ranked, commit_sizes):
    events = spread_events(100)  # 5 counters each, 3 more per commit: 503 entities in one commit

    added = counters.apply_batch("batch", events)

    assert added == 100
    assert len(commit_sizes.sizes()) == 2
    assert max(commit_sizes.sizes()) <= counters.MAX_ENTITIES_PER_COMMIT
    assert stored_counts(events) == expected_counts(events, extra=1)


def test_batch_within_the_limit_is_one_commit(ranked, commit_sizes):
    events = {f"m{n}": Event("click" if n % 3 else "view", f"item-{n % 40}", at=START + 5) for n in range(400)}

    counters.apply_batch("batch", events)

    assert commit_sizes.sizes() == [3 + 40 * 3 + 2]  # marker, totals, ranking; 40 items, their hour and day; all's


@pytest.mark.parametrize("limit", [20, 57, 500])
def test_every_planned_commit_fits_its_limit(limit):
    events = {f"m{n}": Event("view", f"item-{n % 37}", at=START + (n % 13) * HOUR * 5) for n in range(300)}

    for commit in counters.plan_commits(events, limit):
        keys = {key for event in commit.values() for key in counters._counter_keys(event)}
        assert counters.FIXED_ENTITIES_PER_COMMIT + len(keys) <= limit
    assert sorted(id for commit in counters.plan_commits(events, limit) for id in commit) == sorted(events)


@pytest.mark.parametrize("after_applying", [False, True], ids=["commit-failed", "answer-lost-after-commit"])
def test_failure_between_commits_then_delivery_again_counts_each_message_once(
    ranked, datastore_rpc_faults, after_applying
):
    events = spread_events(100)
    datastore_rpc_faults.fail_next("Commit", after_applying=after_applying, skip=1)  # the batch's second commit

    with pytest.raises(Exception, match="injected: Commit failed"):
        counters.apply_batch("batch", events)
    again = counters.apply_batch("batch", events)

    first_commit = len(counters.plan_commits(events)[0])
    assert again == (0 if after_applying else 100 - first_commit)
    assert stored_counts(events) == expected_counts(events, extra=1)


def test_delivery_again_without_a_message_and_with_a_new_one_counts_each_once(ranked, datastore_rpc_faults):
    events = spread_events(100)
    datastore_rpc_faults.fail_next("Commit", skip=1)
    with pytest.raises(Exception, match="injected"):
        counters.apply_batch("batch", events)
    counted_first = set(counters.plan_commits(events)[0])
    missing = sorted(counted_first)[0]  # counted, then evicted before the delivery again
    never_counted = sorted(set(events) - counted_first)[0]  # not counted, and evicted
    redelivered = {id: event for id, event in events.items() if id not in (missing, never_counted)}
    redelivered["m-new"] = Event("click", "item-000", at=START)  # its take's outcome was unknown at first

    counters.apply_batch("batch", redelivered)

    counted = {id: event for id, event in events.items() if id != never_counted}
    ndb.get_context().clear_cache()
    assert counters.item_counts("item-000")["click"] == 1
    assert stored_counts(counted) == expected_counts(counted, extra=1)


def test_batch_counted_whole_changes_nothing_when_delivered_again(ranked, commit_sizes):
    events = spread_events(100)
    counters.apply_batch("batch", events)
    written = len(commit_sizes.sizes())

    again = counters.apply_batch("batch", events)

    assert (again, len(commit_sizes.sizes())) == (0, written)
    assert stored_counts(events) == expected_counts(events, extra=1)
