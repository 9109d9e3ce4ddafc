"""The allowed-origins setting: browsers' events from pages of other origins are
refused with a clear 403, whether the browser names the page's origin (Origin), says
it is another site's (Sec-Fetch-Site) or names the page (Referer); requests with none
of these (curl, servers) are not checked; a link is followed from any site; the pixel
checks only Origin."""

from __future__ import annotations

import dataclasses
import json

import pytest

import main
from clicks.origins import ALLOWED_ORIGINS_ENV, AllowedOrigins

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


ALLOWED_PAGE = "https://blog.example"
IMAGE = {"Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "image"}
LINK = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "document"}
FRAME = {"Sec-Fetch-Mode": "navigate", "Sec-Fetch-Dest": "iframe"}
FROM_A_PAGE = [
    pytest.param({}, True, id="curl-or-a-server"),
    pytest.param({"Sec-Fetch-Site": "same-origin", **IMAGE}, True, id="the-apps-own-page"),
    pytest.param({"Sec-Fetch-Site": "none", **LINK}, True, id="typed-by-the-person"),
    pytest.param({"Sec-Fetch-Site": "cross-site", "Referer": f"{ALLOWED_PAGE}/post", **IMAGE}, True, id="allowed-page"),
    pytest.param(
        {"Sec-Fetch-Site": "same-site", "Referer": f"{ALLOWED_PAGE}:443/", **IMAGE}, True, id="allowed-same-site"
    ),
    pytest.param({"Referer": f"{ALLOWED_PAGE}/post"}, True, id="allowed-page-older-browser"),
    pytest.param({"Referer": "http://localhost/page"}, True, id="own-page-older-browser"),
    pytest.param({"Origin": ALLOWED_PAGE, "Sec-Fetch-Site": "cross-site"}, True, id="allowed-cors-fetch"),
    pytest.param({"Sec-Fetch-Site": "cross-site", **IMAGE}, False, id="another-site-naming-no-page"),
    pytest.param({"Sec-Fetch-Site": "same-site", **IMAGE}, False, id="same-site-naming-no-page"),
    pytest.param({"Sec-Fetch-Site": "cross-site", "Referer": "https://evil.example/", **IMAGE}, False, id="other-page"),
    pytest.param({"Sec-Fetch-Site": "cross-site", "Referer": "android-app://x/", **IMAGE}, False, id="not-a-web-page"),
    pytest.param({"Referer": "https://evil.example/"}, False, id="other-page-older-browser"),
    pytest.param(
        {"Sec-Fetch-Site": "cross-site", "Referer": "https://evil.example/", **LINK}, False, id="link-to-track"
    ),
    pytest.param({"Origin": "https://evil.example", "Sec-Fetch-Site": "same-origin"}, False, id="origin-comes-first"),
]


@pytest.mark.parametrize(("headers", "recorded"), FROM_A_PAGE)
def test_track_records_a_browser_request_only_from_an_allowed_page(app_allowing, app_settings, headers, recorded):
    response = app_allowing(ALLOWED_PAGE).get("/track?type=view&item=x", headers=headers, expect_errors=True)

    assert response.status_int == (204 if recorded else 403)
    assert len(queued_messages(app_settings)) == recorded


def test_refusal_of_a_page_naming_no_origin_says_why(app_allowing):
    response = app_allowing(ALLOWED_PAGE).get(
        "/track?type=view&item=x", headers={"Sec-Fetch-Site": "cross-site", **IMAGE}, status=403
    )

    assert response.json["error"].startswith(
        "pages of another site (Sec-Fetch-Site: 'cross-site') that name no origin may not send events here"
    )


@pytest.mark.parametrize(
    ("headers", "recorded"),
    [
        pytest.param({"Sec-Fetch-Site": "cross-site", "Referer": "https://mail.example/", **LINK}, True, id="followed"),
        pytest.param({"Sec-Fetch-Site": "cross-site", **LINK}, True, id="followed-naming-no-page"),
        pytest.param({"Referer": "https://mail.example/"}, True, id="followed-in-an-older-browser"),
        pytest.param({"Sec-Fetch-Site": "cross-site", "Referer": "https://evil.example/", **IMAGE}, False, id="image"),
        pytest.param({"Sec-Fetch-Site": "cross-site", **FRAME}, False, id="frame"),
        pytest.param({"Sec-Fetch-Site": "cross-site", "Origin": "https://evil.example"}, False, id="cors-fetch"),
    ],
)
def test_tracked_link_counts_when_followed_from_any_site_not_when_loaded_by_one(
    app_allowing, app_settings, headers, recorded
):
    app = app_allowing(ALLOWED_PAGE)
    signed = app.get("/links", {"item": "cta", "to": "https://example.com/"}).json["link"]
    link = signed.removeprefix("http://localhost")

    response = app.get(link, headers=headers, expect_errors=True)

    assert response.status_int == (302 if recorded else 403)
    assert len(queued_messages(app_settings)) == recorded


def test_pixel_in_a_page_of_another_site_counts(app_allowing, app_settings):
    """Mail clients show it within their own pages: the pixel checks only Origin."""
    app_allowing(ALLOWED_PAGE).get(
        "/p.gif?type=view&item=x", headers={"Sec-Fetch-Site": "cross-site", "Referer": "https://mail.example/", **IMAGE}
    )

    assert len(queued_messages(app_settings)) == 1


def test_any_origin_allows_pages_of_every_site(app_allowing, app_settings):
    app_allowing("*").get("/track?type=view&item=x", headers={"Sec-Fetch-Site": "cross-site", **IMAGE}, status=204)

    assert len(queued_messages(app_settings)) == 1


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
