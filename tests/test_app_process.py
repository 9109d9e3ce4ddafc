"""/process drains the queue into exact counts, once per batch; /cron/process schedules it."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from google.appengine.api import croninfo, queueinfo
from google.appengine.ext import ndb

from clickqueue import Queue
from clickqueue.codec import FRAME_MESSAGES
from tests.support.counting import clicks_and_views, keyed, leased_events
from tests.support.processes import REPO_ROOT
from tests.support.seams import FakeClock
from handlers import counters
from handlers.events import Event
from handlers.settings import Settings, default_queue

TASK_HEADERS = {"X-AppEngine-QueueName": "process"}
CRON_HEADERS = {"X-Appengine-Cron": "true"}


def track(app, events: list[tuple[str, str]]) -> None:
    """Queue events through /track (one JSON batch)."""
    app.post_json("/track", {"events": [{"type": t, "item": i} for t, i in events]}, status=202)


def process(app, status: int = 200):
    return app.post("/process", headers=TASK_HEADERS, status=status)


def expected_counts(events: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    counted = Counter(events)
    return {item: {"click": counted["click", item], "view": counted["view", item]} for _, item in events}


def stored_counts(items) -> dict[str, dict[str, int]]:
    return {item: clicks_and_views(counters.item_counts(item)) for item in items}


NOTHING = {"click": 0, "view": 0, "bots": 0, "ctr": None}


EVENTS = [("click", "a"), ("view", "a"), ("view", "a"), ("click", "b"), ("view", "c")] * 50
LEASED = 100 // FRAME_MESSAGES * FRAME_MESSAGES
"""What a lease of the app's 100 takes from one batch of 250: it ends where a frame does."""


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        pytest.param("/process", "post", {}, id="task-without-queue-header"),
        pytest.param("/process", "post", CRON_HEADERS, id="task-with-cron-header"),
        pytest.param("/cron/process", "get", {}, id="cron-without-cron-header"),
        pytest.param("/cron/process", "get", {"X-Appengine-Cron": "false"}, id="cron-header-not-true"),
        pytest.param("/cron/process", "get", TASK_HEADERS, id="cron-with-queue-header"),
    ],
)
def test_requests_not_from_app_engine_are_forbidden(app, queued_tasks, path, method, headers):
    track(app, [("click", "a")])
    tasks_before = queued_tasks()

    response = getattr(app, method)(path, headers=headers, status=403)

    assert set(response.json) == {"error"}
    assert counters.totals() == NOTHING
    assert len(queued_tasks()) == len(tasks_before)


def test_process_counts_every_event_exactly_by_item(app):
    track(app, EVENTS)

    response = process(app)

    assert response.json == {"processed": len(EVENTS), "requeued": 0, "remaining": 0}
    assert stored_counts("abc") == expected_counts(EVENTS)
    assert counters.totals() == {"click": 100, "view": 150, "bots": 0, "ctr": 100 / 150}


def test_process_of_an_empty_queue_does_nothing(app):
    response = process(app)

    assert response.json == {"processed": 0, "requeued": 0, "remaining": 0}
    assert counters.totals() == NOTHING


def test_process_commits_one_batch_per_lease(make_app, app_settings):
    batch_ids = []

    def recording_aggregate(batch_id, events):
        batch_ids.append((batch_id, len(events)))
        return counters.apply_batch(batch_id, events)

    app = make_app(dataclasses.replace(app_settings, aggregate=recording_aggregate))
    track(app, EVENTS)

    process(app)

    assert [size for _, size in batch_ids] == [LEASED, LEASED, len(EVENTS) - 2 * LEASED]
    assert len({batch_id for batch_id, _ in batch_ids}) == 3


def test_tracked_events_are_counted_when_the_slot_task_runs(app, run_tasks):
    app.get("/track", {"type": "click", "item": "a"}, status=204)
    app.post("/track", {"type": "view", "item": "a"}, status=204)
    track(app, [("view", "b"), ("click", "b"), ("click", "b")])

    [response] = run_tasks(app)

    assert response.json == {"processed": 5, "requeued": 0, "remaining": 0}
    assert stored_counts("ab") == {"a": {"click": 1, "view": 1}, "b": {"click": 2, "view": 1}}


def failing_aggregate(batch_id, events):
    raise RuntimeError("datastore is down")


def test_failed_batch_is_given_back_and_answers_503(make_app, app_settings):
    app = make_app(dataclasses.replace(app_settings, aggregate=failing_aggregate))
    track(app, EVENTS[:30])

    response = process(app, status=503)

    assert response.json["processed"] == 0
    assert response.json["requeued"] == 30
    assert "datastore is down" in response.json["error"]
    assert counters.totals() == NOTHING
    assert app_settings.queue.stats().requeued == 30


def test_failed_batch_is_counted_exactly_when_the_task_is_retried(make_app, app_settings, run_tasks):
    track(make_app(app_settings), EVENTS)
    [failed] = run_tasks(make_app(dataclasses.replace(app_settings, aggregate=failing_aggregate)))
    assert failed.status_int == 503

    [retried] = run_tasks(make_app(app_settings))

    assert retried.json == {"processed": len(EVENTS), "requeued": 0, "remaining": 0}
    assert stored_counts("abc") == expected_counts(EVENTS)


def test_failure_after_some_batches_keeps_the_committed_ones(make_app, app_settings):
    calls = []

    def fail_on_second_batch(batch_id, events):
        calls.append(batch_id)
        if len(calls) == 2:
            raise RuntimeError("contention")
        return counters.apply_batch(batch_id, events)

    app = make_app(dataclasses.replace(app_settings, aggregate=fail_on_second_batch))
    track(app, EVENTS)

    failed = process(app, status=503)
    retried = process(app)

    assert (failed.json["processed"], failed.json["requeued"]) == (LEASED, LEASED)
    assert retried.json["processed"] == len(EVENTS) - LEASED
    assert calls[2] == calls[1]  # the given-back batch comes first, under its lease id
    assert stored_counts("abc") == expected_counts(EVENTS)


def test_batch_given_back_after_its_commit_counts_once(make_app, app_settings):
    def commit_then_fail(batch_id, events):
        counters.apply_batch(batch_id, events)
        raise RuntimeError("lost the answer after the commit")

    track(make_app(app_settings), EVENTS[:40])
    process(make_app(dataclasses.replace(app_settings, aggregate=commit_then_fail)), status=503)

    response = process(make_app(app_settings))

    assert response.json["processed"] == 40
    assert stored_counts("abc") == expected_counts(EVENTS[:40])


def test_expired_lease_delivered_again_counts_once(app, app_settings, clock):
    track(app, EVENTS[:40])
    lease = app_settings.queue.lease(100, seconds=60)
    counters.apply_batch(lease.lease_id, leased_events(lease))  # then the processor dies
    clock.advance(61)

    response = process(app)

    assert response.json["processed"] == 40
    assert stored_counts("abc") == expected_counts(EVENTS[:40])


def test_same_batch_applied_twice_counts_once(testbed):
    events = keyed(Event(type=t, item=i) for t, i in EVENTS[:10])

    assert counters.apply_batch("lease-1", events) == 10
    assert counters.apply_batch("lease-1", events) == 0

    assert stored_counts("abc") == expected_counts(EVENTS[:10])


def test_messages_that_are_not_events_are_dropped(app, app_settings):
    app_settings.queue.write_multi(["garbage", {"type": "buy", "item": "a"}, {"type": "view", "item": "a"}])

    response = process(app)

    assert response.json == {"processed": 3, "requeued": 0, "remaining": 0}
    assert stored_counts("a") == {"a": {"click": 0, "view": 1}}


def test_spent_time_budget_chains_a_continuation_task(make_app, app_settings, queued_tasks):
    app = make_app(dataclasses.replace(app_settings, time_budget_seconds=0))
    track(app, EVENTS[:10])
    tasks_before = {task.name for task in queued_tasks()}

    response = process(app)

    assert response.json == {"processed": 0, "requeued": 0, "remaining": 10}
    [continuation] = [task for task in queued_tasks() if task.name not in tasks_before]
    assert continuation.url == "/process"


def test_cron_schedules_the_slot_task_once(app, clock, queued_tasks):
    first = app.get("/cron/process", headers=CRON_HEADERS)
    second = app.get("/cron/process", headers=CRON_HEADERS)

    assert (first.json["scheduled"], second.json["scheduled"]) == (True, False)
    assert [task.name for task in queued_tasks()] == [f"process-events-{int(clock.now)}"]


def test_cron_task_counts_events_whose_slot_task_was_lost(app, clock, testbed, run_tasks):
    from google.appengine.ext import testbed as testbed_module

    track(app, EVENTS[:20])
    testbed.get_stub(testbed_module.TASKQUEUE_SERVICE_NAME).FlushQueue("process")
    clock.advance(60)

    app.get("/cron/process", headers=CRON_HEADERS)
    run_tasks(app)

    assert stored_counts("abc") == expected_counts(EVENTS[:20])


@pytest.mark.parametrize("batch_size", [0, counters.MAX_EVENTS_PER_LEASE + 1])
def test_batch_size_is_bounded(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        Settings(batch_size=batch_size)


def test_queue_name_must_fit_task_names():
    with pytest.raises(ValueError, match="task names"):
        Settings(queue=Queue("my.events"))


def test_remaining_counts_batches_still_leased(app, app_settings):
    track(app, EVENTS[:30])
    app_settings.queue.lease(10, seconds=60)  # a processor holding a batch, not acked yet
    track(app, EVENTS[:5])

    response = process(app)

    assert response.json == {"processed": 25, "requeued": 0, "remaining": 10}


def put_marker(batch_id: str, applied_at_posix: float) -> None:
    """An AppliedBatch marker as apply_batch writes it, applied at the given time."""
    applied_at = datetime.fromtimestamp(applied_at_posix, tz=UTC).replace(tzinfo=None)
    parent = ndb.Key(counters.EventTotals, "all")
    counters.AppliedBatch(key=ndb.Key(counters.AppliedBatch, batch_id, parent=parent), applied_at=applied_at).put()


def stored_marker_ids() -> set[str]:
    return {key.id() for key in counters.AppliedBatch.query().fetch(keys_only=True)}


def test_cron_prunes_markers_older_than_their_retention_and_keeps_the_others(app, app_settings, clock):
    retention = app_settings.marker_retention_seconds
    put_marker("old", clock.now - retention - 1)
    put_marker("at-the-edge", clock.now - retention + 1)
    put_marker("recent", clock.now - 60)

    response = app.get("/cron/process", headers=CRON_HEADERS)

    assert response.json["pruned_markers"] == 1
    assert stored_marker_ids() == {"at-the-edge", "recent"}


def test_cron_prunes_a_bounded_number_of_markers_per_run(make_app, app_settings, clock):
    app = make_app(dataclasses.replace(app_settings, markers_pruned_per_run=3))
    for n in range(5):
        put_marker(f"old-{n}", clock.now - app_settings.marker_retention_seconds - 100 + n)

    first = app.get("/cron/process", headers=CRON_HEADERS)
    second = app.get("/cron/process", headers=CRON_HEADERS)

    assert (first.json["pruned_markers"], second.json["pruned_markers"]) == (3, 2)
    assert stored_marker_ids() == set()


def test_batch_delivered_again_within_the_retention_still_counts_once(make_app, testbed):
    # apply_batch stamps markers with the real time: the app's clock starts there.
    clock = FakeClock(time.time())
    settings = Settings(queue=default_queue(clock), clock=clock)
    app = make_app(settings)
    track(app, EVENTS[:40])
    lease = settings.queue.lease(100, seconds=settings.lease_seconds)
    counters.apply_batch(lease.lease_id, leased_events(lease))  # then the processor dies
    clock.advance(settings.marker_retention_seconds - 10)

    cron = app.get("/cron/process", headers=CRON_HEADERS)
    response = process(app)

    assert (cron.json["pruned_markers"], stored_marker_ids()) == (0, {lease.lease_id})
    assert response.json["processed"] == 40
    assert stored_counts("abc") == expected_counts(EVENTS[:40])


def test_marker_retention_is_derived_from_queue_yaml_and_cron_yaml():
    from google.appengine.api import croninfo, queueinfo

    from handlers.settings import Settings, default_queue

    settings = Settings()
    queues = queueinfo.LoadSingleQueue((REPO_ROOT / "queue.yaml").read_text()).queue
    [queue] = [entry for entry in queues if entry.name == settings.task_queue_name]
    crons = croninfo.LoadSingleCron((REPO_ROOT / "cron.yaml").read_text()).cron
    [cron] = [entry for entry in crons if entry.url == "/cron/process"]

    assert queueinfo.ParseTaskAgeLimit(queue.retry_parameters.task_age_limit) == settings.task_age_limit_seconds
    assert queue.retry_parameters.max_backoff_seconds == settings.max_backoff_seconds
    assert cron.schedule == f"every {settings.cron_interval_seconds // 60:g} minutes"
    assert settings.marker_retention_seconds == 3600 + 60 + 60 + 5
