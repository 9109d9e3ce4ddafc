"""GroupCommit: concurrent callers share one write_multi; a lone caller writes at
once; a failed write fails every caller in it and stores none of their messages;
batches stay within max_messages without splitting a caller's messages.

On real backends: the App Engine SDK's memcache stub (testbed) and a real
memcached (through a PooledClient: the callers are threads). Writes in flight
are held open by a cache wrapper's gate, not by sleeps; who waits is read from
the Condition the callers wait on.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from tests.support.seams import CacheWrapper, GatedAddMulti, StoresOnlyTheFirst, drain, existing_queue, start_held_write
from tests.support.threads import InThread, RecordingCondition, arrive_in_order, run_on_threads

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
from clickqueue.codec import FRAME_MESSAGES


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


def ids(caller: str, count: int) -> list[dict[str, str]]:
    return [{"id": f"{caller}-{n}"} for n in range(count)]


def writing(group: GroupCommit, messages: list):
    """A call of ``group.write_multi(messages)``, for a thread of its own."""
    return lambda: group.write_multi(messages)


def messages_of(*batches: list) -> list:
    return [message for batch in batches for message in batch]


def test_a_lone_caller_writes_at_once_in_one_write_multi(thread_safe_cache):
    cache = CountingCache(existing_queue(thread_safe_cache))
    condition = RecordingCondition()
    group = GroupCommit(Queue("q", cache), max_wait_seconds=60, condition=condition)

    group.write_multi(ids("alone", 3))
    group.write_multi(ids("next", 1))  # one after the other: alone too

    assert condition.waits == 0, "a caller with no write in flight waited"
    assert cache.calls == Counter({"incr": 2, "add_multi": 2})
    assert drain(Queue("q", thread_safe_cache)) == ids("alone", 3) + ids("next", 1)


def gated_group(cache, gate_class=GatedAddMulti, **options) -> tuple[GatedAddMulti, RecordingCondition, GroupCommit]:
    """A GroupCommit on queue "q" through a gate, waiting on a RecordingCondition, up to a minute for company."""
    gate = gate_class(existing_queue(cache), **options.pop("gate", {}))
    condition = RecordingCondition()
    return gate, condition, GroupCommit(Queue("q", gate), condition=condition, **{"max_wait_seconds": 60, **options})


def test_callers_arriving_during_a_write_share_the_next_write_multi(thread_safe_cache):
    gate, condition, group = gated_group(thread_safe_cache)
    first = start_held_write(gate, writing(group, ids("first", 3)))
    batches = [ids(f"caller{n}", 2) for n in range(15)]
    followers = arrive_in_order(condition, [writing(group, batch) for batch in batches])

    gate.release.set()

    assert [thread.outcome() for thread in [first, *followers]] == [None] * 16
    assert gate.calls == [3, 30], "16 callers, 2 write_multi calls"
    assert drain(Queue("q", thread_safe_cache)) == ids("first", 3) + messages_of(*batches), "in arrival order"


def test_a_leader_waits_for_company_no_longer_than_max_wait_seconds(testbed):
    gate, _, group = gated_group(wrap_client(None), max_wait_seconds=0.05)
    first = start_held_write(gate, writing(group, ids("held", 1)))

    second = InThread(writing(group, ids("second", 2)))
    second.start()

    assert second.outcome() is None, "written while the first write is still held"
    assert first.is_alive()
    gate.release.set()
    assert first.outcome() is None
    assert sorted(m["id"] for m in drain(Queue("q", wrap_client(None)))) == ["held-0", "second-0", "second-1"]


def fill_a_batch_exactly(group, gate, condition) -> InThread:
    """With one write held in flight: callers of 4 and 6 fill a batch of 10 exactly,
    and return; the held write's thread is returned, still in flight."""
    held = start_held_write(gate, writing(group, ids("held", 1)))
    [b] = arrive_in_order(condition, [writing(group, ids("b", 4))])
    c = InThread(writing(group, ids("c", 6)))
    c.start()
    assert (b.outcome(), c.outcome()) == (None, None), "a batch filled exactly waited for the write in flight"
    return held


def test_callers_that_fill_a_batch_exactly_share_it_and_it_goes_out_at_once(thread_safe_cache):
    gate, condition, group = gated_group(thread_safe_cache, max_messages=10)
    held = fill_a_batch_exactly(group, gate, condition)

    gate.release.set()

    assert held.outcome() is None
    assert gate.calls == [1, 10]


def test_a_caller_after_a_full_batch_still_waits_for_the_write_in_flight(thread_safe_cache):
    gate, condition, group = gated_group(thread_safe_cache, max_messages=10)
    held = fill_a_batch_exactly(group, gate, condition)

    [d] = arrive_in_order(condition, [writing(group, ids("d", 1))])
    gate.release.set()

    assert (held.outcome(), d.outcome()) == (None, None)
    assert gate.calls == [1, 10, 1]


def test_batches_hold_at_most_max_messages_and_never_split_a_caller(thread_safe_cache):
    """With a write held in flight: callers of 4 and 4 share a batch; the next 4 would
    take it past 10, so it is written and the 4 open another; 7 likewise; 25, over
    max_messages alone, is written at once in one write_multi of its own."""
    gate, condition, group = gated_group(thread_safe_cache, max_messages=10)
    held = start_held_write(gate, writing(group, ids("held", 1)))
    b, c = arrive_in_order(condition, [writing(group, ids("b", 4)), writing(group, ids("c", 4))])
    [d] = arrive_in_order(condition, [writing(group, ids("d", 4))])
    assert (b.outcome(), c.outcome()) == (None, None), "a full batch does not wait for the write in flight"
    [e] = arrive_in_order(condition, [writing(group, ids("e", 7))])
    assert d.outcome() is None
    f = InThread(writing(group, ids("f", 25)))
    f.start()
    assert (e.outcome(), f.outcome()) == (None, None)

    gate.release.set()

    assert held.outcome() is None
    sizes = gate.calls
    assert sizes[:3] == [1, 8, 4] and sorted(sizes[3:]) == [7, 25], "e's and f's writes race: either goes first"
    received = drain(Queue("q", thread_safe_cache))
    assert received[:13] == ids("held", 1) + ids("b", 4) + ids("c", 4) + ids("d", 4)
    assert received[13:] in (ids("e", 7) + ids("f", 25), ids("f", 25) + ids("e", 7))


def test_every_caller_of_a_failed_write_gets_the_error_and_none_of_their_messages_is_stored(thread_safe_cache):
    gate, condition, group = gated_group(thread_safe_cache, gate={"failing": (1,)})
    first = start_held_write(gate, writing(group, ids("first", 2)))
    failed = arrive_in_order(condition, [writing(group, ids(f"failed{n}", 3)) for n in range(6)])

    gate.release.set()

    assert first.outcome() is None
    errors = [thread.outcome() for thread in failed]
    assert all(isinstance(error, GroupWriteError) for error in errors), errors
    assert [(error.stored, error.unknown, error.total, error.callers) for error in errors] == [([], [], 3, 6)] * 6
    assert all(isinstance(error.cause, CacheUnavailableError) for error in errors)
    assert len({id(error) for error in errors}) == 6, "each caller raises an error of its own"

    group.write_multi(ids("after", 2))  # a caller after the failed batch

    assert gate.calls[:3] == [2, 18, 2]
    assert drain(Queue("q", thread_safe_cache)) == ids("first", 2) + ids("after", 2)


def test_an_incomplete_write_tells_each_caller_which_of_its_own_messages_were_stored(thread_safe_cache):
    gate, condition, group = gated_group(thread_safe_cache, StoresOnlyTheFirst)
    first = start_held_write(gate, writing(group, ids("first", 1)))
    # the shared write is two frames: stored's 31 messages and partly's first, then partly's other two
    stored, partly = arrive_in_order(
        condition, [writing(group, ids("stored", FRAME_MESSAGES - 1)), writing(group, ids("partly", 3))]
    )

    gate.release.set()

    assert (first.outcome(), stored.outcome()) == (None, None), "all of its messages were stored"
    error = partly.outcome()
    assert isinstance(error, GroupWriteError)
    assert (error.stored, error.unknown, error.total) == ([0], [1, 2], 3)
    assert drain(Queue("q", thread_safe_cache)) == ids("first", 1) + ids("stored", FRAME_MESSAGES - 1) + ids("partly", 1)


def test_a_message_the_queue_refuses_fails_only_its_own_caller(testbed):
    gate, condition, group = gated_group(wrap_client(None))
    first = start_held_write(gate, writing(group, ids("first", 1)))
    bad_batch = [*ids("bad", 1), {"id": float("nan")}]
    good, bad, also_good = arrive_in_order(
        condition, [writing(group, ids("good", 2)), writing(group, bad_batch), writing(group, ids("also-good", 3))]
    )

    gate.release.set()

    assert (first.outcome(), good.outcome(), also_good.outcome()) == (None, None, None)
    assert isinstance(bad.outcome(), MessageEncodingError)
    assert sorted(gate.calls) == [1, 2, 3], "refused together, written caller by caller"
    received = sorted(m["id"] for m in drain(Queue("q", wrap_client(None))))
    assert received == sorted(m["id"] for m in ids("first", 1) + ids("good", 2) + ids("also-good", 3))


@pytest.mark.slow
def test_callers_over_max_batch_bytes_together_are_written_one_by_one_each_whole(testbed):
    big = "x" * (MAX_MESSAGE_BYTES - 100)
    per_caller = MAX_BATCH_BYTES // 2 // len(big) + 1  # two callers' messages exceed one write_multi
    gate, condition, group = gated_group(wrap_client(None))
    first = start_held_write(gate, writing(group, ids("first", 1)))
    batches = [[{"id": f"{name}-{n}", "pad": big} for n in range(per_caller)] for name in "ab"]
    callers = arrive_in_order(condition, [writing(group, batch) for batch in batches])

    gate.release.set()

    assert [thread.outcome() for thread in [first, *callers]] == [None] * 3
    assert sorted(gate.calls) == [1, per_caller, per_caller]
    received = Counter(m["id"].split("-")[0] for m in drain(Queue("q", wrap_client(None))))
    assert received == {"first": 1, "a": per_caller, "b": per_caller}


class RaisesOnAddMulti(GatedAddMulti):
    def stored_part(self, number, values, expire_seconds):
        raise RuntimeError("a bug in the cache wrapper")


def test_a_leader_whose_write_raises_a_bug_raises_it_and_its_followers_cannot_tell(testbed):
    gate, condition, group = gated_group(wrap_client(None), RaisesOnAddMulti)
    first = start_held_write(gate, writing(group, ids("first", 1)))
    leader, follower = arrive_in_order(
        condition, [writing(group, ids("leader", 1)), writing(group, ids("follower", 2))]
    )

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
    ("options", "message"),
    [
        ({"max_messages": 0}, "invalid max_messages 0: must be 1 to 10000"),
        ({"max_messages": MAX_BATCH_MESSAGES + 1}, "invalid max_messages 10001: must be 1 to 10000"),
        ({"max_wait_seconds": -0.001}, "invalid max_wait_seconds -0.001: must be 0 to 60"),
        ({"max_wait_seconds": 60.001}, "invalid max_wait_seconds 60.001: must be 0 to 60"),
    ],
    ids=["no-messages", "over-the-queue's-batch", "negative-wait", "wait-over-a-minute"],
)
def test_limits_outside_what_one_write_takes_are_refused(testbed, options, message):
    with pytest.raises(InvalidArgumentError) as refused:
        GroupCommit(Queue("q"), **options)

    [(argument, value)] = options.items()
    assert (refused.value.argument, refused.value.value, str(refused.value)) == (argument, value, message)


@pytest.mark.parametrize(
    "options",
    [{"max_messages": 1}, {"max_messages": MAX_BATCH_MESSAGES}, {"max_wait_seconds": 0}, {"max_wait_seconds": 60}],
    ids=["one-message", "the-queue's-batch", "no-wait", "a-minute"],
)
def test_limits_at_their_edges_are_accepted(testbed, options):
    group = GroupCommit(Queue("q"), **options)

    assert {name: getattr(group, name) for name in options} == options


def test_by_default_a_leader_waits_2_ms_for_up_to_500_messages(testbed):
    group = GroupCommit(Queue("q"))

    assert (group.max_wait_seconds, group.max_messages) == (0.002, 500)


class RefusesKeys(CacheWrapper):
    """A cache that refuses every key its writes name, as an adapter refuses a key its backend cannot store."""

    def add_multi(self, values, expire_seconds=0):
        raise InvalidArgumentError("cache key", next(iter(values)), "not storable here")


def test_a_write_that_raises_a_queue_error_of_no_known_outcome_leaves_every_message_unknown(testbed):
    group = GroupCommit(Queue("q", RefusesKeys(existing_queue(wrap_client(None)))))

    with pytest.raises(GroupWriteError) as failed:
        group.write_multi(ids("a", 3))

    assert isinstance(failed.value.cause, InvalidArgumentError)
    assert (failed.value.stored, failed.value.unknown, failed.value.callers) == ([], [0, 1, 2], 1)


def test_of_two_callers_sharing_a_batch_only_the_one_whose_message_is_refused_fails(testbed):
    gate, condition, group = gated_group(wrap_client(None))
    first = start_held_write(gate, writing(group, ids("first", 1)))
    good, bad = arrive_in_order(condition, [writing(group, ids("good", 2)), writing(group, [{"id": float("nan")}])])

    gate.release.set()

    assert (first.outcome(), good.outcome()) == (None, None)
    assert isinstance(bad.outcome(), MessageEncodingError)
    assert sorted(m["id"] for m in drain(Queue("q", wrap_client(None)))) == ["first-0", "good-0", "good-1"]


def test_a_caller_whose_own_write_fails_after_its_batch_was_refused_learns_none_was_stored(memcache_rpc_faults):
    gate, condition, group = gated_group(wrap_client(None))
    first = start_held_write(gate, writing(group, ids("first", 1)))
    good, bad = arrive_in_order(condition, [writing(group, ids("good", 2)), writing(group, [{"id": float("nan")}])])
    memcache_rpc_faults.fail_next("BatchIncrement")  # the good caller's own write, after the refusal

    gate.release.set()

    assert first.outcome() is None
    assert isinstance(bad.outcome(), MessageEncodingError)
    error = good.outcome()
    assert isinstance(error, GroupWriteError) and isinstance(error.cause, CacheUnavailableError)
    assert (error.stored, error.unknown, error.total, error.callers) == ([], [], 2, 1)


THREADS = 16
ROUND_TRIP_SECONDS = 0.001
"""What a cache call costs beyond this machine's loopback: about App Engine memcache's round trip."""


class Distant(CacheWrapper):
    """A cache a network away: each write call takes ``ROUND_TRIP_SECONDS`` more. On loopback
    a write can end before the next caller arrives, so how many callers share one would
    hang on the scheduler; with production's round trip it does not."""

    def incr(self, key, delta):
        time.sleep(ROUND_TRIP_SECONDS)
        return self.inner.incr(key, delta)

    def add_multi(self, values, expire_seconds=0):
        time.sleep(ROUND_TRIP_SECONDS)
        return self.inner.add_multi(values, expire_seconds)


@pytest.mark.slow
@pytest.mark.parametrize(("calls", "per_call"), [(500, 1), (40, 50)], ids=["single-events", "batches-of-50"])
def test_many_threads_through_one_group_commit_store_every_message_once(thread_safe_cache, calls, per_call):
    cache = CountingCache(Distant(existing_queue(thread_safe_cache)))
    group = GroupCommit(Queue("q", cache))
    sent = {(thread, call): ids(f"t{thread}-c{call}", per_call) for thread in range(THREADS) for call in range(calls)}

    def write(thread: int) -> None:
        for call in range(calls):
            group.write_multi(sent[thread, call])

    run_on_threads(write, THREADS)
    writes = cache.calls["incr"]

    received = Counter(message["id"] for message in drain(Queue("q", thread_safe_cache), max_items=1000))
    assert received == Counter(message["id"] for message in messages_of(*sent.values())), "each once"
    print(f"{len(sent)} callers, {writes} write_multi calls ({cache.calls})")
    assert cache.calls["add_multi"] == writes, "each write_multi: one incr, one add_multi"
    assert writes * 4 <= len(sent), "callers share write_multi calls"
