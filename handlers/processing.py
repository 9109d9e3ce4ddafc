"""Fan-in scheduling of the processing task, and draining the queue into the counters.

``/track`` never adds a task per event: every event of one time slot asks for
the same named task (``process-<queue>-<slot>``), which App Engine creates once
and runs at the end of the slot. That task drains the queue in leased batches
until it is empty or the time budget is spent, then chains a task of its own.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from google.appengine.api import taskqueue

from handlers.errors import BatchFailedError
from handlers.events import event_from_message
from handlers.settings import Settings

PROCESS_PATH = "/process"

logger = logging.getLogger(__name__)


def schedule_processing(settings: Settings) -> bool:
    """Ask for this slot's processing task, due when the slot ends; True if this call created it.

    Each process asks once per slot: later requests of the slot skip the RPC.
    """
    slot = int(settings.clock() // settings.slot_seconds)
    if settings.scheduled_slot.slot == slot:
        return False
    try:
        taskqueue.add(
            name=f"process-{settings.queue.name}-{slot}",
            url=PROCESS_PATH,
            queue_name=settings.task_queue_name,
            eta=datetime.fromtimestamp((slot + 1) * settings.slot_seconds, tz=UTC),
        )
    except (taskqueue.TaskAlreadyExistsError, taskqueue.TombstonedTaskError):
        settings.scheduled_slot.slot = slot
        return False  # the slot's task is queued already, or has run after these events were written
    settings.scheduled_slot.slot = slot
    return True


def schedule_continuation(settings: Settings) -> None:
    """Add an unnamed task to carry on where a request's time budget ran out."""
    taskqueue.add(url=PROCESS_PATH, queue_name=settings.task_queue_name)


@dataclass(frozen=True)
class DrainReport:
    processed: int
    """Messages taken off the queue: their batches were committed and acked."""
    budget_spent: bool
    """Stopped on the time budget, not on an empty queue: work may remain."""


def drain(settings: Settings) -> DrainReport:
    """Lease batches and aggregate each one until the queue is empty or the budget is spent.

    A batch whose aggregation fails goes back to the queue (the lease is
    released) and ``BatchFailedError`` is raised, so the task is retried.
    """
    deadline = time.monotonic() + settings.time_budget_seconds
    processed = 0
    while time.monotonic() < deadline:
        with settings.queue.lease(settings.batch_size, settings.lease_seconds) as batch:
            if not batch:
                return DrainReport(processed, budget_spent=False)
            events = {
                message_id: event
                for message_id, event in zip(batch.message_ids, map(event_from_message, batch.messages), strict=True)
                if event is not None
            }
            if len(events) < len(batch.messages):
                logger.warning(
                    "batch %s: dropped %d messages that are not events",
                    batch.lease_id,
                    len(batch.messages) - len(events),
                )
            try:
                added = settings.aggregate(batch.lease_id, events) if events else 0
                if added < len(events):
                    logger.info(
                        "batch %s (attempt %d): %d of its %d events were counted before",
                        batch.lease_id,
                        batch.attempt,
                        len(events) - added,
                        len(events),
                    )
            except Exception as error:  # any failure: leaving the block releases the batch
                raise BatchFailedError(error, processed=processed, requeued=len(batch.messages)) from error
        processed += len(batch.messages)
    return DrainReport(processed, budget_spent=True)
