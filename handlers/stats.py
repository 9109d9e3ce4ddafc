"""``/stats`` (admins): counts from Datastore and the queue's own counters, now and over time."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from webob.multidict import MultiDict

from clicks import counters
from clicks.events import parse_item, single_param
from clicks.http_errors import InvalidRequestError, quote_prefix
from clicks.settings import Settings
from handlers.admin import AdminHandler

MAX_SERIES_BUCKETS = 1000
"""Most buckets one series answers: 41 days of hours, or 2.7 years of days."""

DEFAULT_SERIES_SECONDS = {"hour": 86400, "day": 30 * 86400}
"""The range a series covers when ``from`` is not given: 24 hours of hours, 30 days of days."""

SERIES_PARAMS = ("bucket", "from", "to")

EARLIEST_SECONDS = int(datetime(1, 1, 1, tzinfo=UTC).timestamp())
LATEST_SECONDS = int(datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())
"""The span of times a series may cover (POSIX seconds): Python's dates, in UTC. A
time given with an offset can fall outside it (0001-01-01T00:00+14:00 is in year 0)."""


def parse_time(value: str, name: str) -> int:
    """An ISO 8601 date or time as POSIX seconds; one without an offset is UTC."""
    try:
        parsed = datetime.fromisoformat(value)
        return math.floor((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())
    except (ValueError, OverflowError) as error:
        raise InvalidRequestError(
            f"{name} must be an ISO 8601 date or time, such as 2025-01-31 or 2025-01-31T13:00Z; "
            f"got {quote_prefix(value)}"
        ) from error


def format_time(posix_seconds: int) -> str:
    return datetime.fromtimestamp(posix_seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def overview(settings: Settings) -> dict[str, object]:
    """Totals, the top items, the queue's counters, the events intake refused while the
    queue was full (and the limit), and when the last commit happened (``at``, None
    before any) with how old its oldest event was then."""
    last_commit = counters.last_commit()
    return {
        "totals": counters.totals(),
        "items": counters.top_items(),
        "queue": settings.queue.stats().as_dict(),
        "intake": {"refused": settings.intake.refused(), "max_queue_depth": settings.max_queue_depth},
        "last_commit": {
            "at": format_time(last_commit["at"]) if last_commit["at"] is not None else None,
            "lag_seconds": last_commit["lag_seconds"],
        },
    }


class StatsHandler(AdminHandler):
    """Totals, the top items, queue stats and processing lag; with ``?item=``, one
    item's counts; with ``bucket``, ``from`` or ``to``, a series over time."""

    def get(self) -> None:
        params = self.query_params()
        requested_item = single_param(params, "item")
        item = parse_item(requested_item) if requested_item is not None else None
        if any(name in params for name in SERIES_PARAMS):
            self.write_json(200, self._series(params, item))
        elif item is not None:
            self.write_json(200, {"item": item, **counters.item_counts(item)})
        else:
            self.write_json(200, overview(self.settings))

    def _series(self, params: MultiDict, item: str | None) -> dict[str, object]:
        """Counts of ``item`` (None: all items) per hour or day (UTC) whose start is
        in ``[from rounded down to its bucket, to)``, empty buckets included."""
        bucket = single_param(params, "bucket") or "hour"
        if bucket not in counters.BUCKET_SECONDS:
            raise InvalidRequestError(f"bucket must be one of hour, day; got {quote_prefix(bucket)}")
        to_text, from_text = single_param(params, "to"), single_param(params, "from")
        seconds = counters.BUCKET_SECONDS[bucket]
        end = (
            parse_time(to_text, "to")
            if to_text is not None
            else counters.bucket_start(int(self.settings.clock()), bucket) + seconds  # the current bucket's end
        )
        start = parse_time(from_text, "from") if from_text is not None else end - DEFAULT_SERIES_SECONDS[bucket]
        start = counters.bucket_start(start, bucket)
        if start < EARLIEST_SECONDS or end > LATEST_SECONDS:
            raise InvalidRequestError("from and to must lie between years 1 and 9999 once read in UTC")
        buckets = -(-(end - start) // seconds)
        if buckets < 1:
            raise InvalidRequestError("from must be before to")
        if buckets > MAX_SERIES_BUCKETS:
            raise InvalidRequestError(
                f"from and to span {buckets} buckets of a {bucket}; the most a series holds is {MAX_SERIES_BUCKETS}"
            )
        series = counters.series(item, bucket, start, end)
        range_totals = {name: sum(point[name] for point in series) for name in counters.COUNTS}
        return {
            "item": item,
            "bucket": bucket,
            "from": format_time(start),
            "to": format_time(end),
            "totals": counters.as_dict(**range_totals),
            "series": [{**point, "start": format_time(point["start"])} for point in series],
        }
