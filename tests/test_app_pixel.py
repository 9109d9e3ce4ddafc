"""/p.gif: a 1x1 transparent GIF, uncached, that records one event; on bad input
the same GIF, nothing recorded, and the reason logged."""

from __future__ import annotations

import io
import logging

import pytest
from PIL import Image

from handlers.pixel import TRANSPARENT_GIF


def queued_messages(settings) -> list:
    return settings.queue.read_multi(1000)


def assert_transparent_pixel(response) -> None:
    assert response.status_int == 200
    assert response.headers["Content-Type"] == "image/gif"
    assert response.headers["Cache-Control"] == "no-store"
    with Image.open(io.BytesIO(response.body)) as image:
        image.load()
        assert (image.format, image.size) == ("GIF", (1, 1))
        assert image.convert("RGBA").getpixel((0, 0))[3] == 0  # fully transparent


def test_pixel_records_one_view_and_answers_a_transparent_gif(app, app_settings, clock):
    response = app.get("/p.gif", {"type": "view", "item": "newsletter-42"})

    assert_transparent_pixel(response)
    assert queued_messages(app_settings) == [{"type": "view", "item": "newsletter-42", "at": clock.now}]


def test_each_request_of_the_pixel_is_counted(app, app_settings):
    for _ in range(3):
        app.get("/p.gif", {"type": "view", "item": "mail"})

    assert len(queued_messages(app_settings)) == 3


def test_pixel_body_is_the_43_byte_gif(app):
    assert app.get("/p.gif", {"type": "view", "item": "x"}).body == TRANSPARENT_GIF
    assert len(TRANSPARENT_GIF) == 43


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("", id="no-parameters"),
        pytest.param("type=view", id="missing-item"),
        pytest.param("item=x", id="missing-type"),
        pytest.param("type=open&item=x", id="unknown-type"),
        pytest.param("type=view&item=a%2Fb", id="bad-item"),
        pytest.param("type=view&item=%FF", id="item-not-utf-8"),
        pytest.param("type=view&item=x&item=y", id="item-given-twice"),
        pytest.param("type=view&item=" + "i" * 129, id="item-too-long"),
    ],
)
def test_bad_pixel_request_still_answers_the_gif_records_nothing_and_logs_why(
    app, app_settings, queued_tasks, caplog, query
):
    with caplog.at_level(logging.WARNING, logger="handlers.pixel"):
        response = app.get("/p.gif?" + query)

    assert_transparent_pixel(response)
    assert queued_messages(app_settings) == []
    assert queued_tasks() == []
    [record] = caplog.records
    assert record.getMessage().startswith("/p.gif recorded nothing: ")


def test_pixel_fetched_by_a_bot_answers_the_gif_and_counts_as_a_bot(app, app_settings, clock):
    response = app.get(
        "/p.gif", {"type": "view", "item": "x"}, headers={"User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1)"}
    )

    assert_transparent_pixel(response)
    assert queued_messages(app_settings) == [{"type": "view", "item": "x", "at": clock.now, "bot": True}]


def test_prefetched_pixel_answers_the_gif_and_records_nothing(app, app_settings):
    response = app.get("/p.gif", {"type": "view", "item": "x"}, headers={"Sec-Purpose": "prefetch"})

    assert_transparent_pixel(response)
    assert queued_messages(app_settings) == []
