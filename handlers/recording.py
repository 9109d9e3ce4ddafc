"""The base of the handlers that record events (``/track``, ``/p.gif``, ``/go``).

The request's page is checked against the allowed origins, its sender told, and
its events recorded (``clicks.recording``).
"""

from __future__ import annotations

from clicks import recording
from clicks.events import Event
from clicks.origins import PageCheck
from clicks.traffic import sender
from handlers.base import JsonHandler


class RecordingHandler(JsonHandler):
    """Records events for the request; subclasses parse them and answer."""

    page_check = PageCheck.PAGE
    """What of a browser request's page this path checks against the allowed origins."""

    def check_origin(self) -> None:
        """403 if a browser sent this from a page whose origin may not record events."""
        refusal = self.settings.allowed_origins.refusal(self.request.headers, self.request.host, self.page_check)
        if refusal is not None:
            raise refusal

    def record(self, events: list[Event]) -> int:
        """Check the origin (403), then record ``events`` (``clicks.recording.record``); how many were queued."""
        self.check_origin()
        return recording.record(self.settings, events, sender(self.request.headers))
