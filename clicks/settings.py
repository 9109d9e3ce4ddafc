"""The app's settings, handed to the handlers through the webapp2 app config.

Tests build an app with other settings (a failing ``aggregate``, a fixed
``clock``, a short time budget) instead of patching modules.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from clickqueue import MAX_CLAIM_ITEMS, GroupCommit, Queue
from clicks import counting
from clicks.events import MAX_BATCH_EVENTS, Event
from clicks.intake import MAX_QUEUE_DEPTH_ENV, IntakeGate, max_queue_depth_from_environment
from clicks.links import LinkSigner
from clicks.origins import AllowedOrigins

CONFIG_KEY = "clickqueue.settings"
TASK_NAME_PART = re.compile(r"[A-Za-z0-9_-]+")

Aggregate = Callable[[str, Mapping[str, Event], float], int]
"""Records a batch's ``{message id: event}`` for counting at a time (POSIX seconds),
each message once per batch id; returns how many this call recorded."""


def app_memcache_key(queue: Queue, name: str) -> str:
    """A memcache key of the app's own, beside those of ``queue`` (``clickqueue-app:<queue>:<name>``)."""
    return f"clickqueue-app:{queue.name}:{name}"


def default_queue(clock: Callable[[], float] = time.time) -> Queue:
    # Writers spread their ``incr`` calls over the shards' counters: memcache
    # throttles a single hot key under heavy traffic.
    return Queue("events", shards=4, clock=clock)


@dataclass
class ScheduledSlot:
    """The last time slot whose processing task this process has asked for."""

    slot: int | None = None


@dataclass(frozen=True)
class Settings:
    """The queue and the group commit that writes to it, the aggregation step,
    the knobs of processing, who may send events from a browser, and the key of
    tracked links."""

    queue: Queue = field(default_factory=default_queue)
    group_commit_wait_seconds: float = 0.002
    """How long a recording request may wait for others to share its write, while
    another write is in flight (``GroupCommit``'s ``max_wait_seconds``); alone, it waits not at all."""
    group_commit_max_events: int = MAX_BATCH_EVENTS
    """Most events one shared write carries (500): /track's largest batch fills one alone, never split."""
    group_commit_condition: threading.Condition | None = None
    """What requests wait on in the group commit (None: its own); a test passes one that shows who waits."""
    aggregate: Aggregate = counting.count_batch
    task_queue_name: str = "process"
    fold_queue_name: str = "fold"
    processors: int = 4
    """queue.yaml's ``max_concurrent_requests`` for the process queue: how many processing
    tasks run at once (each holds a lane, see ``clicks.processing.ProcessorLanes``)."""
    batch_size: int = 500
    """Events one lease takes: one counted batch, one Datastore entity written."""
    lease_seconds: float = 60
    time_budget_seconds: float = 5.0
    """How long one /process request keeps leasing batches before it chains a task."""
    slot_seconds: float = 1.0
    """Events tracked in one slot of this length share one processing task."""
    clock: Callable[[], float] = time.time
    scheduled_slot: ScheduledSlot = field(default_factory=ScheduledSlot)
    scheduled_fold_slot: ScheduledSlot = field(default_factory=ScheduledSlot)
    task_age_limit_seconds: float = 3600
    """queue.yaml's ``task_age_limit`` (1h): how long one processing task is retried."""
    max_backoff_seconds: float = 60
    """queue.yaml's ``max_backoff_seconds``: the longest wait between two tries of a task."""
    cron_interval_seconds: float = 60
    """cron.yaml's schedule (every 1 minutes): the longest wait for a processing task when none is queued."""
    batches_pruned_per_run: int = 500
    """Most folded ``CountedBatch`` records one cron run deletes: one Datastore commit (500 entities at most)."""
    allowed_origins: AllowedOrigins = field(default_factory=AllowedOrigins.from_environment)
    """Whose pages may send events from their visitors' browsers (env CLICKQUEUE_ALLOWED_ORIGINS)."""
    links: LinkSigner = field(default_factory=LinkSigner.from_environment)
    """Signs tracked links: env CLICKQUEUE_LINK_KEY's key, else one kept in Datastore."""
    max_queue_depth: int = field(default_factory=max_queue_depth_from_environment)
    """Most events the queue may hold not yet counted (its depth plus its leased events);
    recording requests whose events would pass it are refused (env CLICKQUEUE_MAX_QUEUE_DEPTH,
    else ``clicks.intake.DEFAULT_MAX_QUEUE_DEPTH``; at least /track's largest batch)."""
    group_commit: GroupCommit = field(init=False, repr=False, compare=False)
    """This process's writer of ``queue`` for the recording handlers, made from
    the three ``group_commit_*`` settings (``dataclasses.replace`` makes another)."""
    intake: IntakeGate = field(init=False, repr=False, compare=False)
    """This process's gate on recording: refuses events past ``max_queue_depth``, and
    says to retry after one processing run (``time_budget_seconds``), when each busy
    lane has drained a run's worth."""

    @property
    def record_retention_seconds(self) -> float:
        """How long a ``CountedBatch`` is kept: the longest a recorded batch can come back.

        A batch comes back only through its lease, under the same id: ``lease()``
        hands it out again once ``lease_seconds`` have passed without an ack.
        Each /process run leases within ``time_budget_seconds`` of its start, and
        runs start at least every ``max(max_backoff_seconds, cron_interval_seconds)``
        (a retry of a failed task, or cron's task). A delivery after the commit
        finds its record and acks the batch, so the batch comes back again only
        while acks keep failing, that is while processing keeps failing: the task
        queue retries a failing task for ``task_age_limit_seconds``. So:

            retention = task_age_limit + lease + max(max_backoff, cron interval) + time budget
                      = 3600 + 60 + 60 + 5 s = 3725 s (about 62 minutes)

        A batch whose processing fails for longer than that (memcache refusing
        every ack for over an hour) may be counted twice once its record is gone.
        """
        return (
            self.task_age_limit_seconds
            + self.lease_seconds
            + max(self.max_backoff_seconds, self.cron_interval_seconds)
            + self.time_budget_seconds
        )

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_CLAIM_ITEMS:
            raise ValueError(f"batch_size must be 1 to {MAX_CLAIM_ITEMS}")
        if self.max_queue_depth < MAX_BATCH_EVENTS:
            raise ValueError(
                f"max_queue_depth ({MAX_QUEUE_DEPTH_ENV}) is {self.max_queue_depth}; it must be at least "
                f"{MAX_BATCH_EVENTS}, /track's largest batch"
            )
        if self.processors < 1:
            raise ValueError("processors must be at least 1")
        if not TASK_NAME_PART.fullmatch(self.queue.name):
            raise ValueError(f"queue name {self.queue.name!r} must be usable in task names: [A-Za-z0-9_-]")
        group_commit = GroupCommit(
            self.queue,
            max_wait_seconds=self.group_commit_wait_seconds,
            max_messages=self.group_commit_max_events,
            condition=self.group_commit_condition,
        )
        intake = IntakeGate(
            self.queue,
            max_queue_depth=self.max_queue_depth,
            slot_seconds=self.slot_seconds,
            retry_after_seconds=self.time_budget_seconds,
            refused_key=app_memcache_key(self.queue, "refused"),
            clock=self.clock,
        )
        object.__setattr__(self, "group_commit", group_commit)  # frozen: set once, here
        object.__setattr__(self, "intake", intake)
