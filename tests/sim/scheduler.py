"""Interleaving at cache-call granularity: one baton, many party threads, one seed.

Each party (a simulated process with its own ``clickqueue.Queue``) runs its
queue calls on a thread of its own, but only while it holds the baton: before
every cache call it hands the baton back (``Actor.checkpoint``) and waits.
The scheduler, on the main thread, picks from the seed which party goes next
and hands it the baton; so exactly one thread runs at a time, and the order
of every cache call, hence the whole run, follows from the seed alone.
Threads rather than step functions because the queue under test is plain
synchronous code.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

from tests.support.threads import in_request_environment

T = TypeVar("T")

MEAN_STEP_SECONDS = 0.01
"""Simulated time that passes per step, on average (exponentially distributed)."""


class OpAborted(BaseException):
    """Ends a party's queue call from inside a cache call. A BaseException so
    the code under test cannot swallow it with ``except Exception``."""


class PartyKilled(OpAborted):
    """The party's process died between two cache calls."""


class Actor:
    """One party's thread: runs an operation when started, parks at each checkpoint."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.busy = False
        """Inside an operation (parked before a cache call, or running)."""
        self._operation: Callable[[], None] | None = None
        self._go = threading.Semaphore(0)
        self._back = threading.Semaphore(0)
        self._harness_error: BaseException | None = None
        self._thread = threading.Thread(target=in_request_environment(self._main), name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        while True:
            self._go.acquire()
            operation = self._operation
            if operation is None:
                self._back.release()
                return
            try:
                operation()
            except OpAborted:
                pass
            except BaseException as error:  # a fault in the harness itself: the scheduler re-raises it
                self._harness_error = error
            self.busy = False
            self._back.release()

    # -- called by the scheduler (main thread) ------------------------------------

    def start(self, operation: Callable[[], None]) -> None:
        """Run ``operation`` until its first cache call (or its end)."""
        self._operation = operation
        self.busy = True
        self._hand_over()

    def resume(self) -> None:
        """Let the parked operation make its cache call and run to the next one (or its end)."""
        self._hand_over()

    def stop(self) -> None:
        self._operation = None
        self._go.release()
        self._back.acquire()
        self._thread.join()

    def _hand_over(self) -> None:
        self._go.release()
        self._back.acquire()
        if self._harness_error is not None:
            error, self._harness_error = self._harness_error, None
            raise error

    # -- called by the party's own thread ------------------------------------------

    def checkpoint(self) -> None:
        """Give the baton back before a cache call; return when the scheduler picks us again."""
        self._back.release()
        self._go.acquire()


class Scheduler:
    """The seeded choices of the run's order: who goes next, and how much time passes."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"{seed}:schedule")
        self.step = 0

    def next_step(self, ready: Sequence[T]) -> tuple[T, float]:
        """Pick the party for the next step, and the simulated seconds that pass before it."""
        self.step += 1
        return ready[self._rng.randrange(len(ready))], self._rng.expovariate(1 / MEAN_STEP_SECONDS)
