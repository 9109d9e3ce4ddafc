"""``/track``: record click and view events on the queue."""

from __future__ import annotations

from webob.multidict import MultiDict

from clicks.events import parse_event_batch, parse_event_params
from clicks.http_errors import InvalidRequestError, quote_prefix
from handlers.recording import RecordingHandler

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
JSON_TYPES = ("application/json", "text/plain")
"""JSON batches: ``text/plain`` is what ``navigator.sendBeacon`` sends a string
as, so a page's beacon is a CORS-simple request (no preflight)."""


class TrackHandler(RecordingHandler):
    """GET, or POST of a form or of nothing but the query string: one event, 204.

    POST of JSON ``{"events": [...]}`` (as application/json or text/plain): a batch, 202.
    """

    def get(self) -> None:
        self._record_one(self.query_params())

    def post(self) -> None:
        media_type = self.media_type()
        if media_type in FORM_TYPES or not self.request.body:
            self._record_one(self.params())  # the query string and the form
        elif media_type in JSON_TYPES:
            events = parse_event_batch(self.text_body())
            queued = self.record(events)
            self.write_json(202, {"queued": queued})
        else:
            raise InvalidRequestError(
                f"unsupported Content-Type {quote_prefix(media_type)}: send {FORM_TYPES[0]} or {JSON_TYPES[0]} "
                f"(or JSON as {JSON_TYPES[1]})"
            )

    def _record_one(self, params: MultiDict) -> None:
        self.record([parse_event_params(params)])
        self.write_no_content()
