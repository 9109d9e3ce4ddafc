"""GroupCommit: concurrent callers share one write_multi; a lone caller writes at
once; a failed write fails every caller in it and stores none of their messages;
batches stay within max_messages without splitting a caller's messages.

On real backends: the App Engine SDK's memcache stub (testbed) and a real
memcached (through a PooledClient: the callers are threads). Writes in flight
are held open by a cache wrapper's gate, not by sleeps; who waits is read from
the Condition the callers wait on.
"""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from conftest import CacheWrapper, drain, wait_until

from clickqueue import (
    MAX_BATCH_BYTES,
    MAX_BATCH_MESSAGES,
    MAX_MESSAGE_BYTES,
    CacheUnavailableError,
    CountingCache,
    GroupCommit,
    GroupWriteError,
    InvalidArgumentError,
    MessageEncodingError,
    Queue,
    wrap_client,
)

DEADLINE_SECONDS = 30
"""How long a test waits for a thread or a state before it fails."""


@pytest.fixture(params=["appengine", "memcached"])
def thread_safe_cache(request):
    """Each backend's Cache, empty, usable from many threads at once."""
    if request.param == "appengine":
        request.getfixturevalue("testbed")
        yield wrap_client(None)
        return
    from pymemcache.client.base import PooledClient

    request.getfixturevalue("memcached_client")  # flushes the session's server
    client = PooledClient(request.getfixturevalue("memcached_server").address, connect_timeout=2, timeout=5)
    yield wrap_client(client)
    client.close()


def existing_queue(cache):
    """``cache``, holding queue "q" with its counter and state, so a write is its 2 cache calls."""
    Queue("q", cache).write("creates the queue")
    assert drain(Queue("q", cache)) == ["creates the queue"]
    return cache


def ids(caller: str, count: int) -> list[dict[str, str]]:
    return [{"id": f"{caller}-{n}"} for n in range(count)]


class RecordingCondition(threading.Condition):
    """The Condition callers wait on, counting its waits and naming the threads waiting now."""

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


class GatedAddMulti(CacheWrapper):
    """Holds the first ``add_multi`` until ``release`` is set (a write in flight for as long
    as the test needs); records the keys of each; fails those numbered in ``failing``
    (0 is the first) with ``CacheUnavailableError``, as a memcache error does."""

    def __init__(self, inner, failing: tuple[int, ...] = ()) -> None:
        super().__init__(inner)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[list[str]] = []
        self.failing = failing

    def add_multi(self, values, expire_seconds=0):
        number = len(self.calls)
        self.calls.append(list(values))
        if number == 0:
            self.entered.set()
            assert self.release.wait(DEADLINE_SECONDS), "the test never released the first write"
        if number in self.failing:
            raise CacheUnavailableError(next(iter(values)), "add_multi")
        return self.stored_part(number, values, expire_seconds)

    def stored_part(self, number, values, expire_seconds):
        return self.inner.add_multi(values, expire_seconds)


class Caller(threading.Thread):
    """One caller of ``group.write_multi(messages)`` on a thread of its own; ``outcome()``
    is what it raised (None if it returned)."""

    def __init__(self, group: GroupCommit, messages: list) -> None:
        super().__init__(daemon=True)
        self.group, self.messages = group, messages
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.group.write_multi(self.messages)
        except Exception as error:  # the test asserts on it
            self.error = error

    def outcome(self) -> Exception | None:
        self.join(DEADLINE_SECONDS)
        assert not self.is_alive(), "the caller did not return"
        return self.error


def arrive_in_order(group: GroupCommit, condition: RecordingCondition, batches: list[list]) -> list[Caller]:
    """Start a caller per batch of messages, each once the one before waits on ``condition``."""
    callers = []
    for messages in batches:
        caller = Caller(group, messages)
        caller.start()
        wait_until(lambda: caller.ident in condition.waiting, DEADLINE_SECONDS, message="the caller to wait")
        callers.append(caller)
    return callers


def first_write_in_flight(gate: GatedAddMulti, group: GroupCommit, messages: list) -> Caller:
    """A caller whose write is held at the gate: a write in flight."""
    first = Caller(group, messages)
    first.start()
    assert gate.entered.wait(DEADLINE_SECONDS), "the first write did not start"
    return first


def test_a_lone_caller_writes_at_once_in_one_write_multi(thread_safe_cache):
    cache = CountingCache(existing_queue(thread_safe_cache))
    condition = RecordingCondition()
    group = GroupCommit(Queue("q", cache), max_wait_seconds=60, condition=condition)

    group.write_multi(ids("alone", 3))
    group.write_multi(ids("next", 1))  # one after the other: alone too

    assert condition.waits == 0, "a caller with no write in flight waited"
    assert cache.calls == Counter({"incr": 2, "add_multi": 2})
    assert drain(Queue("q", thread_safe_cache)) == ids("alone", 3) + ids("next", 1)


def test_callers_arriving_during_a_write_share_the_next_write_multi(thread_safe_cache):
    gate = GatedAddMulti(existing_queue(thread_safe_cache))
    condition = RecordingCondition()
    group = GroupCommit(Queue("q", gate), max_wait_seconds=60, condition=condition)
    first = first_write_in_flight(gate, group, ids("first", 3))
    followers = arrive_in_order(group, condition, [ids(f"caller{n}", 2) for n in range(15)])

    gate.release.set()

    assert [caller.outcome() for caller in [first, *followers]] == [None] * 16
    assert [len(keys) for keys in gate.calls] == [3, 30], "16 callers, 2 write_multi calls"
    expected = ids("first", 3) + [message for caller in followers for message in caller.messages]
    assert drain(Queue("q", thread_safe_cache)) == expected, "in arrival order, each once"


def test_a_leader_waits_for_company_no_longer_than_max_wait_seconds(testbed):
    gate = GatedAddMulti(existing_queue(wrap_client(None)))
    group = GroupCommit(Queue("q", gate), max_wait_seconds=0.05)
    first = first_write_in_flight(gate, group, ids("held", 1))

    second = Caller(group, ids("second", 2))
    second.start()

    assert second.outcome() is None, "written while the first write is still held"
    assert first.is_alive()
    gate.release.set()
    assert first.outcome() is None
    assert sorted(m["id"] for m in drain(Queue("q", wrap_client(None)))) == ["held-0", "second-0", "second-1"]


def test_batches_hold_at_most_max_messages_and_never_split_a_caller(thread_safe_cache):
    """With a write held in flight: callers of 4 and 4 share a batch; the next 4 would
    take it past 10, so it is written and the 4 open another; 7 likewise; 25, over
    max_messages alone, is written at once in one write_multi of its own."""
    gate = GatedAddMulti(existing_queue(thread_safe_cache))
    condition = RecordingCondition()
    group = GroupCommit(Queue("q", gate), max_wait_seconds=60, max_messages=10, condition=condition)
    held = first_write_in_flight(gate, group, ids("held", 1))
    b, c = arrive_in_order(group, condition, [ids("b", 4), ids("c", 4)])
    [d] = arrive_in_order(group, condition, [ids("d", 4)])
    assert (b.outcome(), c.outcome()) == (None, None), "a full batch does not wait for the write in flight"
    [e] = arrive_in_order(group, condition, [ids("e", 7)])
    assert d.outcome() is None
    f = Caller(group, ids("f", 25))
    f.start()
    assert (e.outcome(), f.outcome()) == (None, None)

    gate.release.set()

    assert held.outcome() is None
    sizes = [len(keys) for keys in gate.calls]
    assert sizes[:3] == [1, 8, 4] and sorted(sizes[3:]) == [7, 25], "e's and f's writes race: either goes first"
    received = drain(Queue("q", thread_safe_cache))
    assert received[:13] == ids("held", 1) + ids("b", 4) + ids("c", 4) + ids("d", 4)
    assert received[13:] in (ids("e", 7) + ids("f", 25), ids("f", 25) + ids("e", 7))


def test_every_caller_of_a_failed_write_gets_the_error_and_none_of_their_messages_is_stored(thread_safe_cache):
    gate = GatedAddMulti(existing_queue(thread_safe_cache), failing=(1,))
    condition = RecordingCondition()
    group = GroupCommit(Queue("q", gate), max_wait_seconds=60, condition=condition)
    first = first_write_in_flight(gate, group, ids("first", 2))
    failed = arrive_in_order(group, condition, [ids(f"failed{n}", 3) for n in range(6)])

    gate.release.set()

    assert first.outcome() is None
    errors = [caller.outcome() for caller in failed]
    assert all(isinstance(error, GroupWriteError) for error in errors), errors
    assert [(error.stored, error.unknown, error.total, error.callers) for error in errors] == [([], [], 3, 6)] * 6
    assert all(isinstance(error.cause, CacheUnavailableError) for error in errors)
    assert len({id(error) for error in errors}) == 6, "each caller raises an error of its own"

    group.write_multi(ids("after", 2))  # a caller after the failed batch

    assert [len(keys) for keys in gate.calls[:3]] == [2, 18, 2]
    assert drain(Queue("q", thread_safe_cache)) == ids("first", 2) + ids("after", 2)


class StoresOnlyTheFirst(GatedAddMulti):
    """The second ``add_multi`` stores only its first ``count`` messages and loses the
    answer for the rest; reading those back fails: a write that ends incomplete."""

    def __init__(self, inner, count: int) -> None:
        super().__init__(inner)
        self.count = count
        self.fail_reads = False

    def stored_part(self, number, values, expire_seconds):
        if number != 1:
            return self.inner.add_multi(values, expire_seconds)
        kept = dict(list(values.items())[: self.count])
        self.fail_reads = True
        return {**dict.fromkeys(values), **self.inner.add_multi(kept, expire_seconds)}

    def get_multi(self, keys):
        if self.fail_reads:
            self.fail_reads = False
            raise CacheUnavailableError(keys[0], "get_multi")
        return self.inner.get_multi(keys)


def test_an_incomplete_write_tells_each_caller_which_of_its_own_messages_were_stored(thread_safe_cache):
    gate = StoresOnlyTheFirst(existing_queue(thread_safe_cache), count=3)
    condition = RecordingCondition()
    group = GroupCommit(Queue("q", gate), max_wait_seconds=60, condition=condition)
    first = first_write_in_flight(gate, group, ids("first", 1))
    stored, partly = arrive_in_order(group, condition, [ids("stored", 2), ids("partly", 3)])

    gate.release.set()

    assert (first.outcome(), stored.outcome()) == (None, None), "all of its messages were stored"
    error = partly.outcome()
    assert isinstance(error, GroupWriteError)
    assert (error.stored, error.unknown, error.total) == ([0], [1, 2], 3)
    assert drain(Queue("q", thread_safe_cache)) == ids("first", 1) + ids("stored", 2) + ids("partly", 1)


def test_a_message_the_queue_refuses_fails_only_its_own_caller(testbed):
    gate = GatedAddMulti(existing_queue(wrap_client(None)))
    condition = RecordingCondition()
    group = GroupCommit(Queue("q", gate), max_wait_seconds=60, condition=condition)
    first = first_write_in_flight(gate, group, ids("first", 1))
    good, bad, also_good = arrive_in_order(
        group, condition, [ids("good", 2), [*ids("bad", 1), {"id": float("nan")}], ids("also-good", 3)]
    )

    gate.release.set()

    assert (first.outcome(), good.outcome(), also_good.outcome()) == (None, None, None)
    assert isinstance(bad.outcome(), MessageEncodingError)
    assert sorted(len(keys) for keys in gate.calls) == [1, 2, 3], "refused together, written caller by caller"
    assert sorted(m["id"] for m in drain(Queue("q", wrap_client(None)))) == sorted(
        m["id"] for m in ids("first", 1) + ids("good", 2) + ids("also-good", 3)
    )


@pytest.mark.slow
def test_callers_over_max_batch_bytes_together_are_written_one_by_one_each_whole(testbed):
    big = "x" * (MAX_MESSAGE_BYTES - 100)
    per_caller = MAX_BATCH_BYTES // 2 // len(big) + 1  # two callers' messages exceed one write_multi
    gate = GatedAddMulti(existing_queue(wrap_client(None)))
    condition = RecordingCondition()
    group = GroupCommit(Queue("q", gate), max_wait_seconds=60, condition=condition)
    first = first_write_in_flight(gate, group, ids("first", 1))
    callers = arrive_in_order(
        group, condition, [[{"id": f"{name}-{n}", "pad": big} for n in range(per_caller)] for name in "ab"]
    )

    gate.release.set()

    assert [caller.outcome() for caller in [first, *callers]] == [None] * 3
    assert sorted(len(keys) for keys in gate.calls) == [1, per_caller, per_caller]
    received = Counter(m["id"].split("-")[0] for m in drain(Queue("q", wrap_client(None))))
    assert received == {"first": 1, "a": per_caller, "b": per_caller}


class RaisesOnAddMulti(GatedAddMulti):
    def stored_part(self, number, values, expire_seconds):
        raise RuntimeError("a bug in the cache wrapper")


def test_a_leader_whose_write_raises_a_bug_raises_it_and_its_followers_cannot_tell(testbed):
    gate = RaisesOnAddMulti(existing_queue(wrap_client(None)))
    condition = RecordingCondition()
    group = GroupCommit(Queue("q", gate), max_wait_seconds=60, condition=condition)
    first = first_write_in_flight(gate, group, ids("first", 1))
    leader, follower = arrive_in_order(group, condition, [ids("leader", 1), ids("follower", 2)])

    gate.release.set()

    assert isinstance(first.outcome(), RuntimeError)
    assert isinstance(leader.outcome(), RuntimeError), "the leader's own exception, as raised"
    error = follower.outcome()
    assert isinstance(error, GroupWriteError) and isinstance(error.cause, RuntimeError)
    assert (error.stored, error.unknown) == ([], [0, 1])


def test_writing_nothing_makes_no_cache_call(testbed):
    cache = CountingCache(wrap_client(None))

    GroupCommit(Queue("q", cache)).write_multi([])

    assert cache.total() == 0


@pytest.mark.parametrize(
    "options",
    [{"max_messages": 0}, {"max_messages": MAX_BATCH_MESSAGES + 1}, {"max_wait_seconds": -0.001}],
    ids=["no-messages", "over-the-queue's-batch", "negative-wait"],
)
def test_limits_outside_what_one_write_takes_are_refused(testbed, options):
    with pytest.raises(InvalidArgumentError):
        GroupCommit(Queue("q"), **options)


THREADS = 16


@pytest.mark.slow
@pytest.mark.parametrize(("calls", "per_call"), [(500, 1), (40, 50)], ids=["single-events", "batches-of-50"])
def test_many_threads_through_one_group_commit_store_every_message_once(thread_safe_cache, calls, per_call):
    cache = CountingCache(existing_queue(thread_safe_cache))
    group = GroupCommit(Queue("q", cache))
    sent = {(thread, call): ids(f"t{thread}-c{call}", per_call) for thread in range(THREADS) for call in range(calls)}

    def write(thread: int) -> None:
        for call in range(calls):
            group.write_multi(sent[thread, call])

    threads = [threading.Thread(target=write, args=(thread,), daemon=True) for thread in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE_SECONDS * 4)
        assert not thread.is_alive()
    writes = cache.calls["incr"]

    received = Counter(message["id"] for message in drain(Queue("q", thread_safe_cache), max_items=1000))
    assert received == Counter(message["id"] for messages in sent.values() for message in messages), "each once"
    print(f"{len(sent)} callers, {writes} write_multi calls ({cache.calls})")
    assert cache.calls["add_multi"] == writes, "each write_multi: one incr, one add_multi"
    assert writes * 3 <= len(sent), "callers share write_multi calls"
