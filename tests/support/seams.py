"""Seams a test passes to the library in place of a real collaborator: caches that
change one call, a clock that moves when told, and helpers that set up or read
a queue through them."""

from __future__ import annotations

import threading

from tests.support.threads import THREAD_DEADLINE_SECONDS, InThread

class CacheWrapper:
    """A Cache that passes every call on to ``inner``: a test's seam changes one call."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


class RecordReads(CacheWrapper):
    """A Cache that records the keys of each ``gets_multi``, in order (``keys``)."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.keys: list[list[str]] = []

    def gets_multi(self, keys):
        self.keys.append(list(keys))
        return self.inner.gets_multi(keys)


class BeforeCas(CacheWrapper):
    """A Cache that runs ``between`` once, right before the next ``cas_multi`` that sets
    ``key`` (``with_key``) or that does not (``without_key``: a take of slots alone)."""

    def __init__(self, inner, key: str, between, with_key: bool = True) -> None:
        super().__init__(inner)
        self.key, self.between, self.with_key = key, between, with_key

    def cas_multi(self, values, expire_seconds=0):
        if self.between is not None and (self.key in values) == self.with_key:
            between, self.between = self.between, None
            between()
        return self.inner.cas_multi(values, expire_seconds)


class RefusesTakesOnce(CacheWrapper):
    """A Cache whose next ``cas_multi`` refuses every key but ``spared`` without storing
    it, as memcached does after giving an unchanged item a new CAS id."""

    def __init__(self, inner, spared: str) -> None:
        super().__init__(inner)
        self.spared, self.refused = spared, []

    def cas_multi(self, values, expire_seconds=0):
        if self.refused:
            return self.inner.cas_multi(values, expire_seconds)
        self.refused = [key for key in values if key != self.spared]
        answers = self.inner.cas_multi({key: value for key, value in values.items() if key == self.spared}, expire_seconds)
        return {**answers, **dict.fromkeys(self.refused, False)}


class PauseAfterIncr(CacheWrapper):
    """A Cache that runs ``between`` once, right after the next ``incr`` that hands out slots.

    It stands for a writer paused between taking its slot and storing its message.
    """

    def __init__(self, inner, between):
        super().__init__(inner)
        self.between = between

    def incr(self, key, delta):
        value = self.inner.incr(key, delta)
        if ":w:" in key and value is not None and self.between is not None:
            between, self.between = self.between, None
            between()
        return value


class GatedAddMulti(CacheWrapper):
    """Holds the first ``add_multi`` until ``release`` is set (a write in flight for as long
    as the test needs); records how many messages each stores (a frame holds several);
    fails those numbered in ``failing`` (0 is the first) with ``CacheUnavailableError``,
    as a memcache error does."""

    def __init__(self, inner, failing: tuple[int, ...] = ()) -> None:
        super().__init__(inner)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []
        self.failing = failing

    def add_multi(self, values, expire_seconds=0):
        from clickqueue import CacheUnavailableError

        from clickqueue.codec import slot_span

        number = len(self.calls)
        self.calls.append(sum(map(slot_span, values.values())))
        if number == 0:
            self.entered.set()
            assert self.release.wait(THREAD_DEADLINE_SECONDS), "the test never released the first write"
        if number in self.failing:
            raise CacheUnavailableError(next(iter(values)), "add_multi")
        return self.stored_part(number, values, expire_seconds)

    def stored_part(self, number: int, values, expire_seconds: int):
        """What add_multi number ``number`` stores and answers, once through the gate."""
        return self.inner.add_multi(values, expire_seconds)


class StoresOnlyTheFirst(GatedAddMulti):
    """The second ``add_multi`` stores only its first frame (``FRAME_MESSAGES`` messages
    when it has more) and loses the answer for the rest; reading those back fails: a
    write that ends incomplete."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.fail_reads = False

    def stored_part(self, number, values, expire_seconds):
        if number != 1:
            return self.inner.add_multi(values, expire_seconds)
        self.fail_reads = True
        return {**dict.fromkeys(values), **self.inner.add_multi(dict(list(values.items())[:1]), expire_seconds)}

    def get_multi(self, keys):
        if self.fail_reads:
            self.fail_reads = False
            from clickqueue import CacheUnavailableError

            raise CacheUnavailableError(keys[0], "get_multi")
        return self.inner.get_multi(keys)


def existing_queue(cache, name: str = "q"):
    """``cache``, holding queue ``name`` (one shard) with its counter and state, so that
    a write through it is its 2 cache calls (``incr``, ``add_multi``)."""
    from clickqueue import Queue

    Queue(name, cache).write("creates the queue")
    assert drain(Queue(name, cache)) == ["creates the queue"]
    return cache


def start_held_write(gate: GatedAddMulti, call) -> InThread:
    """``call()`` on a thread, once its write is held at ``gate``: a write in flight."""
    thread = InThread(call)
    thread.start()
    assert gate.entered.wait(THREAD_DEADLINE_SECONDS), "the first write did not start"
    return thread


def drain(queue, max_items: int = 100) -> list:
    """Every message ``read_multi`` hands out until it returns nothing."""
    received = []
    while batch := queue.read_multi(max_items):
        received += batch
    return received


class FakeClock:
    """A clock for the ``clock=`` seam: time moves only when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
