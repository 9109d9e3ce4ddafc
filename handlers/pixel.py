"""``/p.gif``: a tracking pixel, for email and ``<noscript>``."""

from __future__ import annotations

import logging

from clicks.events import parse_event_params
from clicks.http_errors import InvalidRequestError, OriginNotAllowedError, QueueFullError
from clicks.origins import PageCheck
from handlers.recording import RecordingHandler

logger = logging.getLogger(__name__)

TRANSPARENT_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"  # 1x1, a 2-colour table
    b"!\xf9\x04\x01\x00\x00\x00\x00"  # colour 0 is transparent
    b",\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"  # one pixel of colour 0
)


class PixelHandler(RecordingHandler):
    """``GET /p.gif?type=view&item=ID``: records the event, answers a 1x1 transparent GIF.

    Bad input still gets the GIF, so no broken image shows where it is
    embedded; it records nothing, and the log says why. Mail clients show it within
    pages of any site, so only an ``Origin`` header (which ``<img>`` never sends) is checked.
    While the queue is full, the GIF comes with ``503`` and ``Retry-After``, and records nothing.
    """

    page_check = PageCheck.ORIGIN

    def get(self) -> None:
        try:
            self.record([parse_event_params(self.query_params())])
        except (InvalidRequestError, OriginNotAllowedError) as error:
            logger.warning("/p.gif recorded nothing: %s", error)
        except QueueFullError as error:  # logged once per slot by the gate
            self.response.status_int = error.status
            self.response.headers.update(error.headers)
        self.response.content_type = "image/gif"
        self.response.headers["Cache-Control"] = "no-store"
        self.response.body = TRANSPARENT_GIF
