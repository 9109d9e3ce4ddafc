"""Threads a test runs calls on, each waited for with a deadline."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from tests.support.processes import wait_until

Result = TypeVar("Result")


def in_request_environment(call: Callable[[], Result]) -> Callable[[], Result]:
    """``call``, to run on another thread in the calling thread's App Engine request
    environment (``os.environ``, with the app id the stubs need), left when it returns.

    The SDK gives every new thread this by patching ``_thread.start_new_thread``; from
    Python 3.13 ``threading`` starts threads with ``start_joinable_thread`` instead, so
    once ``wrap_wsgi_app`` made ``os.environ`` per request, a thread of a test started
    without it sees no app id."""
    from google.appengine.runtime import request_environment

    enter = request_environment.current_request.CloneRequestEnvironment()

    def run() -> Result:
        enter()
        try:
            return call()
        finally:
            request_environment.current_request.Clear()

    return run

class RecordingCondition(threading.Condition):
    """A Condition for GroupCommit's ``condition=`` seam: it counts its waits and names
    the threads waiting now."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0
        self.waiting: set[int] = set()

    def wait(self, timeout=None):
        self.waits += 1  # under the lock, as wait() must be called
        self.waiting.add(threading.get_ident())
        try:
            return super().wait(timeout)
        finally:
            self.waiting.discard(threading.get_ident())


THREAD_DEADLINE_SECONDS = 30
"""How long a test waits for a thread, or for a state, before it fails."""


class InThread(threading.Thread):
    """``call()`` on a thread of its own; ``outcome()`` waits for it (with a deadline) and
    gives what it returned or the exception it raised."""

    def __init__(self, call) -> None:
        super().__init__(daemon=True)
        self.call = in_request_environment(call)
        self._outcome = None

    def run(self) -> None:
        try:
            self._outcome = self.call()
        except Exception as error:  # noqa: BLE001 (the test asserts on it)
            self._outcome = error

    def outcome(self):
        self.join(THREAD_DEADLINE_SECONDS)
        assert not self.is_alive(), f"{self.call} did not return"
        return self._outcome


def run_on_threads(work, count: int) -> None:
    """``work(n)`` for each n below ``count``, each on a thread of its own, all at once;
    fails if one raised or did not end in time."""
    threads = [InThread(lambda n=n: work(n)) for n in range(count)]
    for thread in threads:
        thread.start()
    assert [thread.outcome() for thread in threads] == [None] * count


def start_and_wait(condition: RecordingCondition, call) -> InThread:
    """``call()`` on a thread of its own, once that thread waits on ``condition``."""
    thread = InThread(call)
    thread.start()
    wait_until(lambda: thread.ident in condition.waiting, THREAD_DEADLINE_SECONDS, message=f"{call} to wait")
    return thread


def arrive_in_order(condition: RecordingCondition, calls) -> list[InThread]:
    """Each call on a thread of its own, started once the one before waits on ``condition``."""
    return [start_and_wait(condition, call) for call in calls]
