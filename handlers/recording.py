"""The base of the handlers that record events (``/track``, ``/p.gif``, ``/go``):
one place where events are checked against the allowed origins, dated, marked
as a bot's or dropped as a prefetch, refused while the queue is full, queued (through the process's group
commit: one write shared by the requests in flight), and their processing
scheduled."""

from __future__ import annotations

import logging
from dataclasses import replace

from google.appengine.api import taskqueue

from clicks.events import Event
from clicks.origins import PageCheck
from clicks.processing import schedule_processing
from clicks.traffic import Sender, sender
from handlers.base import JsonHandler

logger = logging.getLogger(__name__)


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
        """Queue ``events`` (as a bot's if a bot sent them; none for a prefetch); how many were queued.

        Returns once they are stored. Raises, recording nothing, ``QueueFullError``
        if they would take the backlog past ``Settings.max_queue_depth`` (checked
        in memory: see ``clicks.intake.IntakeGate`` for its memcache calls),
        or ``GroupWriteError`` if the write fails (both 503, see ``JsonApplication``),
        and schedules nothing."""
        self.check_origin()
        sent_by = sender(self.request.headers)
        if sent_by is Sender.PREFETCH:
            return 0
        self.settings.intake.admit(len(events))
        at = int(self.settings.clock())
        stamped = [replace(event, at=at, bot=sent_by is Sender.BOT).to_message() for event in events]
        self.settings.group_commit.write_multi(stamped)  # shared with the requests writing now
        self._schedule_processing()
        return len(stamped)

    def _schedule_processing(self) -> None:
        # The events are stored: answering an error now would make the client
        # send them twice. The cron job schedules processing if this failed.
        try:
            schedule_processing(self.settings)
        except (taskqueue.TransientError, taskqueue.InternalError) as error:
            logger.warning("could not schedule processing (cron will): %r", error)
