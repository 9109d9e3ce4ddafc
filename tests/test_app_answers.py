"""How the app answers at the HTTP level, in-process: HEAD, media types, limits,
error texts, and errors webapp2 would answer in HTML."""

from __future__ import annotations

import json
import logging

import pytest
import webapp2
import webtest

from clicks.http_errors import QUOTED_PREFIX_CHARACTERS
from handlers.base import MAX_BODY_BYTES, JsonApplication, JsonHandler


def queued_messages(settings) -> list:
    """The queued messages, less the time each carries (test_app_track.py checks it)."""
    return [{k: v for k, v in message.items() if k != "at"} for message in settings.queue.read_multi(1000)]


@pytest.mark.parametrize(
    ("path", "headers"),
    [
        pytest.param("/stats", {}, id="stats"),
        pytest.param("/stats?item=a", {}, id="stats-of-an-item"),
        pytest.param("/track?type=click&item=a", {}, id="track"),
        pytest.param("/track?type=like&item=a", {}, id="track-bad-input"),
        pytest.param("/cron/process", {}, id="cron-forbidden"),
        pytest.param("/cron/process", {"X-Appengine-Cron": "true"}, id="cron"),
    ],
)
def test_head_answers_as_get_without_a_body(app, path, headers):
    get = app.get(path, headers=headers, expect_errors=True)

    head = app.head(path, headers=headers, expect_errors=True)

    assert (head.status_int, head.headers.get("Content-Type")) == (get.status_int, get.headers.get("Content-Type"))
    assert head.body == b""


def test_head_of_track_records_the_event_as_get_does(app, app_settings):
    app.head("/track?type=view&item=a", status=204)

    assert queued_messages(app_settings) == [{"type": "view", "item": "a"}]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/track?type=click&item=a", 204, id="no-content"),
        pytest.param("POST", "/track", 202, id="accepted"),
        pytest.param("GET", "/stats", 200, id="ok"),
        pytest.param("GET", "/track?type=like&item=a", 400, id="bad-request"),
    ],
)
def test_every_answer_says_nosniff(app, method, path, status):
    body = json.dumps({"events": [{"type": "view", "item": "a"}]}).encode() if method == "POST" else b""

    response = app.request(path, method=method, body=body, headers={"Content-Type": "application/json"}, status=status)

    assert response.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    "content_type",
    [
        "Application/JSON",
        "application/json; charset=utf-8",
        "APPLICATION/JSON; Charset=UTF-8",
        "application/json;charset=utf8",
    ],
)
def test_json_media_type_matches_any_case_and_charset_utf_8(app, app_settings, content_type):
    body = json.dumps({"events": [{"type": "click", "item": "a"}]}).encode()

    app.request("/track", method="POST", body=body, headers={"Content-Type": content_type}, status=202)

    assert queued_messages(app_settings) == [{"type": "click", "item": "a"}]


@pytest.mark.parametrize(
    "content_type",
    ["APPLICATION/X-WWW-FORM-URLENCODED", "application/x-www-form-urlencoded; charset=UTF-8"],
)
def test_form_media_type_matches_any_case_and_charset_utf_8(app, app_settings, content_type):
    app.request("/track", method="POST", body=b"type=view&item=a", headers={"Content-Type": content_type}, status=204)

    assert queued_messages(app_settings) == [{"type": "view", "item": "a"}]


def test_multipart_form_with_boundary_records_its_event(app, app_settings):
    body = (
        b'--b\r\nContent-Disposition: form-data; name="type"\r\n\r\nclick\r\n'
        b'--b\r\nContent-Disposition: form-data; name="item"\r\n\r\na\r\n--b--\r\n'
    )

    headers = {"Content-Type": "multipart/form-data; boundary=b"}

    app.request("/track", method="POST", body=body, headers=headers, status=204)

    assert queued_messages(app_settings) == [{"type": "click", "item": "a"}]


def test_body_of_exactly_the_limit_is_read(app, app_settings):
    document = json.dumps({"events": [{"type": "view", "item": "a"}]})
    body = (document + " " * (MAX_BODY_BYTES - len(document))).encode()

    app.post("/track", body, content_type="application/json", status=202)

    assert queued_messages(app_settings) == [{"type": "view", "item": "a"}]


def test_largest_valid_batch_fits_the_body_limit(app):
    events = [{"type": "click", "item": "\\u0041" * 128}] * 500
    body = json.dumps({"events": events}, indent=4).replace("\\\\", "\\").encode()

    response = app.post("/track", body, content_type="application/json", status=202)

    assert len(body) <= MAX_BODY_BYTES
    assert response.json == {"queued": 500}


def test_chunked_body_the_server_did_not_decode_answers_411(app, app_settings):
    headers = {"Transfer-Encoding": "chunked", "Content-Type": "application/json"}

    response = app.request("/track", method="POST", body=b"", headers=headers, status=411)

    assert "Content-Length" in response.json["error"]
    assert queued_messages(app_settings) == []


def test_missing_type_is_named_as_missing(app):
    response = app.get("/track?item=a", status=400)

    assert response.json == {"error": "type is missing: give one of click, view"}


def test_error_text_quotes_only_a_prefix_of_a_bad_value(app):
    response = app.get("/track", {"type": "<script>" + "x" * 1000, "item": "a"}, status=400)

    prefix = ("<script>" + "x" * 1000)[:QUOTED_PREFIX_CHARACTERS]
    assert response.json == {"error": f"type must be one of click, view; got {prefix!r}... (1008 characters)"}


# -- webapp2's own errors, through a small app of the same base ------------------


class AbortingHandler(JsonHandler):
    def get(self) -> None:
        self.abort(409)

    def post(self) -> None:
        self.redirect("/elsewhere", abort=True)

    def put(self) -> None:
        raise RuntimeError("a bug")


@pytest.fixture
def aborting_app():
    return webtest.TestApp(JsonApplication([webapp2.Route("/abort", AbortingHandler)]))


def test_abort_in_a_handler_answers_json_of_its_status(aborting_app):
    response = aborting_app.get("/abort", status=409)

    assert response.json == {"error": "Conflict"}


def test_redirect_raised_in_a_handler_is_answered_as_is(aborting_app):
    response = aborting_app.post("/abort", status=302)

    assert response.headers["Location"].endswith("/elsewhere")


def test_unexpected_error_answers_json_500_and_logs_its_traceback(aborting_app, caplog):
    with caplog.at_level(logging.ERROR, logger="handlers.base"):
        response = aborting_app.put("/abort", status=500)

    assert response.json == {"error": "internal error; the server log has the details"}
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    [record] = caplog.records
    assert "a bug" in str(record.exc_info[1])
