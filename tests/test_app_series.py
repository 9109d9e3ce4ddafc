"""/stats?bucket=hour|day&from=&to=&item=: counts per UTC hour and day, empty
buckets included, with the click-through rate; bad ranges refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.support.counting import count_now, keyed
from clicks import counters
from clicks.events import Event

DAY = 86400
HOUR = 3600
MIDNIGHT = int(datetime(2025, 3, 1, tzinfo=UTC).timestamp())  # 2025-03-01T00:00:00Z


def at(day: int, hour: int, minute: int = 0) -> int:
    return MIDNIGHT + day * DAY + hour * HOUR + minute * 60


def point(start: str, click: int = 0, view: int = 0, bots: int = 0) -> dict[str, object]:
    return {"start": start, "click": click, "view": view, "bots": bots, "ctr": click / view if view else None}


@pytest.fixture
def counted(testbed):
    """Events on two items over two days, counted in one batch."""
    events = [
        Event("view", "a", at=at(0, 9, 0)),
        Event("view", "a", at=at(0, 9, 59)),
        Event("click", "a", at=at(0, 9, 30)),
        Event("view", "b", at=at(0, 10, 0)),
        Event("view", "a", at=at(0, 23, 59), bot=True),
        Event("view", "a", at=at(1, 0, 0)),
        Event("click", "b", at=at(1, 5, 0)),
    ]
    count_now("batch-1", keyed(events))


def test_hourly_series_of_an_item_counts_each_utc_hour(app, counted):
    response = app.get(
        "/stats", {"item": "a", "bucket": "hour", "from": "2025-03-01T08:00Z", "to": "2025-03-01T11:00Z"}
    )

    assert response.json == {
        "item": "a",
        "bucket": "hour",
        "from": "2025-03-01T08:00:00Z",
        "to": "2025-03-01T11:00:00Z",
        "totals": {"click": 1, "view": 2, "bots": 0, "ctr": 0.5},
        "series": [
            point("2025-03-01T08:00:00Z"),
            point("2025-03-01T09:00:00Z", click=1, view=2),
            point("2025-03-01T10:00:00Z"),
        ],
    }


def test_daily_series_of_all_items(app, counted):
    response = app.get("/stats", {"bucket": "day", "from": "2025-02-28", "to": "2025-03-03"})

    assert response.json["item"] is None
    assert response.json["series"] == [
        point("2025-02-28T00:00:00Z"),
        point("2025-03-01T00:00:00Z", click=1, view=3, bots=1),
        point("2025-03-02T00:00:00Z", click=1, view=1),
    ]


def test_bucket_boundaries_are_exact_to_the_second(app, counted):
    series = app.get(
        "/stats", {"item": "a", "bucket": "hour", "from": "2025-03-01T23:00Z", "to": "2025-03-02T01:00Z"}
    ).json["series"]

    assert series == [point("2025-03-01T23:00:00Z", bots=1), point("2025-03-02T00:00:00Z", view=1)]


def test_from_is_rounded_down_to_its_bucket_and_to_is_exclusive(app, counted):
    response = app.get(
        "/stats", {"item": "a", "bucket": "hour", "from": "2025-03-01T09:45Z", "to": "2025-03-01T10:00Z"}
    )

    assert (response.json["from"], response.json["to"]) == ("2025-03-01T09:00:00Z", "2025-03-01T10:00:00Z")
    assert response.json["series"] == [point("2025-03-01T09:00:00Z", click=1, view=2)]


def test_times_with_an_offset_are_read_in_utc(app, counted):
    response = app.get("/stats", {"item": "a", "from": "2025-03-01T10:00+01:00", "to": "2025-03-01T11:00+01:00"})

    assert response.json["series"] == [point("2025-03-01T09:00:00Z", click=1, view=2)]


def test_a_fraction_of_a_second_before_1970_falls_in_its_own_bucket(app):
    response = app.get("/stats", {"bucket": "hour", "from": "1969-12-31T23:59:59.5Z", "to": "1970-01-01T01:00Z"})

    assert response.json["from"] == "1969-12-31T23:00:00Z"


@pytest.mark.parametrize(
    ("bucket", "buckets"), [pytest.param("hour", 24, id="24-hours"), pytest.param("day", 30, id="30-days")]
)
def test_series_without_a_range_ends_with_the_current_bucket(make_app, app_settings, clock, bucket, buckets):
    clock.now = at(1, 5, 30)
    app = make_app(app_settings)
    seconds = counters.BUCKET_SECONDS[bucket]
    current = counters.bucket_start(at(1, 5, 30), bucket)
    count_now("batch-1", keyed([Event("view", "a", at=at(1, 5, 1))]))

    series = app.get("/stats", {"bucket": bucket}).json["series"]

    assert len(series) == buckets
    assert series[-1] == point(datetime.fromtimestamp(current, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), view=1)
    assert series[0]["start"] == datetime.fromtimestamp(current - (buckets - 1) * seconds, UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ"
    )


def test_series_of_an_item_never_seen_is_all_zero(app, counted):
    series = app.get("/stats", {"item": "zzz", "bucket": "day", "from": "2025-03-01", "to": "2025-03-03"}).json

    assert series["series"] == [point("2025-03-01T00:00:00Z"), point("2025-03-02T00:00:00Z")]


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"bucket": "week"}, id="unknown-bucket"),
        pytest.param({"bucket": "Hour"}, id="bucket-is-case-sensitive"),
        pytest.param({"from": "yesterday"}, id="from-not-a-time"),
        pytest.param({"to": "2025-13-01"}, id="to-not-a-date"),
        pytest.param({"from": "2025-03-02", "to": "2025-03-01"}, id="from-after-to"),
        pytest.param({"from": "2025-03-01T10:00Z", "to": "2025-03-01T10:00Z"}, id="empty-range"),
        pytest.param({"bucket": "hour", "from": "2025-01-01", "to": "2025-03-01"}, id="over-1000-hours"),
        pytest.param({"bucket": "day", "from": "2000-01-01", "to": "2025-01-01"}, id="over-1000-days"),
        pytest.param({"from": "0001-01-01T00:00+14:00"}, id="before-year-1-in-utc"),
        pytest.param({"from": "0001-01-01T00:00+14:00", "to": "0001-01-02"}, id="range-from-before-year-1-in-utc"),
        pytest.param({"bucket": "day", "to": "0001-01-02"}, id="default-from-before-year-1"),
        pytest.param({"from": "9999-12-31T00:00", "to": "9999-12-31T23:59-14:00"}, id="to-after-year-9999-in-utc"),
        pytest.param({"from": "9999-12-31T22:00Z", "to": "9999-12-31T23:59:59.999999-00:01"}, id="to-just-after-9999"),
        pytest.param([("bucket", "hour"), ("bucket", "day")], id="bucket-given-twice"),
        pytest.param({"bucket": "hour", "item": "a/b"}, id="bad-item"),
    ],
)
def test_bad_series_request_is_refused(app, params):
    response = app.get("/stats", params, status=400)

    assert set(response.json) == {"error"}
