"""Backpressure on intake: events that would take the queue's backlog past its limit are refused.

The recording handlers (``/track``, ``/p.gif``, ``/go``) refuse events that
would take the backlog past ``Settings.max_queue_depth``, so events wait in
memcache only as long as processing keeps up, never until memcache evicts them.

The backlog is what memcache holds and processing has not recorded yet: the
queue's ``depth`` (waiting) plus its ``leased`` (in batches being recorded), as
``Queue.stats()`` gives them. A refused request records nothing: ``/track``
answers ``503`` with ``Retry-After``, ``/p.gif`` its GIF with ``503`` and
``Retry-After``, ``/go`` still redirects. Refused events are counted in
``/stats`` (``intake.refused``).
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections.abc import Callable

from google.appengine.api import memcache

from clickqueue import Queue, QueueError
from clicks.http_errors import QueueFullError

logger = logging.getLogger(__name__)

MAX_QUEUE_DEPTH_ENV = "CLICKQUEUE_MAX_QUEUE_DEPTH"
DEFAULT_MAX_QUEUE_DEPTH = 50_000
"""Events of backlog past which intake refuses more. An event takes about 50 bytes
of memcache (170 with a 128-character item), so the backlog stays under 10 MB, a
small share of any memcache; and processing counts it within seconds."""


def max_queue_depth_from_environment() -> int:
    """``CLICKQUEUE_MAX_QUEUE_DEPTH`` if set (a whole number), else ``DEFAULT_MAX_QUEUE_DEPTH``."""
    setting = os.environ.get(MAX_QUEUE_DEPTH_ENV)
    if setting is None:
        return DEFAULT_MAX_QUEUE_DEPTH
    if not (setting.isascii() and setting.isdigit()):
        raise ValueError(f"{MAX_QUEUE_DEPTH_ENV}: {setting!r} is not a whole number of events")
    return int(setting)


class IntakeGate:
    """Admits a request's events while the backlog stays within ``max_queue_depth``.

    Cost: 0 memcache calls on most requests. Each process reads the backlog
    (``Queue.stats()``, 1 call) on its first recording request of each slot of
    ``slot_seconds``, and then adds up the events it admits; every other request
    checks that figure in memory. With that read, if it refused events since the
    last one, it adds them to the refusals' counter (1 ``incr``). So a process
    makes at most 2 memcache calls per slot for this, however many requests.

    Bound: one process on its own never takes the backlog past ``max_queue_depth``,
    but for the events of requests whose write was in flight while it read (at
    most one request per thread, 500 events each). Several processes each act
    on a figure up to one slot old: the backlog can pass the limit by what the
    other processes admit in one slot.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        max_queue_depth: int,
        slot_seconds: float,
        retry_after_seconds: float,
        refused_key: str,
        clock: Callable[[], float],
    ) -> None:
        self.queue = queue
        self.max_queue_depth = max_queue_depth
        self.slot_seconds = slot_seconds
        self.retry_after_seconds = max(1, math.ceil(retry_after_seconds))
        self.refused_key = refused_key
        self.clock = clock
        self._lock = threading.Lock()
        self._read_slot: int | None = None
        self._backlog = 0
        """The last backlog read, plus the events admitted here since that read began."""
        self._admitted = 0
        """Events this process admitted, ever: tells which came after a read began."""
        self._refused_unsent = 0
        """Events refused here and not yet added to the memcache counter."""
        self._logged_slot: int | None = None

    def admit(self, events: int) -> None:
        """Let ``events`` more events be written, or raise ``QueueFullError`` (recording them as refused)."""
        slot = int(self.clock() // self.slot_seconds)
        with self._lock:
            read_now = self._read_slot != slot
            if read_now:
                self._read_slot, admitted_before, unsent = slot, self._admitted, self._refused_unsent
                self._refused_unsent = 0
        if read_now:
            self._read_backlog(admitted_before)
            self._send_refused(unsent)
        with self._lock:
            backlog = self._backlog
            if backlog + events > self.max_queue_depth:
                self._refused_unsent += events
                first_refusal_of_slot, self._logged_slot = self._logged_slot != slot, slot
            else:
                self._backlog += events
                self._admitted += events
                return
        if first_refusal_of_slot:
            logger.warning(
                "refusing events: the queue holds %d events not yet counted (max_queue_depth %d)",
                backlog,
                self.max_queue_depth,
            )
        raise QueueFullError(backlog, self.max_queue_depth, self.retry_after_seconds)

    def refused(self) -> int:
        """Events refused since the counter was made (this process's unsent ones included): 1 memcache call."""
        with self._lock:
            unsent, self._refused_unsent = self._refused_unsent, 0
        if unsent:
            total = self._send_refused(unsent)
            if total is not None:
                return total
        return int(memcache.get(self.refused_key) or 0)

    def _read_backlog(self, admitted_before: int) -> None:
        """Set the backlog to the queue's, plus what was admitted here since the read began
        (some of it may be in the read already: counted twice, it only refuses sooner)."""
        try:
            stats = self.queue.stats()
        except QueueError as error:  # the write will tell the client; keep the figure held
            logger.warning("could not read the queue's backlog; the last figure stands: %r", error)
            return
        with self._lock:
            self._backlog = stats.depth + stats.leased + self._admitted - admitted_before

    def _send_refused(self, events: int) -> int | None:
        """Add ``events`` to the refusals' counter; its new value, or None (kept to send again) if it failed."""
        if not events:
            return None
        total = memcache.incr(self.refused_key, events, initial_value=0)
        if total is None:
            with self._lock:
                self._refused_unsent += events
        return total
