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
import threading
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import REPO_ROOT, free_port, wait_until
from tests.support.e2e import (
    EventPlan,
    HttpRequest,
    get_json,
    local_server,
    people_counts,
    send_concurrently,
    send_raw,
    track_get,
    wait_for_counts,
    wait_until_drained,
)
from clicks.intake import MAX_QUEUE_DEPTH_ENV
from clicks.links import LINK_KEY_ENV
from clicks.origins import ALLOWED_ORIGINS_ENV
from devserver.server import LOCAL_HOSTS_ENV, REQUEST_READ_SECONDS, THREADS
from devserver.services import HOLD_TASKS_ENV, STOP_DRAIN_ENV
from handlers.base import MAX_BODY_BYTES
from tests.support.raw_http import post_head

pytestmark = pytest.mark.processes

CLIENTS = 16


@dataclass
class MainServer:
    base_url: str
    process: subprocess.Popen
    log_path: Path


@pytest.fixture(scope="module")
def main_server_for_hosts(tmp_path_factory) -> Iterator[MainServer]:
    """One ``python main.py`` for the host name tests, naming my-app.test as a local host."""
    directory = tmp_path_factory.mktemp("hosts")
    log_path = directory / "server.log"
    with local_server(directory / "data", log_path, environment={LOCAL_HOSTS_ENV: "my-app.test"}) as (
        base_url,
        process,
    ):
        yield MainServer(base_url, process, log_path)
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


@pytest.mark.parametrize("path", ["/stats", "/dashboard", "/links?item=a&to=https%3A%2F%2Fexample.com%2F"])
@pytest.mark.parametrize("spoofed", [{}, {"X-Appengine-User-Is-Admin": "1", "X-Appengine-User-Email": "a@b.c"}])
def test_admin_pages_answer_only_loopback_host_names(main_server_for_hosts, path, spoofed):
    """A page of rebind.test, its name resolved to 127.0.0.1 (DNS rebinding), reads no admin page."""
    base_url = main_server_for_hosts.base_url
    port = base_url.rsplit(":", 1)[1]
    answers = {
        host: send_raw(base_url, "GET", path, {"Host": host, **spoofed}, None).status
        for host in (
            f"127.0.0.1:{port}",
            f"localhost:{port}",
            f"[::1]:{port}",
            f"my-app.test:{port}",
            f"rebind.test:{port}",
        )
    }

    assert answers == {
        f"127.0.0.1:{port}": 200,
        f"localhost:{port}": 200,
        f"[::1]:{port}": 200,
        f"my-app.test:{port}": 200,  # named in CLICKQUEUE_LOCAL_HOSTS
        f"rebind.test:{port}": 403,
    }


def test_refused_admin_page_says_which_host_names_it_answers(main_server_for_hosts):
    answer = send_raw(main_server_for_hosts.base_url, "GET", "/stats", {"Host": "rebind.test"}, None)

    assert (answer.status, answer.headers["Content-Type"]) == (403, "application/json")
    assert json.loads(answer.body) == {
        "error": "python main.py answers its admin pages only for host 127.0.0.1, localhost, [::1] or one named "
        "in CLICKQUEUE_LOCAL_HOSTS; this request is for 'rebind.test'"
    }


def test_events_are_recorded_whatever_the_host_name(main_server_for_hosts):
    answer = send_raw(main_server_for_hosts.base_url, "GET", "/track?type=view&item=a", {"Host": "rebind.test"}, None)

    assert answer.status == 204


def read_on_every_thread(base_url: str, path: str) -> list[dict]:
    """``path`` read four times per thread of the worker, by as many clients at once:
    the reads are spread over its threads."""
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        return list(pool.map(lambda _: get_json(base_url, path), range(THREADS * 4)))


def test_every_thread_reads_the_counts_made_since_it_last_read_them(tmp_path, server_log):
    """No request answers from what an earlier request on its thread read: ndb keeps a
    cache per request, and the start's own Datastore work (the link key) must not make
    every request on a thread share one."""
    with local_server(tmp_path / "data", server_log) as (base_url, _):
        send_raw(base_url, "GET", "/track?type=view&item=read-again", {}, None)
        wait_until_drained(base_url, timeout_seconds=60)
        before = read_on_every_thread(base_url, "/stats?item=read-again")
        send_raw(base_url, "GET", "/track?type=view&item=read-again", {}, None)
        wait_until_drained(base_url, timeout_seconds=60)
        after = read_on_every_thread(base_url, "/stats?item=read-again")

    assert Counter(answer["view"] for answer in before) == Counter({1: THREADS * 4})
    assert Counter(answer["view"] for answer in after) == Counter({2: THREADS * 4})


def test_link_signed_just_before_a_kill_redirects_after_restart(tmp_path, server_log):
    """The link key made on first use is saved before the first link is signed."""
    data_dir = tmp_path / "data"
    with local_server(data_dir, server_log) as (base_url, process):
        link = urllib.parse.urlsplit(get_json(base_url, "/links?item=a&to=https%3A%2F%2Fexample.com%2F")["link"])
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_SECONDS)

    with local_server(data_dir, server_log) as (base_url, _):
        followed = send_raw(base_url, "GET", f"{link.path}?{link.query}", {}, None)

    assert (followed.status, followed.headers["Location"]) == (302, "https://example.com/")


def test_head_over_http_answers_without_a_body(tmp_path, server_log):
    with local_server(tmp_path / "data", server_log) as (base_url, _):
        response = send_raw(base_url, "HEAD", "/stats", {}, None)

    assert (response.status, response.body, response.headers["Content-Type"]) == (200, b"", "application/json")


def run_main(port: str, tmp_path, environment: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **(environment or {}),
        "PORT": port,
        "CLICKQUEUE_DATA_DIR": str(tmp_path / "data"),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
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


@pytest.mark.parametrize(
    ("environment", "line"),
    [
        pytest.param(
            {LINK_KEY_ENV: ""},
            f"{LINK_KEY_ENV} holds 0 characters; a link key needs at least 32 (or leave it unset: the app then "
            "makes one and keeps it in Datastore)",
            id="empty-link-key",
        ),
        pytest.param(
            {ALLOWED_ORIGINS_ENV: "blog.example"},
            f"{ALLOWED_ORIGINS_ENV}: 'blog.example' is not an origin: write scheme://host[:port], such as "
            "https://www.example.com, or * for any",
            id="origin-without-scheme",
        ),
        pytest.param(
            {STOP_DRAIN_ENV: "31"},
            f"{STOP_DRAIN_ENV} must be a number of seconds from 0 to 30; got '31'",
            id="stop-drain-too-long",
        ),
        pytest.param(
            {HOLD_TASKS_ENV: "yes"},
            f"{HOLD_TASKS_ENV} must be 0 or 1; got 'yes'",
            id="hold-tasks-not-a-switch",
        ),
    ],
)
def test_bad_setting_is_named_in_one_line_and_exits_non_zero(tmp_path, environment, line):
    done = run_main(str(free_port()), tmp_path, environment)

    assert done.returncode != 0
    assert done.stderr.splitlines() == [line]


def test_first_run_logs_no_warning(tmp_path, server_log):
    with local_server(tmp_path / "fresh-data", server_log):
        pass

    log = server_log.read_text()
    assert "WARNING" not in log
    assert "Could not read" not in log


def test_startup_log_says_what_an_unclean_stop_loses(tmp_path, server_log):
    with local_server(tmp_path / "data", server_log):
        pass

    assert "kill -9 or a crash loses the events accepted since the last save, at most the last 5 s" in (
        server_log.read_text()
    )


SLOW_CLIENTS = 8  # one per gunicorn thread


def drip(connection: socket.socket, data: bytes, stop: threading.Event) -> None:
    """Send ``data`` a byte every 0.5 s until ``stop``, as a slow (or hostile) client does; quietly end when cut."""
    for byte in data:
        if stop.wait(0.5):
            return
        try:
            connection.sendall(bytes([byte]))
        except OSError:
            return


@pytest.mark.parametrize(
    ("sent_at_once", "dripped", "logged"),
    [
        pytest.param(
            b"",
            b"GET /stats HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"x" * 200,
            f"request took over {REQUEST_READ_SECONDS} s to arrive",
            id="headers",
        ),
        pytest.param(
            post_head("/track", "application/json", length=200),
            b"x" * 200,
            "/track: 408 the request body stopped arriving before its end",
            id="body",
        ),
    ],
)
def test_clients_sending_a_byte_at_a_time_do_not_stall_the_server(main_server_for_hosts, sent_at_once, dripped, logged):
    """Eight connections, one per thread, each sending its request a byte every half
    second (100 s in all): each is cut once its request has taken REQUEST_READ_SECONDS,
    and another client's request is answered meanwhile."""
    port = int(main_server_for_hosts.base_url.rsplit(":", 1)[1])
    lines_before = len(main_server_for_hosts.log_path.read_text().splitlines())

    def each_cut_logged() -> list[str] | None:
        lines = main_server_for_hosts.log_path.read_text().splitlines()[lines_before:]
        return lines if len(lines) >= SLOW_CLIENTS else None

    stop = threading.Event()
    connections = [socket.create_connection(("127.0.0.1", port)) for _ in range(SLOW_CLIENTS)]
    drips = [threading.Thread(target=drip, args=(connection, dripped, stop)) for connection in connections]
    try:
        for connection, thread in zip(connections, drips, strict=True):
            connection.sendall(sent_at_once)
            thread.start()
        answered = send_raw(
            main_server_for_hosts.base_url,
            "GET",
            "/track?type=view&item=patient",
            {},
            None,
            timeout_seconds=REQUEST_READ_SECONDS * 3,
        )
        new_lines = wait_until(each_cut_logged, REQUEST_READ_SECONDS * 2, message="each cut to be logged")
    finally:
        stop.set()
        for thread in drips:
            thread.join()
        for connection in connections:
            connection.close()

    assert answered.status == 204
    assert [line for line in new_lines if logged in line] == new_lines
    assert len(new_lines) == SLOW_CLIENTS, new_lines
