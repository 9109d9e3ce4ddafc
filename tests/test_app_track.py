"""/track: one event by GET or form POST, a JSON batch by POST; bad input records nothing."""

from __future__ import annotations

import json

import pytest

LONGEST_ITEM = "i" * 128


def queued_messages(settings) -> list:
    """The queued messages, less the time each carries (test_app_track.py checks it)."""
    return [{k: v for k, v in message.items() if k != "at"} for message in settings.queue.read_multi(1000)]


def test_get_records_one_event(app, app_settings):
    response = app.get("/track", {"type": "click", "item": "article:42"}, status=204)

    assert response.body == b""
    assert queued_messages(app_settings) == [{"type": "click", "item": "article:42"}]


def test_form_post_records_one_event(app, app_settings):
    app.post("/track", {"type": "view", "item": "a.b_c-d"}, status=204)

    assert queued_messages(app_settings) == [{"type": "view", "item": "a.b_c-d"}]


def test_post_without_body_records_the_event_of_its_query_string(app, app_settings):
    app.post("/track?type=click&item=x", status=204)

    assert queued_messages(app_settings) == [{"type": "click", "item": "x"}]


def test_item_of_128_characters_is_accepted(app, app_settings):
    app.get("/track", {"type": "view", "item": LONGEST_ITEM}, status=204)

    assert queued_messages(app_settings) == [{"type": "view", "item": LONGEST_ITEM}]


def test_json_post_queues_the_whole_batch(app, app_settings):
    events = [{"type": "click", "item": "x"}, {"type": "view", "item": "y"}, {"type": "view", "item": "x"}]

    response = app.post_json("/track", {"events": events}, status=202)

    assert response.json == {"queued": 3}
    assert queued_messages(app_settings) == events


def test_json_batch_of_500_events_is_accepted(app, app_settings):
    events = [{"type": "view", "item": f"item-{n}"} for n in range(500)]

    response = app.post_json("/track", {"events": events}, status=202)

    assert response.json == {"queued": 500}
    assert queued_messages(app_settings) == events


def test_json_batch_sent_as_text_plain_is_queued(app, app_settings):
    """What navigator.sendBeacon sends a string as: a CORS-simple request."""
    events = [{"type": "view", "item": "page"}, {"type": "click", "item": "button"}]

    response = app.post(
        "/track", json.dumps({"events": events}), content_type="text/plain;charset=UTF-8", status=202
    )

    assert response.json == {"queued": 2}
    assert queued_messages(app_settings) == events


def test_events_carry_the_time_the_app_accepted_them(app, app_settings, clock):
    app.get("/track", {"type": "click", "item": "x"}, status=204)
    clock.advance(90)
    app.post_json("/track", {"events": [{"type": "view", "item": "x"}]}, status=202)

    assert sorted(message["at"] for message in app_settings.queue.read_multi(10)) == [clock.now - 90, clock.now]


def test_time_given_by_a_client_is_ignored(app, app_settings, clock):
    app.post_json("/track", {"events": [{"type": "view", "item": "x", "at": 5, "bot": True}]}, status=202)

    assert app_settings.queue.read_multi(10) == [{"type": "view", "item": "x", "at": clock.now}]


def test_json_content_type_with_charset_is_accepted(app):
    body = json.dumps({"events": [{"type": "click", "item": "x"}]})

    app.post("/track", body, content_type="application/json; charset=utf-8", status=202)


def test_json_in_utf_8_with_a_byte_order_mark_is_accepted(app, app_settings):
    """RFC 8259 lets a parser ignore the mark; UTF-16 and UTF-32 are refused (tests/hostile_requests.py)."""
    body = "\ufeff" + json.dumps({"events": [{"type": "click", "item": "x"}]})

    app.post("/track", body.encode("utf-8"), content_type="application/json", status=202)

    assert [message["item"] for message in queued_messages(app_settings)] == ["x"]


BAD_QUERIES = [
    pytest.param({"item": "x"}, id="missing-type"),
    pytest.param({"type": "like", "item": "x"}, id="unknown-type"),
    pytest.param({"type": "Click", "item": "x"}, id="type-is-case-sensitive"),
    pytest.param({"type": "click"}, id="missing-item"),
    pytest.param({"type": "click", "item": ""}, id="empty-item"),
    pytest.param({"type": "click", "item": "i" * 129}, id="item-of-129-characters"),
    pytest.param({"type": "click", "item": "a b"}, id="item-with-space"),
    pytest.param({"type": "click", "item": "a/b"}, id="item-with-slash"),
    pytest.param({"type": "click", "item": "é"}, id="item-not-ascii"),
    pytest.param({"type": "click", "item": "x\n"}, id="item-with-trailing-newline"),
    pytest.param([("type", "click"), ("type", "view"), ("item", "x")], id="type-given-twice"),
    pytest.param([("type", "click"), ("item", "x"), ("item", "y")], id="item-given-twice"),
]


@pytest.mark.parametrize("params", BAD_QUERIES)
def test_bad_get_is_refused_and_records_nothing(app, app_settings, queued_tasks, params):
    response = app.get("/track", params, status=400)

    assert set(response.json) == {"error"}
    assert queued_messages(app_settings) == []
    assert queued_tasks() == []


def test_field_in_both_query_string_and_form_is_refused(app, app_settings):
    app.post("/track?type=click", {"type": "view", "item": "x"}, status=400)

    assert queued_messages(app_settings) == []


@pytest.mark.parametrize("params", BAD_QUERIES)
def test_bad_form_post_is_refused_and_records_nothing(app, app_settings, queued_tasks, params):
    response = app.post("/track", params, status=400)

    assert set(response.json) == {"error"}
    assert queued_messages(app_settings) == []
    assert queued_tasks() == []


def events_body(events) -> bytes:
    return json.dumps({"events": events}).encode()


BAD_JSON_BODIES = [
    pytest.param(b"{", id="malformed-json"),
    pytest.param(b"", id="empty-body"),
    pytest.param(b'{"events": [{"type": "click", "item": "\xff"}]}', id="not-utf-8"),
    pytest.param(b"[]", id="not-an-object"),
    pytest.param(b'{"event": []}', id="no-events-key"),
    pytest.param(b'{"events": {"type": "click", "item": "x"}}', id="events-not-a-list"),
    pytest.param(events_body([]), id="no-events"),
    pytest.param(events_body([{"type": "view", "item": "x"}] * 501), id="501-events"),
    pytest.param(events_body(["click x"]), id="event-not-an-object"),
    pytest.param(events_body([{"type": "view", "item": "ok"}, {"type": "buy", "item": "x"}]), id="unknown-type"),
    pytest.param(events_body([{"type": "view", "item": "ok"}, {"item": "x"}]), id="missing-type"),
    pytest.param(events_body([{"type": "view", "item": "ok"}, {"type": "view"}]), id="missing-item"),
    pytest.param(events_body([{"type": "view", "item": "ok"}, {"type": "view", "item": 7}]), id="item-not-a-string"),
    pytest.param(
        events_body([{"type": "view", "item": "ok"}, {"type": "view", "item": "i" * 129}]), id="item-too-long"
    ),
]


@pytest.mark.parametrize("body", BAD_JSON_BODIES)
def test_bad_json_batch_is_refused_whole_and_records_nothing(app, app_settings, queued_tasks, body):
    response = app.post("/track", body, content_type="application/json", status=400)

    assert set(response.json) == {"error"}
    assert queued_messages(app_settings) == []
    assert queued_tasks() == []


def test_invalid_event_is_named_by_its_index(app):
    body = events_body([{"type": "view", "item": "ok"}, {"type": "buy", "item": "x"}])

    response = app.post("/track", body, content_type="application/json", status=400)

    assert response.json["error"].startswith("events[1]:")


@pytest.mark.parametrize(
    "content_type",
    ["text/html", "application/xml", "application/octet-stream", ""],
)
def test_post_of_other_content_type_is_refused(app, app_settings, content_type):
    response = app.post("/track", b"type=click&item=x", content_type=content_type, status=400)

    assert "Content-Type" in response.json["error"]
    assert queued_messages(app_settings) == []


@pytest.mark.parametrize("method", ["put", "delete"])
def test_other_methods_are_not_allowed(app, method):
    getattr(app, method)("/track", status=405)


def test_requests_of_one_slot_share_one_task(app, clock, queued_tasks):
    for n in range(5):
        app.get("/track", {"type": "click", "item": f"item-{n}"}, status=204)
        clock.advance(0.1)
    app.post_json("/track", {"events": [{"type": "view", "item": "x"}]}, status=202)

    assert [task.name for task in queued_tasks()] == [f"process-events-{int(clock.now)}"]


def test_each_slot_gets_its_own_task(app, clock, queued_tasks):
    first_slot = int(clock.now)
    app.get("/track", {"type": "click", "item": "x"}, status=204)
    clock.advance(1)
    app.get("/track", {"type": "click", "item": "x"}, status=204)

    assert sorted(task.name for task in queued_tasks()) == [
        f"process-events-{first_slot}",
        f"process-events-{first_slot + 1}",
    ]


def test_slot_task_is_due_when_its_slot_ends(app, clock, queued_tasks):
    slot_end = clock.now + 1
    clock.advance(0.25)

    app.get("/track", {"type": "click", "item": "x"}, status=204)

    [task] = queued_tasks()
    assert (task.url, task.eta_posix) == ("/process", slot_end)


def test_event_after_its_slot_task_ran_is_still_recorded(app, app_settings, run_tasks):
    app.get("/track", {"type": "click", "item": "x"}, status=204)
    run_tasks(app)  # the slot's task runs and leaves a tombstone behind

    app.get("/track", {"type": "view", "item": "x"}, status=204)

    assert queued_messages(app_settings) == [{"type": "view", "item": "x"}]
