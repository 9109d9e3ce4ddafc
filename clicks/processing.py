"""Scheduling the processing and fold tasks, and draining the queue into counted batches.

``/track`` never adds a task per event: every event of one time slot asks for
the same named task (``process-<queue>-<slot>``), which App Engine creates once
and runs at the end of the slot. A processing task holds one of
``Settings.processors`` lanes (a memcache key each, so at most that many run
at once), drains the queue in leased batches until it has caught up (a batch
less than half full) or the time budget is spent, then chains a task of its own; when it finds more than a
batch waiting, it asks for a task per free lane, so processing fans out.
Each recorded batch asks for the next slot's fold task (``fold-<queue>-<slot>``):
one fold a second adds the recorded batches to the count store.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from google.appengine.api import memcache, taskqueue

from clicks.events import event_from_message
from clicks.http_errors import BatchFailedError
from clicks.settings import ScheduledSlot, Settings, app_memcache_key

PROCESS_PATH = "/process"
FOLD_PATH = "/fold"

logger = logging.getLogger(__name__)


def _add_named_task(name: str, path: str, queue_name: str, eta_posix: float | None) -> bool:
    """Add the task ``name``; False if it is queued already or ran (a tombstone)."""
    eta = datetime.fromtimestamp(eta_posix, tz=UTC) if eta_posix is not None else None
    try:
        taskqueue.add(name=name, url=path, queue_name=queue_name, eta=eta)
    except (taskqueue.TaskAlreadyExistsError, taskqueue.TombstonedTaskError):
        return False
    return True


def _once_per_slot(settings: Settings, asked: ScheduledSlot, slot: int, name: str, path: str, queue_name: str) -> bool:
    """Ask for the task ``name``, due when ``slot`` ends, unless this process asked for ``slot`` already."""
    if asked.slot == slot:
        return False
    created = _add_named_task(name, path, queue_name, (slot + 1) * settings.slot_seconds)
    asked.slot = slot
    return created


def schedule_processing(settings: Settings) -> bool:
    """Ask for this slot's processing task, due when the slot ends; True if this call created it.

    Each process asks once per slot: later requests of the slot skip the RPC.
    """
    slot = int(settings.clock() // settings.slot_seconds)
    name = f"process-{settings.queue.name}-{slot}"
    return _once_per_slot(settings, settings.scheduled_slot, slot, name, PROCESS_PATH, settings.task_queue_name)


def schedule_fold(settings: Settings) -> bool:
    """Ask for the next slot's fold task (once per slot and process); True if this call created it."""
    slot = int(settings.clock() // settings.slot_seconds) + 1
    name = f"fold-{settings.queue.name}-{slot}"
    return _once_per_slot(settings, settings.scheduled_fold_slot, slot, name, FOLD_PATH, settings.fold_queue_name)


def _ask_for_fold(settings: Settings) -> None:
    # The batch is recorded: failing the task now would only deliver it again.
    # The cron job schedules a fold if this failed.
    try:
        schedule_fold(settings)
    except (taskqueue.TransientError, taskqueue.InternalError) as error:
        logger.warning("could not schedule the fold (cron will): %r", error)


def schedule_continuation(settings: Settings) -> None:
    """Add an unnamed task, due now by ``settings.clock``, to carry on where a request's
    time budget ran out (or to take a free lane)."""
    taskqueue.add(url=PROCESS_PATH, queue_name=settings.task_queue_name, eta=datetime.fromtimestamp(settings.clock(), tz=UTC))


class ProcessorLanes:
    """At most ``Settings.processors`` processing tasks at once: each holds a lane, a
    memcache key added for the task's time budget plus ``LANE_SLACK_SECONDS``.

    A lane whose holder died frees itself when its key expires; an evicted key lets
    one more task in for a while, which only costs contention: counting stays exact
    whoever processes. ``hold`` makes up to ``processors`` memcache calls.
    """

    LANE_SLACK_SECONDS = 30

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = [app_memcache_key(settings.queue, f"lane:{lane}") for lane in range(settings.processors)]

    def hold(self) -> int | None:
        """Take a free lane; None if every lane is held."""
        hold_seconds = int(self.settings.time_budget_seconds + self.settings.lease_seconds + self.LANE_SLACK_SECONDS)
        for lane, key in enumerate(self.keys):
            if memcache.add(key, "held", time=hold_seconds):
                return lane
        return None

    def free(self, lane: int) -> None:
        memcache.delete(self.keys[lane])

    def fan_out(self) -> int:
        """Add a processing task for each free lane; how many were added."""
        free = len(self.keys) - len(memcache.get_multi(self.keys))
        for _ in range(free):
            schedule_continuation(self.settings)
        return free


@dataclass(frozen=True)
class DrainReport:
    processed: int
    """Messages taken off the queue: their batches were recorded and acked."""
    budget_spent: bool
    """Stopped on the time budget, not on an empty queue: work may remain."""
    caught_up: bool = False
    """Stopped on a batch less than half full: the queue had caught up with its
    writers, and what they wrote since waits for the next slot's task."""


def drain(settings: Settings) -> DrainReport:
    """Lease batches and record each one until the queue is empty, a batch comes back
    less than half full, or the budget is spent.

    Stopping once the queue has caught up keeps batches large under steady traffic:
    a task that went on leasing would record a batch of the few events that came in
    while it recorded the last, and each fold takes at most ``MAX_BATCHES_PER_FOLD``
    batches a second, so small batches would cap counting far below recording.

    A batch whose recording fails goes back to the queue (the lease is
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
                added = settings.aggregate(batch.lease_id, events, settings.clock()) if events else 0
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
        if added:
            _ask_for_fold(settings)
        if 2 * len(batch.messages) < settings.batch_size:
            return DrainReport(processed, budget_spent=False, caught_up=True)
    return DrainReport(processed, budget_spent=True)
