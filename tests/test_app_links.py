"""Tracked links: /go redirects only where the app's key signed, counts the click;
any tampering answers 400 and records nothing. /links signs them, for admins."""

from __future__ import annotations

import dataclasses
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from google.appengine.ext import ndb

import main
from clicks.links import LINK_KEY_ENV, LinkKey, LinkSigner

TARGET = "https://example.com/pricing?plan=pro#top"


def queued_messages(settings) -> list:
    return settings.queue.read_multi(1000)


def signed_link(app, item: str = "cta", target: str = TARGET) -> str:
    """The link /links makes, as a path and query on this app."""
    link = app.get("/links", {"item": item, "to": target}, status=200).json["link"]
    parts = urlsplit(link)
    return f"{parts.path}?{parts.query}"


def link_params(link: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(link).query).items()}


def test_signer_answers_a_link_to_go_on_this_app(app):
    answer = app.get("/links", {"item": "cta", "to": TARGET}, status=200).json

    assert (answer["item"], answer["to"]) == ("cta", TARGET)
    assert answer["link"].startswith("http://localhost/go?")
    assert {name: value for name, value in link_params(answer["link"]).items() if name != "sig"} == {
        "item": "cta",
        "to": TARGET,
    }


def test_signed_link_redirects_to_its_url_and_counts_a_click(app, app_settings, clock):
    response = app.get(signed_link(app), status=302)

    assert response.headers["Location"] == TARGET
    assert response.headers["Cache-Control"] == "no-store"
    assert queued_messages(app_settings) == [{"type": "click", "item": "cta", "at": clock.now}]


def tampered(link: str, **changes: str | None) -> str:
    params = {**link_params(link), **changes}
    return "/go?" + urlencode({name: value for name, value in params.items() if value is not None})


TAMPERINGS = [
    pytest.param({"item": "other"}, id="other-item"),
    pytest.param({"item": "CTA"}, id="item-in-other-case"),
    pytest.param({"to": "https://evil.example/pricing?plan=pro#top"}, id="other-host"),
    pytest.param({"to": TARGET + "x"}, id="url-with-a-character-added"),
    pytest.param({"to": TARGET[:-1]}, id="url-with-a-character-removed"),
    pytest.param({"to": TARGET.replace("https", "http")}, id="other-scheme"),
    pytest.param({"sig": None}, id="no-signature"),
    pytest.param({"sig": ""}, id="empty-signature"),
    pytest.param({"sig": "A" * 43}, id="made-up-signature"),
    pytest.param({"sig": "SIGNATURE_SWAPPED_CASE"}, id="signature-in-other-case"),
    pytest.param({"sig": "SIGNATURE_CUT"}, id="signature-cut-short"),
    pytest.param({"sig": "SIGNATURE_PADDED"}, id="signature-with-padding"),
]


@pytest.mark.parametrize("changes", TAMPERINGS)
def test_tampered_link_is_refused_and_records_nothing(app, app_settings, queued_tasks, changes):
    link = signed_link(app)
    signature = link_params(link)["sig"]
    variants = {
        "SIGNATURE_SWAPPED_CASE": signature.swapcase(),
        "SIGNATURE_CUT": signature[:-1],
        "SIGNATURE_PADDED": signature + "=",
    }
    changes = {name: variants.get(value, value) for name, value in changes.items()}

    response = app.get(tampered(link, **changes), status=400)

    assert set(response.json) == {"error"}
    assert "Location" not in response.headers
    assert queued_messages(app_settings) == []
    assert queued_tasks() == []


def test_signature_of_another_link_is_refused(app, app_settings):
    other = link_params(signed_link(app, item="other", target="https://example.com/"))

    app.get(tampered(signed_link(app), sig=other["sig"]), status=400)

    assert queued_messages(app_settings) == []


@pytest.mark.parametrize(
    "target",
    [
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("data:text/html,<script>alert(1)</script>", id="data"),
        pytest.param("/relative/path", id="relative"),
        pytest.param("//evil.example/", id="scheme-relative"),
        pytest.param("https://", id="no-host"),
        pytest.param("https://example.com/a b", id="space"),
        pytest.param("https://example.com/\r\nSet-Cookie: x=1", id="header-injection"),
        pytest.param("https://exämple.com/", id="not-ascii"),
        pytest.param("https://[::1/", id="broken-ipv6-host"),
        pytest.param("https://example.com/" + "a" * 1100, id="over-1024-characters"),
    ],
)
def test_unsafe_url_is_neither_signed_nor_followed_even_if_signed(app, app_settings, target):
    app.get("/links", {"item": "cta", "to": target}, status=400)
    signature = app_settings.links.signature("cta", target)

    app.get("/go?" + urlencode({"item": "cta", "to": target, "sig": signature}), status=400)

    assert queued_messages(app_settings) == []


def test_link_key_is_made_once_and_kept_in_datastore(make_app, app_settings):
    link = signed_link(make_app(app_settings))
    another_process = make_app(dataclasses.replace(app_settings, links=LinkSigner()))

    another_process.get(link, status=302)

    [stored] = LinkKey.query().fetch()
    assert len(stored.key_bytes) == 32


def test_link_key_from_the_environment_is_used_instead(make_app, app_settings, monkeypatch):
    monkeypatch.setenv(LINK_KEY_ENV, "k" * 32)
    link = signed_link(make_app(dataclasses.replace(app_settings, links=LinkSigner.from_environment())))
    stored_keys = LinkKey.query().count()

    make_app(dataclasses.replace(app_settings, links=LinkSigner())).get(link, status=400)  # the stored key's app

    assert stored_keys == 0


@pytest.mark.parametrize("key", [pytest.param("", id="empty"), pytest.param("k" * 31, id="31-characters")])
def test_link_key_in_the_environment_too_short_stops_the_app_at_start(testbed, monkeypatch, key):
    monkeypatch.setenv(LINK_KEY_ENV, key)

    with pytest.raises(ValueError, match=f"^{LINK_KEY_ENV} holds {len(key)} characters; a link key needs at least 32"):
        main.create_app()


def test_link_followed_by_a_preview_scraper_redirects_and_counts_as_a_bot(app, app_settings, clock):
    response = app.get(signed_link(app), headers={"User-Agent": "Slackbot-LinkExpanding 1.0"}, status=302)

    assert response.headers["Location"] == TARGET
    assert queued_messages(app_settings) == [{"type": "click", "item": "cta", "at": clock.now, "bot": True}]


def test_prefetched_link_redirects_and_records_nothing(app, app_settings):
    app.get(signed_link(app), headers={"Sec-Purpose": "prefetch"}, status=302)

    assert queued_messages(app_settings) == []


def test_visitors_cannot_sign_links(make_app, app_settings):
    response = make_app(app_settings, admin=False).get("/links", {"item": "cta", "to": TARGET}, status=403)

    assert "admins" in response.json["error"]
    assert ndb.Key(LinkKey, "links").get() is None
