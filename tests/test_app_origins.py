"""The allowed-origins setting: browsers' events from pages of other origins are
refused with a clear 403; requests without an Origin (curl, servers) are not checked."""

from __future__ import annotations

import dataclasses
import json

import pytest

import main
from handlers.origins import ALLOWED_ORIGINS_ENV, AllowedOrigins

BEACON_BODY = json.dumps({"events": [{"type": "view", "item": "page"}]})


def queued_messages(settings) -> list:
    return settings.queue.read_multi(1000)


def beacon(app, origin: str | None, status: int):
    """What /t.js sends: text/plain JSON, with the page's Origin."""
    headers = {"Origin": origin} if origin is not None else {}
    return app.post("/track", BEACON_BODY, content_type="text/plain;charset=UTF-8", headers=headers, status=status)


@pytest.fixture
def app_allowing(make_app, app_settings):
    return lambda setting: make_app(dataclasses.replace(app_settings, allowed_origins=AllowedOrigins.parse(setting)))


@pytest.mark.parametrize(
    ("setting", "origin"),
    [
        pytest.param("", None, id="no-origin-header"),
        pytest.param("", "http://localhost", id="the-apps-own-origin"),
        pytest.param("https://blog.example", "https://blog.example", id="listed"),
        pytest.param("https://a.example, https://blog.example", "https://blog.example", id="listed-second"),
        pytest.param("https://Blog.Example/", "https://blog.example", id="listed-in-other-case"),
        pytest.param("http://127.0.0.1:8000", "http://127.0.0.1:8000", id="listed-with-a-port"),
        pytest.param("*", "https://anywhere.example", id="any"),
    ],
)
def test_events_from_an_allowed_page_are_queued(app_allowing, app_settings, setting, origin):
    beacon(app_allowing(setting), origin, status=202)

    assert len(queued_messages(app_settings)) == 1


@pytest.mark.parametrize(
    ("setting", "origin"),
    [
        pytest.param("", "https://elsewhere.example", id="none-listed"),
        pytest.param("https://blog.example", "https://evil.example", id="not-listed"),
        pytest.param("https://blog.example", "http://blog.example", id="other-scheme"),
        pytest.param("https://blog.example", "https://blog.example:8443", id="other-port"),
        pytest.param("https://blog.example", "null", id="opaque-origin"),
    ],
)
def test_events_from_another_page_are_refused_clearly(app_allowing, app_settings, queued_tasks, setting, origin):
    response = beacon(app_allowing(setting), origin, status=403)

    assert response.json["error"].startswith(f"pages of origin {origin!r} may not send events here")
    assert ALLOWED_ORIGINS_ENV in response.json["error"]
    assert queued_messages(app_settings) == []
    assert queued_tasks() == []


def test_pixel_from_another_page_answers_the_gif_and_records_nothing(app_allowing, app_settings):
    response = app_allowing("").get("/p.gif?type=view&item=x", headers={"Origin": "https://evil.example"})

    assert response.headers["Content-Type"] == "image/gif"
    assert queued_messages(app_settings) == []


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        pytest.param("", AllowedOrigins(), id="empty"),
        pytest.param(
            " https://a.example  http://b.example:8080 ",
            AllowedOrigins(frozenset({"https://a.example", "http://b.example:8080"})),
            id="spaces",
        ),
        pytest.param(
            "https://a.example,https://b.example",
            AllowedOrigins(frozenset({"https://a.example", "https://b.example"})),
            id="commas",
        ),
        pytest.param("https://a.example *", AllowedOrigins(any_origin=True), id="any"),
    ],
)
def test_setting_is_parsed(setting, expected):
    assert AllowedOrigins.parse(setting) == expected


@pytest.mark.parametrize(
    "entry",
    ["blog.example", "https://blog.example/path", "ftp://blog.example", "https://", "https://blog.example:port"],
)
def test_setting_with_something_that_is_not_an_origin_is_refused_at_start(testbed, monkeypatch, entry):
    monkeypatch.setenv(ALLOWED_ORIGINS_ENV, f"https://ok.example {entry}")

    with pytest.raises(ValueError, match=ALLOWED_ORIGINS_ENV) as refused:
        main.create_app()

    assert repr(entry.lower().rstrip("/")) in str(refused.value)
