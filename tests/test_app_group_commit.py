"""Group commit in the app: the recording handlers (/track, /p.gif, /go) write
through the process's GroupCommit. Requests whose shared write fails answer 503
and none of their events is counted; every request answered 204 is counted.

In process, on the SDK's stubs, with WebTest from many threads; failures come
from a cache wrapper under the Settings' queue. ``test_e2e_local.py`` runs
concurrent clients against ``python main.py``.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import webtest
from tests.support.seams import CacheWrapper, GatedAddMulti, StoresOnlyTheFirst, existing_queue, start_held_write
from tests.support.threads import RecordingCondition, arrive_in_order, run_on_threads

from clickqueue import CacheUnavailableError, Queue, wrap_client
from clickqueue.codec import FRAME_MESSAGES
from clicks.settings import Settings
from tests.support.counting import run_folds

TASK_HEADERS = {"X-AppEngine-QueueName": "process"}
NOTHING_RECORDED = {"error": "the queue is unavailable: nothing was recorded; send the events again"}


def client_of(app: webtest.TestApp) -> webtest.TestApp:
    """A client of its own, for a thread of its own, of ``app``'s WSGI app (made once:
    ``wrap_wsgi_app`` may not run on two threads at once)."""
    return webtest.TestApp(app.app, extra_environ=app.extra_environ)


def requesting(app: webtest.TestApp, method: str, path: str, *args):
    """A request to ``app`` from a client of its own, for a thread of its own."""
    return lambda: getattr(client_of(app), method)(path, *args, expect_errors=True)


def counted(app, item: str) -> dict[str, int]:
    counts = app.get("/stats", {"item": item}, status=200).json
    return {"click": counts["click"], "view": counts["view"]}


def process_everything(app) -> int:
    """Run /process, then /fold, as the task queue would, until nothing remains; how many events it counted."""
    processed = 0
    while True:
        report = app.post("/process", headers=TASK_HEADERS, status=200).json
        processed += report["processed"]
        if not report["remaining"]:
            run_folds(app)
            return processed


def test_requests_sharing_a_failed_write_answer_503_and_none_of_their_events_is_counted(testbed, make_app, clock):
    gate = GatedAddMulti(existing_queue(wrap_client(None), "events"), failing=(1,))
    condition = RecordingCondition()
    settings = Settings(
        queue=Queue("events", gate, clock=clock),
        clock=clock,
        group_commit_wait_seconds=60,
        group_commit_condition=condition,
    )
    app = make_app(settings)
    link = settings.links.link("http://localhost", "failed-go", "https://example.com/")
    first = start_held_write(gate, requesting(app, "get", "/track?type=click&item=first"))

    in_flight = arrive_in_order(
        condition,
        [
            requesting(app, "get", "/track?type=click&item=failed-get"),
            requesting(app, "post", "/track", {"type": "view", "item": "failed-form"}),
            requesting(
                app,
                "post_json",
                "/track",
                {"events": [{"type": "view", "item": "failed-json"}, {"type": "click", "item": "failed-json"}]},
            ),
            requesting(app, "get", "/p.gif?type=view&item=failed-pixel"),
            requesting(app, "get", link.removeprefix("http://localhost")),
        ],
    )
    gate.release.set()

    assert first.outcome().status_int == 204
    answers = [thread.outcome() for thread in in_flight]
    assert [(answer.status_int, answer.json) for answer in answers] == [(503, NOTHING_RECORDED)] * 5
    assert gate.calls[1] == 6, "the five requests' six events shared the write that failed"
    app.get("/track?type=view&item=after", status=204)  # a request after the failed write
    assert process_everything(app) == 2
    assert counted(app, "first") == {"click": 1, "view": 0}
    assert counted(app, "after") == {"click": 0, "view": 1}
    for item in ("failed-get", "failed-form", "failed-json", "failed-pixel", "failed-go"):
        assert counted(app, item) == {"click": 0, "view": 0}, item


def test_a_write_that_stored_part_of_a_batch_answers_503_saying_so(testbed, make_app, clock):
    gate = StoresOnlyTheFirst(existing_queue(wrap_client(None), "events"))  # stores the first frame of its second write
    gate.release.set()
    app = make_app(Settings(queue=Queue("events", gate, clock=clock), clock=clock))
    app.get("/track?type=click&item=first", status=204)

    events = [{"type": "view", "item": f"batch-{n}"} for n in range(FRAME_MESSAGES + 2)]
    answer = app.post_json("/track", {"events": events}, status=503)

    assert answer.json == {
        "error": f"the queue failed mid-write: of {FRAME_MESSAGES + 2} events, {FRAME_MESSAGES} were recorded "
        "and 2 may have been; sending them again may count those twice"
    }


class FailsSomeWrites(CacheWrapper):
    """Fails every third ``add_multi`` (a memcache error) while ``failing`` is set."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.failing = True
        self.calls = 0
        self.failed = 0
        self.lock = threading.Lock()

    def add_multi(self, values, expire_seconds=0):
        with self.lock:
            self.calls += 1
            fail = self.failing and self.calls % 3 == 0
            self.failed += fail
        if fail:
            raise CacheUnavailableError(next(iter(values)), "add_multi")
        return self.inner.add_multi(values, expire_seconds)


CLIENTS, REQUESTS_PER_CLIENT = 16, 30


@pytest.mark.slow
def test_every_track_answered_204_is_counted_and_none_answered_503(testbed, make_app, clock):
    cache = FailsSomeWrites(existing_queue(wrap_client(None), "events"))
    app = make_app(Settings(queue=Queue("events", cache, clock=clock), clock=clock))
    answered: dict[str, int] = {}

    def client(number: int) -> None:
        own = client_of(app)
        for request in range(REQUESTS_PER_CLIENT):
            item = f"c{number}-r{request}"
            answered[item] = own.get("/track", {"type": "click", "item": item}, expect_errors=True).status_int

    run_on_threads(client, CLIENTS)
    cache.failing = False
    statuses = Counter(answered.values())
    print(f"answers {dict(statuses)}; {cache.calls} writes, {cache.failed} failed")

    assert len(answered) == CLIENTS * REQUESTS_PER_CLIENT
    assert process_everything(app) == statuses[204]
    assert set(statuses) == {204, 503} and cache.failed > 0, "some writes failed, some did not"
    assert {item: counted(app, item)["click"] for item in answered} == {
        item: int(status == 204) for item, status in answered.items()
    }
