"""Requests a client can send that the API must refuse with a JSON 4xx, recording nothing.

One table, run in-process (WebTest) and over real HTTP against ``python main.py``
by tests/test_hostile_input.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import pytest

from handlers.base import MAX_BODY_BYTES, MAX_URL_BYTES

FORM = "application/x-www-form-urlencoded"
JSON = "application/json"


@dataclass(frozen=True)
class HostileRequest:
    method: str
    path: str
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    allow: str | None = None
    """The ``Allow`` header a 405 must carry."""


def json_events(*events: object) -> bytes:
    return json.dumps({"events": list(events)}).encode()


def nested_json(depth: int) -> bytes:
    return b'{"events": ' + b"[" * depth + b"]" * depth + b"}"


def multipart(boundary: str, fields: dict[str, str]) -> bytes:
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    ]
    return ("".join(parts) + f"--{boundary}--\r\n").encode()


def post(path: str, content_type: str, body: bytes, status: int = 400) -> HostileRequest:
    return HostileRequest("POST", path, status, {"Content-Type": content_type}, body)


LONG_TYPE = "x" * 500_000
CLICK = {"type": "click", "item": "x"}
LATIN_1_JSON = '{"events": [{"type": "click", "item": "é"}]}'.encode("latin-1")
NUMBER_OF_5000_DIGITS = b'{"events": [{"type": "click", "item": ' + b"9" * 5000 + b"}]}"

HOSTILE_REQUESTS = [
    # broken percent-encodings, charsets and bodies
    pytest.param(HostileRequest("GET", "/track?type=click&item=%FF", 400), id="item-not-utf-8"),
    pytest.param(HostileRequest("GET", "/track?type=%C3%28&item=x", 400), id="type-not-utf-8"),
    pytest.param(HostileRequest("GET", "/stats?item=%FF", 400), id="stats-item-not-utf-8"),
    pytest.param(HostileRequest("GET", "/track%FF?type=click&item=x", 400), id="path-not-utf-8"),
    pytest.param(HostileRequest("GET", "/track?type=click&item=%00", 400), id="item-nul"),
    pytest.param(post("/track", FORM, b"type=click&item=%FF"), id="form-item-not-utf-8"),
    pytest.param(post("/track", f"{FORM}; charset=bogus", b"type=click&item=x"), id="form-charset-bogus"),
    pytest.param(
        post("/track", f"{FORM}; charset=utf-16", "type=click&item=x".encode("utf-16")), id="form-charset-utf-16"
    ),
    pytest.param(post("/track", "multipart/form-data", b"type=click&item=x"), id="multipart-without-boundary"),
    pytest.param(
        post("/track", "multipart/form-data; boundary=", b"--\r\n\r\n--\r\n"), id="multipart-empty-boundary"
    ),
    pytest.param(
        post("/track", "multipart/form-data; boundary=b", b"--b\r\ngarbage\r\n--b--\r\n"), id="multipart-malformed"
    ),
    pytest.param(
        post("/track", "multipart/form-data; boundary=b", multipart("b", {"type": "like", "item": "x"})),
        id="multipart-unknown-type",
    ),
    pytest.param(post("/track", f"{JSON}; charset=utf-16", json_events(CLICK)), id="json-charset-utf-16"),
    pytest.param(post("/track", f"{JSON}; charset=bogus", json_events(CLICK)), id="json-charset-bogus"),
    pytest.param(post("/track", JSON, LATIN_1_JSON), id="json-not-utf-8"),
    *[
        pytest.param(post("/track", media_type, json_events(CLICK).decode().encode(encoding)), id=f"{kind}-{encoding}")
        for kind, media_type in (("json", JSON), ("beacon", "text/plain"))
        for encoding in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be")
    ],
    pytest.param(post("/track", JSON, nested_json(1000)), id="json-nested-1000-deep"),
    pytest.param(post("/track", JSON, nested_json(100_000)), id="json-nested-100000-deep"),
    pytest.param(post("/track", JSON, NUMBER_OF_5000_DIGITS), id="json-number-of-5000-digits"),
    pytest.param(post("/track", JSON, b'{"events": [{"type": "click", "item": "\\ud800"}]}'), id="json-lone-surrogate"),
    pytest.param(post("/track", JSON, b'{"events": [{"type": "click", "item": NaN}]}'), id="json-nan-item"),
    # huge values: the error quotes a short prefix only
    pytest.param(post("/track", JSON, json_events({"type": LONG_TYPE, "item": "x"})), id="json-type-of-500-kB"),
    pytest.param(post("/track", FORM, f"type={LONG_TYPE}&item=x".encode()), id="form-type-of-500-kB"),
    pytest.param(HostileRequest("GET", "/track?item=x&type=" + "x" * 2000, 400), id="query-type-of-2000-characters"),
    pytest.param(post("/track", "text/" + "x" * 6000, b"type=click&item=x"), id="content-type-of-6000-characters"),
    pytest.param(HostileRequest("GET", "/track?item=x", 400), id="missing-type"),
    pytest.param(post("/track", "text/html", b"<script>alert(1)</script>"), id="html-body"),
    # limits
    pytest.param(HostileRequest("GET", "/track?type=click&item=x&pad=" + "p" * MAX_URL_BYTES, 414), id="url-too-long"),
    pytest.param(post("/track", JSON, b" " * (MAX_BODY_BYTES + 1), status=413), id="body-over-the-limit"),
    # paths and methods
    pytest.param(HostileRequest("GET", "/nowhere", 404), id="unknown-path"),
    pytest.param(HostileRequest("HEAD", "/nowhere", 404), id="head-of-unknown-path"),
    pytest.param(HostileRequest("POST", "/<script>", 404), id="unknown-path-with-markup"),
    pytest.param(HostileRequest("PUT", "/track", 405, allow="GET, HEAD, POST"), id="put-track"),
    pytest.param(HostileRequest("PATCH", "/track", 405, allow="GET, HEAD, POST"), id="patch-track"),
    pytest.param(HostileRequest("OPTIONS", "/track", 405, allow="GET, HEAD, POST"), id="options-track"),
    pytest.param(HostileRequest("POST", "/stats", 405, allow="GET, HEAD"), id="post-stats"),
    pytest.param(HostileRequest("DELETE", "/stats", 405, allow="GET, HEAD"), id="delete-stats"),
    pytest.param(HostileRequest("GET", "/process", 405, allow="POST"), id="get-process"),
    pytest.param(HostileRequest("POST", "/cron/process", 405, allow="GET, HEAD"), id="post-cron"),
    pytest.param(HostileRequest("POST", "/process", 403), id="process-without-task-header"),
    # the tracker's own paths
    pytest.param(post("/track", "text/plain", b"{"), id="beacon-malformed-json"),
    pytest.param(
        HostileRequest("POST", "/track", 403, {"Content-Type": "text/plain", "Origin": "https://evil.example"}, json_events(CLICK)),
        id="beacon-from-another-origin",
    ),
    pytest.param(HostileRequest("GET", "/go", 400), id="go-without-parameters"),
    pytest.param(HostileRequest("GET", "/go?item=x&to=https%3A%2F%2Fexample.com%2F&sig=%FF", 400), id="go-sig-not-utf-8"),
    pytest.param(HostileRequest("GET", "/go?item=x&to=javascript%3Aalert(1)&sig=x", 400), id="go-to-javascript"),
    pytest.param(HostileRequest("POST", "/go", 405, allow="GET, HEAD"), id="post-go"),
    pytest.param(HostileRequest("POST", "/p.gif", 405, allow="GET, HEAD"), id="post-pixel"),
    pytest.param(HostileRequest("PUT", "/t.js", 405, allow="GET, HEAD"), id="put-snippet"),
    pytest.param(HostileRequest("GET", "/static/%FF", 400), id="static-path-not-utf-8"),
    pytest.param(HostileRequest("GET", "/static/../main.py", 404), id="static-outside-its-folder"),
    pytest.param(HostileRequest("GET", "/stats?bucket=hour&from=%FF", 400), id="stats-from-not-utf-8"),
    pytest.param(HostileRequest("GET", "/stats?bucket=year", 400), id="stats-unknown-bucket"),
    pytest.param(HostileRequest("POST", "/links", 405, allow="GET, HEAD"), id="post-links"),
    pytest.param(HostileRequest("GET", "/links?item=x&to=ftp%3A%2F%2Fexample.com%2F", 400), id="links-ftp-url"),
]
