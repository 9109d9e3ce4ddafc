"""Backpressure on intake: a recording request whose events would take the queue's
backlog past ``max_queue_depth`` records nothing (/track and /p.gif answer 503 with
Retry-After, /go still redirects); the refusals show in /stats; the backlog is read
once per slot per process, and intake resumes once processing drains it."""

from __future__ import annotations

import logging
import threading

import pytest
import webtest
from google.appengine.api import memcache
from tests.support.seams import CacheWrapper
from tests.support.threads import THREAD_DEADLINE_SECONDS, InThread

from clickqueue import Queue, wrap_client
from clicks.intake import DEFAULT_MAX_QUEUE_DEPTH, MAX_QUEUE_DEPTH_ENV
from clicks.settings import Settings, default_queue
from handlers.pixel import TRANSPARENT_GIF

LIMIT = 500
"""The smallest max_queue_depth: one /track batch of 500 fills it."""

RETRY_AFTER = "5"
"""One processing run: the default ``time_budget_seconds``."""


def batch(count: int, item: str = "x") -> dict[str, list[dict[str, str]]]:
    return {"events": [{"type": "view", "item": item}] * count}


@pytest.fixture
def settings(testbed, clock) -> Settings:
    return Settings(queue=default_queue(clock), clock=clock, max_queue_depth=LIMIT)


@pytest.fixture
def app(make_app, settings):
    return make_app(settings)


@pytest.fixture
def full_app(app, settings):
    """The app, its queue holding ``LIMIT`` events not yet counted."""
    app.post_json("/track", batch(LIMIT, "waiting"), status=202)
    return app


def signed_go(settings, item: str = "cta") -> str:
    link = settings.links.link("http://localhost", item, "https://example.com/landing")
    return link.removeprefix("http://localhost")


def refused(app) -> int:
    return app.get("/stats", status=200).json["intake"]["refused"]


def memcache_calls(faults, request) -> list[str]:
    """The memcache RPCs (by method) that ``request()`` makes."""
    faults.request_bytes.clear()
    request()
    return [method for method, _size in faults.request_bytes]


def test_a_batch_that_fills_the_queue_to_the_limit_is_recorded(app, settings):
    response = app.post_json("/track", batch(LIMIT), status=202)

    assert response.json == {"queued": LIMIT}
    assert (settings.queue.stats().depth, settings.queue.stats().written) == (LIMIT, LIMIT)


@pytest.mark.parametrize(
    "send",
    [
        pytest.param(lambda app: app.get("/track", {"type": "click", "item": "late"}, status=503), id="get"),
        pytest.param(lambda app: app.post("/track", {"type": "click", "item": "late"}, status=503), id="form"),
        pytest.param(lambda app: app.post_json("/track", batch(1, "late"), status=503), id="json"),
    ],
)
def test_track_refuses_events_past_the_limit_with_503_and_retry_after_and_records_nothing(full_app, settings, send):
    before = settings.queue.stats()

    response = send(full_app)

    assert response.headers["Retry-After"] == RETRY_AFTER
    assert response.json == {
        "error": f"the queue is full ({LIMIT} events not yet counted, the limit is {LIMIT}): "
        f"nothing was recorded; send the events again in {RETRY_AFTER} s"
    }
    assert settings.queue.stats() == before
    assert {message["item"] for message in settings.queue.read_multi(1000)} == {"waiting"}


def test_pixel_past_the_limit_answers_its_gif_with_503_and_retry_after_and_records_nothing(full_app, settings):
    before = settings.queue.stats()

    response = full_app.get("/p.gif", {"type": "view", "item": "late"}, status=503)

    assert response.headers["Retry-After"] == RETRY_AFTER
    assert (response.headers["Content-Type"], response.body) == ("image/gif", TRANSPARENT_GIF)
    assert response.headers["Cache-Control"] == "no-store"
    assert settings.queue.stats() == before


def test_go_past_the_limit_still_redirects_and_records_nothing(full_app, settings):
    before = settings.queue.stats()

    response = full_app.get(signed_go(settings), status=302)

    assert response.headers["Location"] == "https://example.com/landing"
    assert settings.queue.stats() == before


def test_a_batch_that_would_pass_the_limit_is_refused_whole(app, settings):
    app.post_json("/track", batch(LIMIT - 2), status=202)

    app.post_json("/track", batch(3, "late"), status=503)

    assert settings.queue.stats().written == LIMIT - 2


def test_a_process_counts_what_it_admits_without_reading_the_queue_again(app, settings):
    app.post_json("/track", batch(300), status=202)  # the slot's one read: 0 events

    app.post_json("/track", batch(300), status=503)  # 300 read + admitted since

    assert settings.queue.stats().written == 300


def test_refused_events_show_in_stats(full_app, settings):
    full_app.post_json("/track", batch(3, "late"), status=503)
    full_app.get("/track", {"type": "click", "item": "late"}, status=503)
    full_app.get("/p.gif", {"type": "view", "item": "late"}, status=503)
    full_app.get(signed_go(settings), status=302)

    assert full_app.get("/stats", status=200).json["intake"] == {"refused": 6, "max_queue_depth": LIMIT}


def test_another_process_sees_the_refusals_once_the_refusing_one_reads_the_queue_again(
    full_app, make_app, settings, clock
):
    other_process = make_app(Settings(queue=default_queue(clock), clock=clock, max_queue_depth=LIMIT))
    full_app.get("/track", {"type": "click", "item": "late"}, status=503)
    assert refused(other_process) == 0

    clock.advance(settings.slot_seconds)
    full_app.get("/track", {"type": "click", "item": "later"}, status=503)

    assert refused(other_process) == 1  # the slot before's; this slot's goes with the next read


def test_a_full_queue_is_logged_once_per_slot_not_once_per_request(full_app, caplog):
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            full_app.get("/track", {"type": "click", "item": "late"}, status=503)

    full = f"refusing events: the queue holds {LIMIT} events not yet counted (max_queue_depth {LIMIT})"
    assert [(record.name, record.getMessage()) for record in caplog.records] == [("clicks.intake", full)]


def test_a_prefetch_while_full_answers_as_ever_and_counts_no_refusal(full_app):
    full_app.get("/track", {"type": "view", "item": "late"}, headers={"Sec-Purpose": "prefetch"}, status=204)

    assert refused(full_app) == 0


def test_bad_input_while_full_answers_400(full_app):
    full_app.get("/track", {"type": "like", "item": "late"}, status=400)

    assert refused(full_app) == 0


def test_events_in_a_lease_not_yet_acked_count_in_the_backlog(full_app, settings, clock):
    held = settings.queue.lease(LIMIT)
    clock.advance(settings.slot_seconds)

    full_app.get("/track", {"type": "click", "item": "late"}, status=503)

    assert (settings.queue.stats().depth, settings.queue.stats().leased) == (0, LIMIT)
    assert len(held) == LIMIT


def test_refusals_whose_count_failed_to_reach_memcache_are_sent_with_the_next_read(
    full_app, settings, clock, memcache_rpc_faults
):
    full_app.get("/track", {"type": "click", "item": "late"}, status=503)
    clock.advance(settings.slot_seconds)
    memcache_rpc_faults.fail_next("Increment")
    full_app.get("/track", {"type": "click", "item": "later"}, status=503)  # sends 1: fails
    clock.advance(settings.slot_seconds)

    full_app.get("/track", {"type": "click", "item": "latest"}, status=503)  # sends 2

    assert memcache_rpc_faults.failed == ["Increment"]
    assert memcache.get(settings.intake.refused_key) == 2


def test_within_a_slot_the_backlog_read_stands_even_after_processing(full_app, run_tasks):
    run_tasks(full_app)

    full_app.get("/track", {"type": "click", "item": "late"}, status=503)


def test_intake_resumes_in_the_slot_after_processing_drains_the_queue(full_app, settings, clock, run_tasks):
    full_app.get("/track", {"type": "click", "item": "late"}, status=503)
    run_tasks(full_app)
    clock.advance(settings.slot_seconds)

    full_app.get("/track", {"type": "click", "item": "resumed"}, status=204)

    assert settings.queue.read_multi(1000) == [{"type": "click", "item": "resumed", "at": clock.now}]
    assert full_app.get("/stats", {"item": "waiting"}, status=200).json["view"] == LIMIT


def test_the_backlog_is_read_once_per_slot_with_one_memcache_call(app, settings, clock, memcache_rpc_faults):
    app.get("/track", {"type": "click", "item": "x"}, status=204)  # the queue exists
    clock.advance(settings.slot_seconds)

    first = memcache_calls(memcache_rpc_faults, lambda: app.get("/track", {"type": "click", "item": "x"}, status=204))
    second = memcache_calls(memcache_rpc_faults, lambda: app.get("/track", {"type": "click", "item": "x"}, status=204))

    assert first == ["Get", "BatchIncrement", "Set"]  # the backlog (Queue.stats), then the write
    assert second == ["BatchIncrement", "Set"]


def test_refusals_cost_no_memcache_call_and_reach_the_counter_with_the_next_read(
    full_app, settings, clock, memcache_rpc_faults
):
    def refuse():
        full_app.get("/track", {"type": "click", "item": "late"}, status=503)

    refuse()  # the slot's read
    refusals_in_slot = [memcache_calls(memcache_rpc_faults, refuse) for _ in range(3)]
    clock.advance(settings.slot_seconds)
    first_of_next_slot = memcache_calls(memcache_rpc_faults, refuse)

    assert refusals_in_slot == [[], [], []]
    assert first_of_next_slot == ["Get", "Increment"]  # the backlog, then the 4 refusals of the slot before


def test_a_failed_read_of_the_backlog_keeps_the_last_figure(app, settings, memcache_rpc_faults):
    memcache_rpc_faults.fail_next("Get")

    app.get("/track", {"type": "click", "item": "x"}, status=204)

    assert memcache_rpc_faults.failed == ["Get"]
    assert settings.queue.stats().written == 1


def test_max_queue_depth_has_a_default(testbed, monkeypatch):
    monkeypatch.delenv(MAX_QUEUE_DEPTH_ENV, raising=False)

    assert Settings().max_queue_depth == DEFAULT_MAX_QUEUE_DEPTH


def test_max_queue_depth_comes_from_the_environment(testbed, monkeypatch):
    monkeypatch.setenv(MAX_QUEUE_DEPTH_ENV, "2000")

    assert Settings().max_queue_depth == 2000


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        pytest.param("many", "'many' is not a whole number of events", id="not-a-number"),
        pytest.param("-1", "'-1' is not a whole number of events", id="negative"),
        pytest.param("", "'' is not a whole number of events", id="empty"),
        pytest.param("\u00b2", "'\u00b2' is not a whole number of events", id="superscript-digit"),
        pytest.param("499", "is 499; it must be at least 500", id="below-the-largest-batch"),
    ],
)
def test_bad_max_queue_depth_in_the_environment_stops_the_app_naming_it(testbed, monkeypatch, setting, message):
    monkeypatch.setenv(MAX_QUEUE_DEPTH_ENV, setting)

    with pytest.raises(ValueError, match=MAX_QUEUE_DEPTH_ENV) as raised:
        Settings()

    assert message in str(raised.value)


class HeldAfterReadingTheState(CacheWrapper):
    """Once ``armed``, holds the next ``get_multi`` of the queue's state, once it has its
    reply, until ``release`` is set: a read of the backlog that other requests overtake."""

    def __init__(self, inner, state_key: str) -> None:
        super().__init__(inner)
        self.state_key = state_key
        self.armed = False
        self.entered = threading.Event()
        self.release = threading.Event()

    def get_multi(self, keys):
        found = self.inner.get_multi(keys)
        if self.armed and self.state_key in keys and not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(THREAD_DEADLINE_SECONDS), "the test never released the read"
        return found


def test_events_admitted_while_the_backlog_is_read_count_on_top_of_it(testbed, make_app, clock):
    cache = HeldAfterReadingTheState(wrap_client(None), "cq:events:state")
    settings = Settings(queue=Queue("events", cache, shards=4, clock=clock), clock=clock, max_queue_depth=LIMIT)
    app = make_app(settings)
    app.post_json("/track", batch(1), status=202)  # the queue exists; the gate read it, in this slot
    cache.armed = True
    clock.advance(settings.slot_seconds)
    reading = InThread(lambda: webtest.TestApp(app.app).get("/track", {"type": "click", "item": "x"}, status=204))
    reading.start()
    assert cache.entered.wait(THREAD_DEADLINE_SECONDS), "the slot's read did not start"

    app.post_json("/track", batch(300), status=202)  # after the read's reply: not in it
    cache.release.set()
    assert reading.outcome().status_int == 204  # 1 read + 300 admitted since it began + 1
    app.post_json("/track", batch(199), status=503)

    assert settings.queue.stats().written == 302
