"""The handlers' settings, handed to them through the webapp2 app config.

Tests build an app with other settings (a failing ``aggregate``, a fixed
``clock``, a short time budget) instead of patching modules.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from clickqueue import Queue
from handlers import counters
from handlers.events import Event

CONFIG_KEY = "clickqueue.settings"
TASK_NAME_PART = re.compile(r"[A-Za-z0-9_-]+")

Aggregate = Callable[[str, Sequence[Event]], bool]
"""Adds a batch's events to the counters once per batch id; True if this call did."""


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
    """The queue, the aggregation step, and the knobs of processing."""

    queue: Queue = field(default_factory=default_queue)
    aggregate: Aggregate = counters.apply_batch
    task_queue_name: str = "process"
    batch_size: int = 100
    lease_seconds: float = 60
    time_budget_seconds: float = 5.0
    """How long one /process request keeps leasing batches before it chains a task."""
    slot_seconds: float = 1.0
    """Events tracked in one slot of this length share one processing task."""
    clock: Callable[[], float] = time.time
    scheduled_slot: ScheduledSlot = field(default_factory=ScheduledSlot)

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= counters.MAX_EVENTS_PER_COMMIT:
            raise ValueError(f"batch_size must be 1 to {counters.MAX_EVENTS_PER_COMMIT}")
        if not TASK_NAME_PART.fullmatch(self.queue.name):
            raise ValueError(f"queue name {self.queue.name!r} must be usable in task names: [A-Za-z0-9_-]")
