"""``python main.py`` loses nothing it accepted at an orderly stop, and at a crash only
what came after its last save: the queue (memcache, in the worker) is saved with
Datastore every few seconds and at the stop, and put back at start. A request still
arriving when the stop drains is cut, never answered 2xx. A loss that can be known
is in the exit status and in /stats."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import webtest
from google.appengine.api import memcache
from gunicorn.config import Config
from gunicorn.glogging import Logger

from tests.support.processes import REPO_ROOT, free_port, wait_until
from tests.support.e2e import EventPlan, HttpRequest, get_json, local_server, send_concurrently, wait_for_counts
from clicks.settings import Settings
from devserver.gate import RequestGate
from devserver.queue_file import FILE_NAME, SavedQueue, copy_queue_entries
from devserver.server import FINISH_REQUESTS_SECONDS, STOP_SECONDS, _LocalWorker
from devserver.services import HOLD_TASKS_ENV, STOP_DRAIN_ENV, LocalServices
from tests.support.raw_http import post_head
from tests.support.threads import InThread

BATCH_EVENTS = 500
BACKLOG_EVENTS = 20_000
HOLD_TASKS = {HOLD_TASKS_ENV: "1"}
"""The first server of a test runs no task, so its saves and its stop find every event
still queued, however fast it counts."""
STOPPED_SECONDS = STOP_SECONDS + 10
JSON = "application/json"


def json_batches(plan: EventPlan) -> list[HttpRequest]:
    batches = [plan.events[start : start + BATCH_EVENTS] for start in range(0, len(plan.events), BATCH_EVENTS)]
    return [
        HttpRequest("POST", "/track", json.dumps({"events": [{"type": t, "item": i} for t, i in batch]}).encode(), JSON)
        for batch in batches
    ]


def saved_queue(data_dir: Path) -> SavedQueue | None:
    path = data_dir / FILE_NAME
    return SavedQueue.from_bytes(path.read_bytes()) if path.exists() else None


def not_yet_counted(saved: SavedQueue) -> int:
    return saved.stats["depth"] + saved.stats["leased"]


def stopped(process: subprocess.Popen) -> int:
    wait_until(lambda: process.poll() is not None, STOPPED_SECONDS, message="the server to exit")
    return process.returncode


def test_events_a_stop_did_not_count_are_saved_and_counted_after_restart(tmp_path, server_log):
    plan = EventPlan.random(BACKLOG_EVENTS, item_count=50, seed=21)
    data_dir = tmp_path / "data"
    with local_server(data_dir, server_log, environment={STOP_DRAIN_ENV: "0", **HOLD_TASKS}) as (base_url, first):
        statuses = send_concurrently(base_url, json_batches(plan), clients=4)
        first.send_signal(signal.SIGTERM)
        first_status = stopped(first)
    saved = saved_queue(data_dir)

    with local_server(data_dir, server_log) as (base_url, _):
        stats = wait_for_counts(base_url, plan, timeout_seconds=120)

    assert statuses == Counter({202: len(plan.events) // BATCH_EVENTS})
    assert (first_status, saved.stopped) == (0, True)
    assert not_yet_counted(saved) > 0, "the stop counted everything: nothing was left to save"
    assert {name: stats["queue"][name] for name in ("written", "lost", "depth", "leased")} == {
        "written": BACKLOG_EVENTS,
        "lost": 0,
        "depth": 0,
        "leased": 0,
    }


def test_a_crash_loses_nothing_accepted_before_the_last_save(tmp_path, server_log):
    plan = EventPlan.random(BACKLOG_EVENTS, item_count=50, seed=22)
    data_dir = tmp_path / "data"
    with local_server(data_dir, server_log, environment=HOLD_TASKS) as (base_url, first):
        send_concurrently(base_url, json_batches(plan), clients=4)
        saved = wait_until(
            lambda: (queue := saved_queue(data_dir)) is not None and queue.stats["written"] >= BACKLOG_EVENTS and queue,
            STOP_SECONDS,
            interval_seconds=0.01,
            message="a save holding every event",
        )
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=STOPPED_SECONDS)

    with local_server(data_dir, server_log) as (base_url, _):
        stats = wait_for_counts(base_url, plan, timeout_seconds=120)

    assert (saved.stopped, not_yet_counted(saved) > 0) == (False, True)
    assert (stats["queue"]["written"], stats["queue"]["lost"]) == (BACKLOG_EVENTS, 0)
    assert "the last run ended without an orderly stop" in server_log.read_text()


def test_a_stop_whose_save_fails_exits_non_zero_and_says_what_it_lost(tmp_path, server_log):
    data_dir = tmp_path / "data"
    with local_server(data_dir, server_log, environment={STOP_DRAIN_ENV: "0"}) as (base_url, first):
        (data_dir / (FILE_NAME + ".next")).mkdir()  # where the save writes: it cannot
        send_concurrently(base_url, [HttpRequest("GET", "/track?type=view&item=a")], clients=1)
        first.send_signal(signal.SIGTERM)
        first_status = stopped(first)

    log = server_log.read_text()
    assert first_status != 0
    assert "ERROR devserver.services: could not save to" in log
    assert "events not yet counted, and what was counted since the last save, are lost" in log


def test_a_request_still_arriving_when_the_stop_drains_is_cut_not_answered(tmp_path, server_log):
    """The slow body's last byte comes while the stop drains a backlog: it was answered
    202, and when it came after the drain its event was lost with memcache."""
    plan = EventPlan.random(BACKLOG_EVENTS, item_count=50, seed=23)
    data_dir = tmp_path / "data"
    body = json.dumps({"events": [{"type": "view", "item": "slow"}]}).encode()
    with local_server(data_dir, server_log, environment=HOLD_TASKS) as (base_url, first):
        port = int(base_url.rsplit(":", 1)[1])
        send_concurrently(base_url, json_batches(plan), clients=4)
        with socket.create_connection(("127.0.0.1", port), timeout=STOPPED_SECONDS) as slow:
            slow.sendall(post_head("/track", "application/json", length=len(body)) + body[:-1])
            first.send_signal(signal.SIGTERM)
            wait_until(
                lambda: "stopping: draining" in server_log.read_text(),
                FINISH_REQUESTS_SECONDS + STOPPED_SECONDS,
                message="the stop to drain",
            )
            try:
                slow.sendall(body[-1:])
                answer = slow.recv(65536)
            except OSError:  # reset: cut, not answered
                answer = b""
        first_status = stopped(first)
    assert not answer.startswith(b"HTTP/1.1 2"), answer

    with local_server(data_dir, server_log) as (base_url, _):
        wait_for_counts(base_url, plan, timeout_seconds=120)
        counted = get_json(base_url, "/stats?item=slow")

    assert (first_status, counted["view"]) == (0, 0)


def test_events_the_queue_lost_while_serving_fail_the_stop_and_stay_in_stats(tmp_path):
    """In process, on the server's own stubs: memcache evicts a frame of 3 events before they are counted."""
    services = LocalServices(free_port(), tmp_path, Settings())
    services.settings.queue.write_multi([{"type": "view", "item": "a"}] * 3)
    entries, _ = copy_queue_entries(services.memcache, services.settings.queue.keys.prefix)
    [frame] = [entry.key for entry in entries if ":m:" in entry.key]
    memcache.delete(frame)

    status = services.stop()
    restarted = LocalServices(free_port(), tmp_path, Settings())
    lost_after_restart = restarted.settings.queue.stats().lost
    restarted.bed.deactivate()

    assert (status, lost_after_restart) == (1, 3)


def test_a_queue_saved_with_another_datastore_stops_the_start(tmp_path, server_log):
    data_dir = tmp_path / "data"
    with local_server(data_dir, server_log) as (base_url, _):
        send_concurrently(base_url, [HttpRequest("GET", "/track?type=view&item=a")], clients=1)
    (data_dir / "datastore.db").unlink()  # the counts gone, their queue still there

    started = subprocess.run(
        [sys.executable, "main.py"],
        cwd=REPO_ROOT,
        env={**os.environ, "PORT": str(free_port()), "CLICKQUEUE_DATA_DIR": str(data_dir)},
        capture_output=True,
        text=True,
        timeout=STOPPED_SECONDS,
    )

    assert started.returncode != 0
    assert f"ERROR devserver.server: {data_dir / FILE_NAME} was saved with another datastore.db than the one beside it" in (
        started.stderr
    )


def test_a_request_reaching_the_app_after_the_stop_closed_it_is_answered_503():
    def recorded(environ, start_response):
        start_response("204 No Content", [])
        return []

    gate = RequestGate()
    app = webtest.TestApp(gate.wrap(recorded))
    app.get("/track", status=204)

    still_inside = gate.close(wait_seconds=1)
    refused = app.get("/track", status=503)

    assert still_inside == 0
    assert refused.json == {"error": "the server is stopping: nothing was recorded; send it again later"}
    assert refused.headers["X-Content-Type-Options"] == "nosniff"


class TaskRunnerBehindALock:
    """Services whose task runner stops only once ``lock`` is free, as the SDK's scheduler
    does (its event's condition)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.stopped = 0

    def stop_running_tasks(self) -> None:
        with self.lock:
            self.stopped += 1


def a_worker(services: TaskRunnerBehindALock) -> _LocalWorker:
    config = Config()
    worker = _LocalWorker(0, os.getpid(), [], SimpleNamespace(services=services), 30, config, Logger(config))
    worker.method_queue.init()
    return worker


def test_a_stop_signal_arriving_inside_the_task_runners_lock_does_not_hang_the_worker():
    """Ctrl-C reaches the worker twice; the second signal ran while the first one's handler
    held the scheduler's lock, and the worker hung until the master killed it."""
    services = TaskRunnerBehindALock()
    worker = a_worker(services)

    def signal_inside_the_lock() -> int:
        with services.lock:  # the first handler, inside the scheduler's lock
            worker.handle_exit(signal.SIGTERM, None)
            return services.stopped

    stopped_inside = InThread(signal_inside_the_lock)
    stopped_inside.start()

    assert (stopped_inside.outcome(), worker.alive) == (0, False)


def test_the_main_loop_stops_the_task_runner_once_a_stop_signal_came():
    services = TaskRunnerBehindALock()
    worker = a_worker(services)

    worker.handle_exit(signal.SIGINT, None)
    worker.handle_exit(signal.SIGTERM, None)
    worker.method_queue.run_callbacks(None)

    assert services.stopped == 1
