"""The base of every handler: settings from the app config, JSON answers, errors as HTTP."""

from __future__ import annotations

import json
import logging

import webapp2

from clickqueue import MessageEncodingError, MessageTooLargeError, QueueError
from handlers.errors import ForbiddenError, RequestError
from handlers.settings import CONFIG_KEY, Settings

logger = logging.getLogger(__name__)

# The queue's own ValueErrors: the message (built from the request) was refused.
QUEUE_INPUT_ERRORS = (MessageEncodingError, MessageTooLargeError)


class JsonHandler(webapp2.RequestHandler):
    """Answers JSON; turns request and queue errors into their HTTP answers.

    400 for invalid input, 403 for a missing App Engine header, 503 when the
    queue (memcache) fails or a batch had to be given back; anything else is a
    bug and gets webapp2's 500 with the traceback logged.
    """

    @property
    def settings(self) -> Settings:
        return self.app.config[CONFIG_KEY]

    def write_json(self, status: int, body: dict[str, object]) -> None:
        self.response.status_int = status
        self.response.content_type = "application/json"
        self.response.text = json.dumps(body)

    def write_no_content(self) -> None:
        self.response.status_int = 204
        del self.response.content_type

    def require_header(self, name: str, value: str | None = None) -> None:
        """Refuse the request unless it has header ``name`` (equal to ``value`` if given).

        App Engine removes ``X-AppEngine-*`` headers from requests coming from
        outside, so their presence proves a task queue or cron request.
        """
        received = self.request.headers.get(name)
        if received is None or (value is not None and received != value):
            wanted = f"{name}: {value}" if value is not None else name
            raise ForbiddenError(f"only App Engine may call {self.request.path} (it sets header {wanted})")

    def handle_exception(self, exception: Exception, debug: bool) -> None:
        if isinstance(exception, RequestError):
            if exception.status >= 500:
                logger.error("%s: %s", self.request.path, exception, exc_info=exception)
            self.write_json(exception.status, exception.body())
        elif isinstance(exception, QUEUE_INPUT_ERRORS):
            self.write_json(400, {"error": str(exception)})
        elif isinstance(exception, QueueError):
            logger.error("%s: queue failed: %s", self.request.path, exception, exc_info=exception)
            self.write_json(503, {"error": f"queue unavailable: {exception}"})
        else:
            raise exception
