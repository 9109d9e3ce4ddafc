"""/process drains the queue into counted batches, once per message; /fold adds them to the
count store; /cron/process schedules both and prunes old batch records."""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from google.appengine.api import croninfo, queueinfo
from google.appengine.ext import ndb

from clickqueue import Queue
from clickqueue import MAX_CLAIM_ITEMS
from clickqueue.codec import FRAME_MESSAGES
from tests.support.counting import clicks_and_views, keyed, leased_events
from tests.support.processes import REPO_ROOT
from tests.support.seams import FakeClock
from clicks import counters, counting
from clicks.events import Event
from clicks.processing import ProcessorLanes
from clicks.settings import Settings, default_queue
from tests.support.counting import FOLD_HEADERS, run_folds

TASK_HEADERS = {"X-AppEngine-QueueName": "process"}
CRON_HEADERS = {"X-Appengine-Cron": "true"}


def track(app, events: list[tuple[str, str]]) -> None:
    """Queue events through /track (one JSON batch)."""
    app.post_json("/track", {"events": [{"type": t, "item": i} for t, i in events]}, status=202)


def process(app, status: int = 200):
    return app.post("/process", headers=TASK_HEADERS, status=status)


def processed(app, status: int = 200) -> dict:
    """/process's answer, without the lane it ran in."""
    answer = dict(process(app, status).json)
    answer.pop("lane")
    return answer


def expected_counts(events: list[tuple[str, str]]) -> dict[str, dict[str, int]]:
    counted = Counter(events)
    return {item: {"click": counted["click", item], "view": counted["view", item]} for _, item in events}


def stored_counts(items) -> dict[str, dict[str, int]]:
    return {item: clicks_and_views(counters.item_counts(item)) for item in items}


NOTHING = {"click": 0, "view": 0, "bots": 0, "ctr": None}


EVENTS = [("click", "a"), ("view", "a"), ("view", "a"), ("click", "b"), ("view", "c")] * 50
BATCH = 100
LEASED = BATCH // FRAME_MESSAGES * FRAME_MESSAGES
"""What a lease of 100 takes from one write of 250: it ends where a frame does."""


@pytest.fixture
def small_batches(app_settings):
    """The app's settings with leases of ``BATCH``: a write of ``EVENTS`` takes three."""
    return dataclasses.replace(app_settings, batch_size=BATCH)


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        pytest.param("/process", "post", {}, id="task-without-queue-header"),
        pytest.param("/process", "post", CRON_HEADERS, id="task-with-cron-header"),
        pytest.param("/cron/process", "get", {}, id="cron-without-cron-header"),
        pytest.param("/cron/process", "get", {"X-Appengine-Cron": "false"}, id="cron-header-not-true"),
        pytest.param("/cron/process", "get", TASK_HEADERS, id="cron-with-queue-header"),
        pytest.param("/fold", "post", {}, id="fold-without-queue-header"),
        pytest.param("/fold", "post", CRON_HEADERS, id="fold-with-cron-header"),
    ],
)
def test_requests_not_from_app_engine_are_forbidden(app, queued_tasks, path, method, headers):
    track(app, [("click", "a")])
    tasks_before = queued_tasks()

    response = getattr(app, method)(path, headers=headers, status=403)

    assert set(response.json) == {"error"}
    assert counters.totals() == NOTHING
    assert len(queued_tasks()) == len(tasks_before)


def test_process_then_fold_counts_every_event_exactly_by_item(app):
    track(app, EVENTS)

    answer = processed(app)
    run_folds(app)

    assert answer == {"processed": len(EVENTS), "requeued": 0, "remaining": 0}
    assert stored_counts("abc") == expected_counts(EVENTS)
    assert counters.totals() == {"click": 100, "view": 150, "bots": 0, "ctr": 100 / 150}


def test_recorded_batches_count_only_once_folded(app):
    track(app, EVENTS)

    processed(app)

    assert counters.totals() == NOTHING
    assert len(counting.unfolded_batches(10)) == 1


def test_process_of_an_empty_queue_does_nothing(app):
    answer = processed(app)
    folds = run_folds(app)

    assert answer == {"processed": 0, "requeued": 0, "remaining": 0}
    assert folds == [{"folded": 0, "split": None, "more": False}]
    assert counters.totals() == NOTHING


def test_process_records_one_batch_per_lease(make_app, small_batches):
    batch_ids = []

    def recording_aggregate(batch_id, events, now):
        batch_ids.append((batch_id, len(events)))
        return counting.count_batch(batch_id, events, now)

    app = make_app(dataclasses.replace(small_batches, aggregate=recording_aggregate))
    track(app, EVENTS)

    processed(app)

    assert [size for _, size in batch_ids] == [LEASED, LEASED, len(EVENTS) - 2 * LEASED]
    assert len({batch_id for batch_id, _ in batch_ids}) == 3
    assert len(counting.unfolded_batches(10)) == 3


def test_tracked_events_are_counted_when_the_slot_task_runs(app, run_tasks):
    app.get("/track", {"type": "click", "item": "a"}, status=204)
    app.post("/track", {"type": "view", "item": "a"}, status=204)
    track(app, [("view", "b"), ("click", "b"), ("click", "b")])

    [response] = run_tasks(app)

    assert response.json == {"processed": 5, "requeued": 0, "remaining": 0, "lane": 0}
    assert stored_counts("ab") == {"a": {"click": 1, "view": 1}, "b": {"click": 2, "view": 1}}


def failing_aggregate(batch_id, events, now):
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

    assert retried.json == {"processed": len(EVENTS), "requeued": 0, "remaining": 0, "lane": 0}
    assert stored_counts("abc") == expected_counts(EVENTS)


def test_failure_after_some_batches_keeps_the_recorded_ones(make_app, small_batches):
    calls = []

    def fail_on_second_batch(batch_id, events, now):
        calls.append(batch_id)
        if len(calls) == 2:
            raise RuntimeError("contention")
        return counting.count_batch(batch_id, events, now)

    app = make_app(dataclasses.replace(small_batches, aggregate=fail_on_second_batch))
    track(app, EVENTS)

    failed = process(app, status=503)
    retried = processed(app)
    run_folds(app)

    assert (failed.json["processed"], failed.json["requeued"]) == (LEASED, LEASED)
    assert retried["processed"] == len(EVENTS) - LEASED
    assert calls[2] == calls[1]  # the given-back batch comes first, under its lease id
    assert stored_counts("abc") == expected_counts(EVENTS)


def test_batch_given_back_after_its_commit_counts_once(make_app, app_settings):
    def commit_then_fail(batch_id, events, now):
        counting.count_batch(batch_id, events, now)
        raise RuntimeError("lost the answer after the commit")

    track(make_app(app_settings), EVENTS[:40])
    process(make_app(dataclasses.replace(app_settings, aggregate=commit_then_fail)), status=503)

    answer = processed(make_app(app_settings))
    run_folds(make_app(app_settings))

    assert answer["processed"] == 40
    assert stored_counts("abc") == expected_counts(EVENTS[:40])


def test_expired_lease_delivered_again_counts_once(app, app_settings, clock):
    track(app, EVENTS[:40])
    lease = app_settings.queue.lease(100, seconds=60)
    counting.count_batch(lease.lease_id, leased_events(lease), clock.now)  # then the processor dies
    clock.advance(61)

    answer = processed(app)
    run_folds(app)

    assert answer["processed"] == 40
    assert stored_counts("abc") == expected_counts(EVENTS[:40])


def test_same_batch_recorded_twice_counts_once(testbed):
    events = keyed(Event(type=t, item=i) for t, i in EVENTS[:10])

    assert counting.count_batch("lease-1", events, time.time()) == 10
    assert counting.count_batch("lease-1", events, time.time()) == 0
    counting.fold(time.time())

    assert stored_counts("abc") == expected_counts(EVENTS[:10])


def test_batch_delivered_again_with_new_messages_counts_only_those(testbed):
    first = keyed(Event("view", "a") for _ in range(3))
    again = {**first, "message-new": Event("click", "a")}

    recorded = counting.count_batch("lease-1", first, time.time()), counting.count_batch("lease-1", again, time.time())
    counting.fold(time.time())

    assert recorded == (3, 1)
    assert stored_counts("a") == {"a": {"click": 1, "view": 3}}


def test_batch_delivered_again_after_its_fold_counts_once(testbed):
    events = keyed(Event("view", "a") for _ in range(3))
    counting.count_batch("lease-1", events, time.time())
    counting.fold(time.time())

    recorded = counting.count_batch("lease-1", events, time.time())
    counting.fold(time.time())

    assert recorded == 0
    assert stored_counts("a") == {"a": {"click": 0, "view": 3}}


def test_messages_that_are_not_events_are_dropped(app, app_settings):
    app_settings.queue.write_multi(["garbage", {"type": "buy", "item": "a"}, {"type": "view", "item": "a"}])

    answer = processed(app)
    run_folds(app)

    assert answer == {"processed": 3, "requeued": 0, "remaining": 0}
    assert stored_counts("a") == {"a": {"click": 0, "view": 1}}


def test_spent_time_budget_chains_a_continuation_task(make_app, app_settings, queued_tasks):
    app = make_app(dataclasses.replace(app_settings, time_budget_seconds=0))
    track(app, EVENTS[:10])
    tasks_before = {task.name for task in queued_tasks()}

    answer = processed(app)

    assert answer == {"processed": 0, "requeued": 0, "remaining": 10}
    [continuation] = [task for task in queued_tasks() if task.name not in tasks_before]
    assert continuation.url == "/process"


def writing_while_recording(settings: Settings, events: list[dict]):
    """An aggregate that, recording the first batch, lets ``events`` arrive, as writers do."""
    arrivals = [events]

    def aggregate(batch_id, batch_events, now):
        if arrivals:
            settings.queue.write_multi(arrivals.pop())
        return counting.count_batch(batch_id, batch_events, now)

    return aggregate


def test_process_stops_once_a_batch_comes_back_less_than_half_full(make_app, small_batches):
    arriving = [{"type": "view", "item": "later"}] * BATCH
    app = make_app(dataclasses.replace(small_batches, aggregate=writing_while_recording(small_batches, arriving)))
    small_batches.queue.write_multi([{"type": "view", "item": "first"}] * (BATCH // 2 - 1))

    answer = processed(app)

    assert answer == {"processed": BATCH // 2 - 1, "requeued": 0, "remaining": BATCH}


def test_process_goes_on_after_a_batch_at_least_half_full(make_app, small_batches):
    arriving = [{"type": "view", "item": "later"}] * (BATCH // 2)
    app = make_app(dataclasses.replace(small_batches, aggregate=writing_while_recording(small_batches, arriving)))
    small_batches.queue.write_multi([{"type": "view", "item": "first"}] * (BATCH // 2))

    answer = processed(app)

    assert answer == {"processed": BATCH, "requeued": 0, "remaining": 0}


def test_process_that_caught_up_asks_for_the_slot_task(make_app, small_batches, clock, queued_tasks):
    app = make_app(small_batches)
    small_batches.queue.write_multi([{"type": "view", "item": "a"}])  # not through /track: no task asked

    processed(app)

    assert f"process-events-{int(clock.now)}" in {task.name for task in queued_tasks()}


def test_cron_schedules_the_slot_task_and_a_fold_once(app, clock, queued_tasks):
    first = app.get("/cron/process", headers=CRON_HEADERS)
    second = app.get("/cron/process", headers=CRON_HEADERS)

    assert (first.json["scheduled"], second.json["scheduled"]) == (True, False)
    assert sorted(task.name for task in queued_tasks()) == [
        f"fold-events-{int(clock.now) + 1}",
        f"process-events-{int(clock.now)}",
    ]


def test_cron_task_counts_events_whose_slot_task_was_lost(app, clock, testbed, run_tasks):
    from google.appengine.ext import testbed as testbed_module

    track(app, EVENTS[:20])
    testbed.get_stub(testbed_module.TASKQUEUE_SERVICE_NAME).FlushQueue("process")
    clock.advance(60)

    app.get("/cron/process", headers=CRON_HEADERS)
    run_tasks(app)

    assert stored_counts("abc") == expected_counts(EVENTS[:20])


@pytest.mark.parametrize("batch_size", [0, MAX_CLAIM_ITEMS + 1])
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

    answer = processed(app)

    assert answer == {"processed": 25, "requeued": 0, "remaining": 10}


def put_batch_record(batch_id: str, counted_at_posix: float, folded: bool = True) -> None:
    """A CountedBatch as count_batch writes it (folded, as the fold leaves it), counted at the given time."""
    counting.CountedBatch(
        key=ndb.Key(counting.CountedBatch, batch_id),
        counted_at=datetime.fromtimestamp(counted_at_posix, tz=UTC).replace(tzinfo=None),
        folded=folded,
        tally=None if folded else {},
    ).put()


def stored_batch_ids() -> set[str]:
    return {key.id() for key in counting.CountedBatch.query().fetch(keys_only=True)}


def test_cron_prunes_batch_records_older_than_their_retention_and_keeps_the_others(app, app_settings, clock):
    retention = app_settings.record_retention_seconds
    put_batch_record("old", clock.now - retention - 1)
    put_batch_record("at-the-edge", clock.now - retention + 1)
    put_batch_record("recent", clock.now - 60)

    response = app.get("/cron/process", headers=CRON_HEADERS)

    assert response.json["pruned_batches"] == 1
    assert stored_batch_ids() == {"at-the-edge", "recent"}


def test_cron_never_prunes_a_batch_not_yet_folded(app, app_settings, clock):
    put_batch_record("old-and-waiting", clock.now - app_settings.record_retention_seconds - 100, folded=False)

    response = app.get("/cron/process", headers=CRON_HEADERS)

    assert response.json["pruned_batches"] == 0
    assert stored_batch_ids() == {"old-and-waiting"}


def test_cron_prunes_a_bounded_number_of_batch_records_per_run(make_app, app_settings, clock):
    app = make_app(dataclasses.replace(app_settings, batches_pruned_per_run=3))
    for n in range(5):
        put_batch_record(f"old-{n}", clock.now - app_settings.record_retention_seconds - 100 + n)

    first = app.get("/cron/process", headers=CRON_HEADERS)
    second = app.get("/cron/process", headers=CRON_HEADERS)

    assert (first.json["pruned_batches"], second.json["pruned_batches"]) == (3, 2)
    assert stored_batch_ids() == set()


def test_batch_delivered_again_within_the_retention_still_counts_once(make_app, testbed):
    clock = FakeClock(time.time())
    settings = Settings(queue=default_queue(clock), clock=clock)
    app = make_app(settings)
    track(app, EVENTS[:40])
    lease = settings.queue.lease(100, seconds=settings.lease_seconds)
    counting.count_batch(lease.lease_id, leased_events(lease), clock.now)  # then the processor dies
    run_folds(app)
    clock.advance(settings.record_retention_seconds - 10)

    cron = app.get("/cron/process", headers=CRON_HEADERS)
    answer = processed(app)
    run_folds(app)

    assert (cron.json["pruned_batches"], stored_batch_ids()) == (0, {lease.lease_id})
    assert answer["processed"] == 40
    assert stored_counts("abc") == expected_counts(EVENTS[:40])


def test_record_retention_is_derived_from_queue_yaml_and_cron_yaml():
    from google.appengine.api import croninfo, queueinfo

    from clicks.settings import Settings, default_queue

    settings = Settings()
    queues = queueinfo.LoadSingleQueue((REPO_ROOT / "queue.yaml").read_text()).queue
    [queue] = [entry for entry in queues if entry.name == settings.task_queue_name]
    crons = croninfo.LoadSingleCron((REPO_ROOT / "cron.yaml").read_text()).cron
    [cron] = [entry for entry in crons if entry.url == "/cron/process"]

    assert queueinfo.ParseTaskAgeLimit(queue.retry_parameters.task_age_limit) == settings.task_age_limit_seconds
    assert queue.retry_parameters.max_backoff_seconds == settings.max_backoff_seconds
    assert cron.schedule == f"every {settings.cron_interval_seconds // 60:g} minutes"
    assert settings.record_retention_seconds == 3600 + 60 + 60 + 5


def test_processors_and_one_fold_at_a_time_are_what_queue_yaml_runs():
    settings = Settings()
    queues = {entry.name: entry for entry in queueinfo.LoadSingleQueue((REPO_ROOT / "queue.yaml").read_text()).queue}

    assert queues[settings.task_queue_name].max_concurrent_requests == settings.processors
    assert queues[settings.fold_queue_name].max_concurrent_requests == 1


# -- several processors ----------------------------------------------------------------------


def test_process_with_every_lane_held_processes_nothing(app, app_settings):
    lanes = ProcessorLanes(app_settings)
    held = [lanes.hold() for _ in range(app_settings.processors)]
    track(app, EVENTS[:10])

    response = process(app)

    assert held == list(range(app_settings.processors))
    assert response.json == {"processed": 0, "requeued": 0, "remaining": 10, "lane": None}


def test_process_takes_the_first_free_lane_and_frees_it(app, app_settings):
    lanes = ProcessorLanes(app_settings)
    lanes.hold()  # lane 0: another processor's
    track(app, EVENTS[:10])

    response = process(app)

    assert response.json["lane"] == 1
    assert lanes.hold() == 1  # freed when the request ended


def test_backlog_over_one_batch_asks_for_a_task_per_free_lane(make_app, small_batches, queued_tasks):
    app = make_app(small_batches)
    ProcessorLanes(small_batches).hold()  # lane 0: another processor's
    track(app, EVENTS)
    tasks_before = {task.name for task in queued_tasks()}

    process(app)

    fanned_out = [task for task in queued_tasks() if task.name not in tasks_before and task.url == "/process"]
    assert len(fanned_out) == small_batches.processors - 2  # all lanes but the other's and its own


def test_queue_of_at_most_one_batch_asks_for_no_more_processors(app, queued_tasks):
    track(app, EVENTS[:10])
    tasks_before = {task.name for task in queued_tasks()}

    process(app)

    assert [task.url for task in queued_tasks() if task.name not in tasks_before] == ["/fold"]


# -- folding ---------------------------------------------------------------------------------


def test_fold_commits_at_most_its_batches_and_asks_for_the_next(app, queued_tasks, clock):
    for n in range(counting.MAX_BATCHES_PER_FOLD + 3):
        counting.count_batch(f"lease-{n}", {f"m-{n}": Event("view", "a", at=int(clock.now))}, clock.now)

    first = app.post("/fold", headers=FOLD_HEADERS).json
    second = app.post("/fold", headers=FOLD_HEADERS).json

    assert first == {"folded": counting.MAX_BATCHES_PER_FOLD, "split": None, "more": True}
    assert second == {"folded": 3, "split": None, "more": False}
    assert [task.name for task in queued_tasks()] == [f"fold-events-{int(clock.now) + 1}"]
    assert counters.item_counts("a")["view"] == counting.MAX_BATCHES_PER_FOLD + 3


def test_processing_asks_for_one_fold_per_slot(app, queued_tasks, clock):
    track(app, EVENTS[:10])
    processed(app)
    track(app, EVENTS[:10])
    processed(app)

    assert [task.name for task in queued_tasks() if task.url == "/fold"] == [f"fold-events-{int(clock.now) + 1}"]
