"""Every hostile request of tests/support/hostile_requests.py answers a short JSON 4xx with
``nosniff`` and records nothing: in-process (WebTest) and over real HTTP against
``python main.py`` (gunicorn on the SDK's stubs), whose log shows no traceback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from tests.support.e2e import HttpResponse, get_json, local_server, send_raw
from tests.support.hostile_requests import HOSTILE_REQUESTS, HostileRequest

pytestmark = pytest.mark.processes

from tests.support.raw_http import exchange, post_head

LONGEST_ERROR_BYTES = 300


@dataclass
class MainServer:
    base_url: str
    log_path: Path


@pytest.fixture(scope="module")
def main_server(tmp_path_factory) -> Iterator[MainServer]:
    """One ``python main.py`` for the module's requests."""
    directory = tmp_path_factory.mktemp("hostile")
    log_path = directory / "server.log"
    with local_server(directory / "data", log_path) as (base_url, _):
        yield MainServer(base_url, log_path)


class InProcess:
    """The app called through WebTest; recorded events are read from the queue stub."""

    def __init__(self, app, settings, queued_tasks) -> None:
        self.app, self.settings, self.queued_tasks = app, settings, queued_tasks

    def send(self, case: HostileRequest) -> HttpResponse:
        response = self.app.request(
            case.path, method=case.method, headers=case.headers, body=case.body, expect_errors=True
        )
        return HttpResponse(response.status_int, response.body, response.headers)

    def recorded(self) -> int:
        return self.settings.queue.stats().written + len(self.queued_tasks())

    def log_problems(self) -> list[str]:
        return []


class OverHttp:
    """``python main.py`` over a real connection; recorded events are read from /stats."""

    def __init__(self, server: MainServer) -> None:
        self.server = server

    def send(self, case: HostileRequest) -> HttpResponse:
        return send_raw(self.server.base_url, case.method, case.path, case.headers, case.body or None)

    def recorded(self) -> int:
        stats = get_json(self.server.base_url, "/stats")
        return stats["queue"]["written"] + sum(stats["totals"][kind] for kind in ("click", "view", "bots"))

    def log_problems(self) -> list[str]:
        log = self.server.log_path.read_text(errors="replace")
        return [line for line in log.splitlines() if "Traceback" in line or " ERROR " in line]


@pytest.fixture(params=["in-process", "python-main.py"])
def transport(request):
    if request.param == "in-process":
        return InProcess(
            request.getfixturevalue("app"),
            request.getfixturevalue("app_settings"),
            request.getfixturevalue("queued_tasks"),
        )
    return OverHttp(request.getfixturevalue("main_server"))


@pytest.mark.parametrize("case", HOSTILE_REQUESTS)
def test_hostile_request_answers_json_4xx_and_records_nothing(transport, case):
    response = transport.send(case)

    assert response.status == case.status, response.body[:200]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    if case.method == "HEAD":
        assert response.body == b""
    else:
        assert response.headers["Content-Type"] == "application/json"
        assert set(json.loads(response.body)) == {"error"}
        assert len(response.body) <= LONGEST_ERROR_BYTES
    if case.allow is not None:
        assert response.headers["Allow"] == case.allow
    assert transport.recorded() == 0
    assert transport.log_problems() == []


JSON_HEAD = post_head("/track", "application/json")
BROKEN_BODIES = [
    pytest.param(JSON_HEAD + b"zz\r\nabc\r\n0\r\n\r\n", id="chunk-size-not-hex"),
    pytest.param(JSON_HEAD + b"ffffffffffffffff\r\nabc\r\n0\r\n\r\n", id="chunk-size-of-16-exabytes"),
    pytest.param(JSON_HEAD + b"5\r\n{\"eve", id="chunked-body-cut-short"),
    pytest.param(post_head("/track", "application/json", length=100) + b'{"events": [', id="json-short-of-its-length"),
    pytest.param(
        post_head("/track", "application/x-www-form-urlencoded", length=100) + b"type=click&item=a",
        id="form-short-of-its-length",
    ),
]


def port_of(server: MainServer) -> int:
    return int(server.base_url.rsplit(":", 1)[1])


@pytest.mark.parametrize("request_bytes", BROKEN_BODIES)
def test_body_that_cannot_be_read_answers_400_in_one_log_line(main_server, request_bytes):
    lines_before = len(main_server.log_path.read_text(errors="replace").splitlines())

    answer = exchange(port_of(main_server), request_bytes, half_close=True)

    new_lines = main_server.log_path.read_text(errors="replace").splitlines()[lines_before:]
    assert answer.status == 400, answer.body
    assert answer.json()["error"].startswith("the request body cannot be read: ")
    assert [line for line in new_lines if "/track: 400 the request body cannot be read" in line] == [new_lines[0]]
    assert len(new_lines) == 1, new_lines
    assert OverHttp(main_server).recorded() == 0
