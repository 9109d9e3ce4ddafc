"""``/track``: record click and view events on the queue."""

from __future__ import annotations

import logging

from google.appengine.api import taskqueue
from webob.multidict import MultiDict

from handlers.base import JsonHandler
from handlers.errors import InvalidRequestError, quote_prefix
from handlers.events import parse_event_batch, parse_event_params
from handlers.processing import schedule_processing

logger = logging.getLogger(__name__)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")
JSON_TYPE = "application/json"


class TrackHandler(JsonHandler):
    """GET, or POST of a form or of nothing but the query string: one event, 204.

    POST of JSON ``{"events": [...]}``: a batch, 202.
    """

    def get(self) -> None:
        self._record_one(self.query_params())

    def post(self) -> None:
        media_type = self.media_type()
        if media_type in FORM_TYPES or not self.request.body:
            self._record_one(self.params())  # the query string and the form
        elif media_type == JSON_TYPE:
            events = parse_event_batch(self.text_body())
            self.settings.queue.write_multi([event.to_message() for event in events])
            self._schedule_processing()
            self.write_json(202, {"queued": len(events)})
        else:
            raise InvalidRequestError(
                f"unsupported Content-Type {quote_prefix(media_type)}: send {FORM_TYPES[0]} or {JSON_TYPE}"
            )

    def _record_one(self, params: MultiDict) -> None:
        event = parse_event_params(params)
        self.settings.queue.write(event.to_message())
        self._schedule_processing()
        self.write_no_content()

    def _schedule_processing(self) -> None:
        # The events are stored: answering an error now would make the client
        # send them twice. The cron job schedules processing if this failed.
        try:
            schedule_processing(self.settings)
        except (taskqueue.TransientError, taskqueue.InternalError) as error:
            logger.warning("could not schedule processing (cron will): %r", error)
