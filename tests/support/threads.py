"""Threads a test runs calls on, each waited for with a deadline."""

from __future__ import annotations

import threading

from tests.support.processes import wait_until

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
        self.call = call
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
