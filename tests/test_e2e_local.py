"""End to end: ``python main.py`` (gunicorn on the SDK's stubs) on real HTTP counts
exactly, drains accepted events into Datastore when stopped, keeps its counts across
a restart, and behaves like a server: idle connections, chunked bodies, a busy port."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REPO_ROOT, free_port, wait_until
from e2e_support import (
    EventPlan,
    HttpRequest,
    get_json,
    local_server,
    people_counts,
    send_concurrently,
    send_raw,
    track_get,
    wait_for_counts,
)
from handlers.base import MAX_BODY_BYTES
from handlers.intake import MAX_QUEUE_DEPTH_ENV

CLIENTS = 16
STOP_TIMEOUT_SECONDS = 60


def stopped(process: subprocess.Popen) -> int:
    """Wait (with a deadline) for the server to exit; its exit status."""
    wait_until(lambda: process.poll() is not None, STOP_TIMEOUT_SECONDS, message="the server to exit")
    return process.returncode


def test_local_server_counts_concurrent_events_exactly(tmp_path, server_log):
    plan = EventPlan.random(1200, item_count=60, seed=3)
    requests = plan.requests()

    with local_server(tmp_path / "data", server_log) as (base_url, _):
        statuses = send_concurrently(base_url, requests, CLIENTS)
        stats = wait_for_counts(base_url, plan, timeout_seconds=120)

    print(f"sent {len(plan.events)} events in {len(requests)} requests: {dict(statuses)}")
    print(f"/stats: totals {stats['totals']}, queue {stats['queue']}")
    assert statuses == Counter(202 if r.content_type == "application/json" else 204 for r in requests)
    assert (stats["queue"]["depth"], stats["queue"]["lost"]) == (0, 0)


GROUP_COMMIT_CLIENTS = 64


def test_local_server_counts_every_204_of_many_concurrent_single_event_clients(tmp_path, server_log):
    """Group commit under gunicorn's threads: single events from 64 clients at once share
    the worker's writes (tests/test_app_group_commit.py shows the sharing and the 503s);
    each answered 204 is counted, exactly once."""
    plan = EventPlan.random(3000, item_count=60, seed=11)
    requests = [track_get(event_type, item) for event_type, item in plan.events]

    with local_server(tmp_path / "data", server_log) as (base_url, _):
        statuses = send_concurrently(base_url, requests, GROUP_COMMIT_CLIENTS)
        stats = wait_for_counts(base_url, plan, timeout_seconds=120)

    print(f"sent {len(requests)} single events from {GROUP_COMMIT_CLIENTS} clients: {dict(statuses)}")
    print(f"/stats: totals {stats['totals']}, queue {stats['queue']}")
    assert statuses == Counter({204: len(requests)})
    assert (stats["queue"]["depth"], stats["queue"]["lost"]) == (0, 0)


def test_local_server_keeps_counts_across_a_sigterm_restart(tmp_path, server_log):
    plan = EventPlan.random(100, item_count=10, seed=5)
    data_dir = tmp_path / "data"
    with local_server(data_dir, server_log) as (base_url, first):
        send_concurrently(base_url, plan.requests(), CLIENTS)
        wait_for_counts(base_url, plan, timeout_seconds=60)

    with local_server(data_dir, server_log) as (base_url, second):
        restarted = get_json(base_url, "/stats")

    assert (first.returncode, second.returncode) == (0, 0), "a server did not stop cleanly on SIGTERM"
    assert people_counts(restarted) == (plan.expected_totals(), plan.expected_items())


def single_events_and_a_batch(count: int) -> tuple[list[HttpRequest], dict[str, int]]:
    """``count`` single-event GETs and one JSON batch of ``count`` events; the totals they make."""
    singles = [HttpRequest("GET", f"/track?type=click&item=single-{n % 7}") for n in range(count)]
    events = [{"type": "view", "item": f"batched-{n % 11}"} for n in range(count)]
    batch = HttpRequest("POST", "/track", json.dumps({"events": events}).encode(), "application/json")
    return [*singles, batch], {"click": count, "view": count}


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param(lambda process: os.kill(process.pid, signal.SIGTERM), id="sigterm"),
        pytest.param(lambda process: os.killpg(process.pid, signal.SIGINT), id="ctrl-c"),
    ],
)
def test_events_accepted_just_before_a_stop_are_counted_after_restart(tmp_path, server_log, stop):
    requests, expected_totals = single_events_and_a_batch(150)
    data_dir = tmp_path / "data"
    with local_server(data_dir, server_log) as (base_url, first):
        statuses = send_concurrently(base_url, requests, CLIENTS)
        stop(first)
        first_status = stopped(first)

    with local_server(data_dir, server_log) as (base_url, _):
        restarted = get_json(base_url, "/stats")

    assert statuses == Counter({204: 150, 202: 1})
    assert first_status == 0
    assert people_counts(restarted)[0] == expected_totals


IDLE_OPENINGS = [
    pytest.param(b"", id="nothing-sent"),
    pytest.param(b"GET /stats HTTP/1.1\r\nHost: x\r\n", id="headers-unfinished"),
    pytest.param(b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n", id="kept-alive-after-a-request"),
]


FULL_QUEUE_BATCHES = 40


def test_local_server_refuses_batches_past_its_max_queue_depth_and_counts_every_one_it_accepted(
    tmp_path, server_log
):
    """CLICKQUEUE_MAX_QUEUE_DEPTH=500 (one batch): 8 clients post batches of 500 faster than
    one slot's processing, so some are refused (503, Retry-After); each accepted batch is
    counted, each refused one is in /stats's intake.refused, and nothing else; once the
    queue is drained, a batch is accepted again."""
    body = json.dumps({"events": [{"type": "view", "item": "full"}] * 500}).encode()

    def post(_number: int):
        return send_raw(base_url, "POST", "/track", {"Content-Type": "application/json"}, body)

    def stats_once_counted(batches: int):
        stats = get_json(base_url, "/stats")
        return stats if stats["totals"]["view"] == 500 * batches else None

    with local_server(tmp_path / "data", server_log, environment={MAX_QUEUE_DEPTH_ENV: "500"}) as (base_url, _):
        with ThreadPoolExecutor(max_workers=8) as pool:
            responses = list(pool.map(post, range(FULL_QUEUE_BATCHES)))
        accepted = sum(response.status == 202 for response in responses)
        stats = wait_until(lambda: stats_once_counted(accepted), 120, message=f"/stats to count {accepted} batches")
        wait_until(lambda: post(0).status == 202, 30, interval_seconds=0.2, message="intake to resume")

    refusals = [response for response in responses if response.status != 202]
    print(f"{accepted} batches accepted, {len(refusals)} refused; /stats: {stats['queue']}, {stats['intake']}")
    assert {(response.status, response.headers["Retry-After"]) for response in refusals} == {(503, "5")}
    assert stats["intake"] == {"refused": 500 * len(refusals), "max_queue_depth": 500}
    assert (stats["queue"]["written"], stats["queue"]["depth"], stats["queue"]["lost"]) == (500 * accepted, 0, 0)


@pytest.mark.parametrize("opening", IDLE_OPENINGS)
def test_idle_connection_does_not_keep_the_server_from_stopping(tmp_path, server_log, opening):
    with local_server(tmp_path / "data", server_log) as (base_url, process):
        port = int(base_url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port)) as idle:
            idle.sendall(opening)
            os.kill(process.pid, signal.SIGTERM)

            assert stopped(process) == 0  # while the idle connection is still open


def send_chunked(base_url: str, body_chunks: list[bytes]) -> tuple[int, bytes]:
    port = int(base_url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(
            "POST", "/track", body=iter(body_chunks), headers={"Content-Type": "application/json"}, encode_chunked=True
        )
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_chunked_json_batch_is_counted_exactly(tmp_path, server_log):
    plan = EventPlan.random(500, item_count=20, seed=8)
    body = json.dumps({"events": [{"type": t, "item": i} for t, i in plan.events]}).encode()
    chunks = [body[start : start + 1000] for start in range(0, len(body), 1000)]

    with local_server(tmp_path / "data", server_log) as (base_url, _):
        status, answer = send_chunked(base_url, chunks)
        stats = wait_for_counts(base_url, plan, timeout_seconds=60)

    assert (status, json.loads(answer)) == (202, {"queued": 500})
    assert stats["queue"]["written"] == 500


def test_chunked_body_over_the_limit_answers_413_and_records_nothing(tmp_path, server_log):
    chunks = [b" " * 65536] * (MAX_BODY_BYTES // 65536 + 1)

    with local_server(tmp_path / "data", server_log) as (base_url, _):
        status, answer = send_chunked(base_url, chunks)
        stats = get_json(base_url, "/stats")

    assert status == 413
    assert set(json.loads(answer)) == {"error"}
    assert stats["queue"]["written"] == 0


def test_admin_pages_are_open_locally_on_loopback_and_the_log_says_so(tmp_path, server_log):
    with local_server(tmp_path / "data", server_log) as (base_url, _):
        dashboard = send_raw(base_url, "GET", "/dashboard", {}, None)
        signed = send_raw(base_url, "GET", "/links?item=a&to=https%3A%2F%2Fexample.com%2F", {}, None)

    log = server_log.read_text()
    assert (dashboard.status, signed.status) == (200, 200)
    assert b"Signed in as admin@localhost" in dashboard.body
    assert f"admin pages are open locally: {base_url}/dashboard" in log
    assert f"Listening at: {base_url} " in log


def test_head_over_http_answers_without_a_body(tmp_path, server_log):
    with local_server(tmp_path / "data", server_log) as (base_url, _):
        response = send_raw(base_url, "HEAD", "/stats", {}, None)

    assert (response.status, response.body, response.headers["Content-Type"]) == (200, b"", "application/json")


def run_main(port: str, tmp_path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PORT": port, "CLICKQUEUE_DATA_DIR": str(tmp_path / "data"), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "main.py"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_busy_port_is_named_in_one_line_and_exits_non_zero(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        port = holder.getsockname()[1]

        done = run_main(str(port), tmp_path)

    assert done.returncode != 0
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"port {port} on 127.0.0.1 is in use: stop what listens there, or set PORT to another port"
    ]


@pytest.mark.parametrize("port", ["abc", "", "0", "65536", "-1", "80 80"])
def test_bad_port_is_named_in_one_line_and_exits_non_zero(tmp_path, port):
    done = run_main(port, tmp_path)

    assert done.returncode != 0
    assert done.stderr.splitlines() == [f"PORT must be a port number from 1 to 65535; got {port!r}"]


def test_first_run_logs_no_warning(tmp_path, server_log):
    with local_server(tmp_path / "fresh-data", server_log):
        pass

    log = server_log.read_text()
    assert "WARNING" not in log
    assert "Could not read" not in log


def test_startup_log_says_what_an_unclean_stop_loses(tmp_path, server_log):
    with local_server(tmp_path / "data", server_log):
        pass

    assert "kill -9 or a crash loses them" in server_log.read_text()
