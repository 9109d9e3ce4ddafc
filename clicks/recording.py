"""Recording a request's events: dated, marked, admitted, queued, and their processing scheduled.

Marked as a bot's or dropped as a prefetch, refused while the queue is full,
queued through the process's group commit (one write shared by the requests in
flight).
"""

from __future__ import annotations

import logging

from google.appengine.api import taskqueue

from clicks.events import Event
from clicks.processing import schedule_processing
from clicks.settings import Settings
from clicks.traffic import Sender

logger = logging.getLogger(__name__)


def record(settings: Settings, events: list[Event], sent_by: Sender) -> int:
    """Queue ``events`` (as a bot's if a bot sent them; none for a prefetch); how many were queued.

    Returns once they are stored. Raises, recording nothing, ``QueueFullError``
    if they would take the backlog past ``Settings.max_queue_depth`` (checked
    in memory: see ``clicks.intake.IntakeGate`` for its memcache calls),
    or ``GroupWriteError`` if the write fails (both 503, see ``JsonApplication``),
    and schedules nothing."""
    if sent_by is Sender.PREFETCH:
        return 0
    settings.intake.admit(len(events))
    at = int(settings.clock())
    bot = sent_by is Sender.BOT
    stamped = [event.message_at(at, bot) for event in events]
    settings.group_commit.write_multi(stamped)  # shared with the requests writing now
    _schedule_processing(settings)
    return len(stamped)


def _schedule_processing(settings: Settings) -> None:
    # The events are stored: answering an error now would make the client
    # send them twice. The cron job schedules processing if this failed.
    try:
        schedule_processing(settings)
    except (taskqueue.TransientError, taskqueue.InternalError) as error:
        logger.warning("could not schedule processing (cron will): %r", error)
