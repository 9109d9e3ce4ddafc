"""Faults from the fault model (see docs/protocol.md), each on real backends.

The rule throughout: no message delivered twice (but under its own lease id),
no stall, and whatever is lost is counted. The regression tests below failed
on the code before the fault-model work (commit 7ef977f).
"""

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from collections import defaultdict
from contextlib import closing

import pytest
from tests.support.processes import REPO_ROOT, stop_process, wait_until
from tests.support.seams import CacheWrapper, PauseAfterIncr, drain
from tests.support.fault_proxy import FaultProxy
from tests.support.queue_workers import memcached_client, message_ids, run_on_memcached

from clickqueue import (
    MAX_CLAIM_ITEMS,
    CacheUnavailableError,
    ContentionError,
    CountingCache,
    Queue,
    TooManyLeasesError,
    WriteIncompleteError,
    wrap_client,
)
from clickqueue.codec import FRAME_MESSAGES, TAKEN
from clickqueue.context import MAX_CACHE_CALLS_PER_CALL
from clickqueue.recovery import REPAIR_MARGIN
from clickqueue.state import MAX_LEASES, ReadState
from clickqueue.taking import MAX_EMPTY_ROUNDS

WRITERS, READERS, PER_WRITER = 4, 3, 3000


def ids(messages):
    return [message["id"] for message in messages]


def lease_all(queue):
    """Lease and ack until the queue is empty; return (lease id, message) pairs."""
    delivered = []
    while lease := queue.lease(100, seconds=300):
        delivered += [(lease.lease_id, message) for message in lease.messages]
        lease.ack()
    return delivered


def flush(cache_client):
    if cache_client is None:
        from google.appengine.api import memcache

        memcache.flush_all()
    else:
        cache_client.flush_all(noreply=False)


# -- a reader killed while holding a lease ---------------------------------------------------

LEASE_AND_HANG = textwrap.dedent(
    """
    import json, sys, time
    from pymemcache.client.base import Client
    from clickqueue import Queue
    lease = Queue("q", Client(("127.0.0.1", int(sys.argv[1])))).lease(100, seconds=1)
    print(json.dumps({"lease_id": lease.lease_id, "messages": lease.messages}), flush=True)
    time.sleep(600)
    """
)


@pytest.mark.slow
def test_lease_of_a_killed_reader_is_delivered_again(memcached_server, memcached_client):
    queue = Queue("q", memcached_client)
    queue.write_multi([{"id": n} for n in range(10)])
    reader = subprocess.Popen(
        [sys.executable, "-c", LEASE_AND_HANG, str(memcached_server.port)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        held = json.loads(reader.stdout.readline())
        os.killpg(reader.pid, signal.SIGKILL)
        reader.wait(timeout=30)
    finally:
        reader.stdout.close()
        stop_process(reader)
    assert reader.returncode == -signal.SIGKILL
    assert not queue.lease(100, seconds=30), "the lease still holds before its deadline"
    redelivered = wait_until(lambda: queue.lease(100, seconds=30) or None, 30, message="lease redelivery")
    assert (redelivered.lease_id, redelivered.attempt) == (held["lease_id"], 2)
    assert redelivered.messages == held["messages"] == [{"id": n} for n in range(10)]
    assert redelivered.ack() is True
    assert queue.read() is None


# -- lost counters and state, one step at a time on every backend -----------------------------


def test_lost_write_counter_is_repaired_above_every_stored_slot_and_nothing_is_lost(make_queue, cache):
    queue = make_queue()
    queue.write_multi(range(10))
    assert queue.read_multi(4) == [0, 1, 2, 3]
    cache.delete_multi([queue.keys.write_counter(0)])
    queue.write_multi(range(10, 15))
    assert int(cache.get_multi([queue.keys.write_counter(0)])[queue.keys.write_counter(0)]) == 10 + REPAIR_MARGIN + 5
    assert drain(queue) == list(range(4, 15))
    stats = queue.stats()
    assert (stats.resets, stats.lost, stats.depth, stats.written, stats.read) == (1, 0, 0, 15, 15)
    assert stats.gapped == REPAIR_MARGIN, "the margin was recorded as a gap, not counted as lost"


def test_stats_after_a_lost_state_count_from_its_recovery_window(make_queue, cache):
    """The new state starts ``RECOVERY_SLOTS`` below the counter: what lies below is
    not the queue's any more, and the window counts as a gap."""
    queue = make_queue()
    queue.write("first")
    cache.incr(queue.keys.write_counter(0), 1500)  # writers that died after their incr
    cache.delete_multi([queue.keys.state])
    queue.write("m")
    assert queue.read_multi(1) == ["m"]
    stats = queue.stats()
    assert (stats.depth, stats.written, stats.read, stats.gapped, stats.lost, stats.resets) == (0, 1, 1, 999, 0, 1)


def test_stats_leave_out_what_a_lost_write_counter_handed_out_until_a_read_repairs_it(make_queue, cache):
    """A documented limit: ``stats()`` is one read and repairs nothing, so with a counter
    gone it counts that shard only as far as the state knows (the claims, and the
    counter a claim saw): messages written since the last claim are neither depth nor lost."""
    queue = make_queue()
    queue.write("a")
    queue.write("b")
    assert queue.read_multi(1) == ["a"]  # the claim saw the counter at 2
    queue.write("c")
    queue.write("d")
    cache.delete_multi([queue.keys.write_counter(0)])
    stats = queue.stats()
    assert (stats.written, stats.read, stats.depth, stats.lost) == (2, 1, 1, 0)
    assert queue.read_multi(100) == ["b", "c", "d"]
    stats = queue.stats()
    assert (stats.written, stats.read, stats.depth, stats.lost, stats.resets) == (4, 4, 0, 0, 1)


def test_write_counter_repaired_above_a_claim_made_from_its_old_value(make_queue, cache):
    """A reader read the counter at 10 just before it vanished and the state just
    after it was repaired (two servers, read one after the other): its claim up
    to slot 10 lands, and new writes must still go above slot 10."""
    queue = make_queue()
    queue.write_multi(range(10))
    cache.delete_multi([queue.keys.write_counter(0)])
    queue.write("after repair")
    raw_state, token = cache.gets_multi([queue.keys.state])[queue.keys.state]
    state = ReadState.from_bytes(queue.keys.state, raw_state, shards=1)
    state.claim([10], max_items=100)
    assert cache.cas_multi({queue.keys.state: (state.to_bytes(), token)}) == {queue.keys.state: True}
    cache.delete_multi(queue.keys.slots(0, range(1, 11)))  # the stale reader took them
    assert drain(queue) == ["after repair"]
    stats = queue.stats()
    assert (stats.lost, stats.resets, stats.read) == (0, 1, 11)


def test_non_numeric_write_counter_is_replaced_and_counted_as_a_reset(make_queue, cache):
    queue = make_queue()
    queue.write_multi(range(3))
    counter = queue.keys.write_counter(0)
    token = cache.gets_multi([counter])[counter][1]
    cache.cas_multi({counter: (b"not a number", token)})
    queue.write_multi(range(3, 6))
    assert drain(queue) == list(range(6))
    assert queue.stats().resets == 1


def test_write_counter_behind_the_claims_is_repaired_before_anything_is_claimed(make_queue, cache):
    """The slots below the claims still hold their marks (a lease's, which never expire;
    a read's TAKEN marks last a second, after which such a write is the documented limit)."""
    queue = make_queue()
    queue.write_multi(range(5))
    held = queue.lease(5, seconds=300)
    assert held.messages == list(range(5))
    counter = queue.keys.write_counter(0)
    token = cache.gets_multi([counter])[counter][1]
    cache.cas_multi({counter: (b"0", token)})  # went back below the claims (5)
    queue.write_multi(range(5, 8))
    assert held.ack()
    assert drain(queue) == list(range(5, 8))
    assert queue.stats().lost == 0


def test_write_counter_gone_back_below_slots_a_claim_saw_is_repaired_and_strands_nothing(make_queue, cache):
    """An older version of the counter (from a server a client had marked dead) equals
    the claims but lies below slots already handed out: they must still be read."""
    queue = make_queue()
    queue.write_multi(range(5))
    assert queue.read_multi(2) == [0, 1]
    counter = queue.keys.write_counter(0)
    token = cache.gets_multi([counter])[counter][1]
    cache.cas_multi({counter: (b"2", token)})
    assert drain(queue) == [2, 3, 4]
    stats = queue.stats()
    assert (stats.depth, stats.lost, stats.resets) == (0, 0, 1)


def test_deleted_state_restarts_below_the_write_counter_and_still_delivers_recent_messages(make_queue, cache):
    queue = make_queue()
    queue.write_multi(range(10))
    assert queue.read_multi(4) == [0, 1, 2, 3]
    cache.delete_multi([queue.keys.state])
    queue.write_multi(range(10, 13))
    assert drain(queue) == list(range(4, 13)), "nothing read twice, nothing recent dropped"
    stats = queue.stats()
    assert (stats.resets, stats.lost) == (1, 0)


def test_flushed_cache_restarts_the_queue_and_counts_the_reset(make_queue, cache_client):
    queue = make_queue()
    queue.write_multi(range(10))
    assert queue.read_multi(4) == [0, 1, 2, 3]
    flush(cache_client)
    queue.write_multi(range(10, 13))
    assert drain(queue) == [10, 11, 12]
    assert queue.stats().resets == 2, "the state, and the write counter"


@pytest.mark.parametrize("survivor", ["write counter", "generation marker"])
def test_a_process_that_never_saw_the_queue_counts_a_lost_state_as_a_reset(make_queue, cache, survivor):
    queue = make_queue()
    queue.write("x")
    assert queue.read() == "x"
    lost = [queue.keys.state] + ([queue.keys.write_counter(0)] if survivor == "generation marker" else [])
    cache.delete_multi(lost)
    newcomer = make_queue()
    assert newcomer.read_multi() == []
    assert newcomer.stats().resets >= 1


def test_evicted_message_is_counted_as_lost(make_queue, cache):
    queue = make_queue()
    for message in range(5):
        queue.write(message)
    cache.delete_multi([queue.keys.slot(0, 2), queue.keys.slot(0, 4)])
    assert drain(queue) == [0, 2, 4]
    stats = queue.stats()
    assert (stats.skipped, stats.lost, stats.written, stats.read) == (2, 2, 5, 3)


def test_evicted_frame_is_counted_as_lost_with_every_message_in_it(make_queue, cache):
    queue = make_queue()
    queue.write_multi(["a", "b"])
    queue.write_multi(range(5))  # one frame, slots 3 to 7
    queue.write("c")
    cache.delete_multi([queue.keys.slot(0, 3)])
    assert drain(queue) == ["a", "b", "c"]
    stats = queue.stats()
    assert (stats.skipped, stats.lost, stats.written, stats.read) == (5, 5, 8, 3)


def test_a_counter_pushed_far_ahead_costs_each_call_a_bounded_number_of_cache_calls(make_queue, cache):
    """Found by review: a counter pushed 10,000,000 ahead made one lease() loop past
    any budget and write 1.29 M tombstones."""
    queue = make_queue()
    queue.write("x")
    assert queue.read() == "x"
    cache.incr(queue.keys.write_counter(0), 10_000_000)
    cache.calls.clear()
    assert not queue.lease(100, seconds=30)
    assert cache.total() <= 40
    assert queue.stats().skipped <= MAX_EMPTY_ROUNDS * (100 + MAX_CLAIM_ITEMS)


# -- regressions of the fault-model work, one test each -----------------------------------------


def test_state_and_counter_lost_together_never_lease_a_message_again_under_a_new_id(make_queue, cache):
    """A server holding both the state and the write counter restarted, while the
    slots on another server survived, one batch leased."""
    queue = make_queue()
    queue.write_multi([{"id": n} for n in range(10)])
    held = queue.lease(5, seconds=300)
    cache.delete_multi([queue.keys.state, queue.keys.write_counter(0)])
    newcomer = make_queue()
    newcomer.write_multi([{"id": n} for n in range(10, 13)])
    delivered = lease_all(newcomer)
    assert not set(ids(held.messages)) & set(ids(message for _lease, message in delivered))
    assert sorted(ids(message for _lease, message in delivered)) == list(range(5, 13))
    assert newcomer.stats().resets >= 1


def test_a_counter_lost_with_its_newest_slots_is_never_set_back_under_a_waiting_reader(make_queue, cache):
    """The write counter and the three slots it had just handed out vanished
    together, while a reader had read the state and counter but not yet claimed."""
    queue = make_queue()
    queue.write_multi(["a", "b", "c"])
    counter = queue.keys.write_counter(0)
    found = cache.gets_multi([queue.keys.state, counter])
    stale_state, stale_token = found[queue.keys.state]
    cache.delete_multi([counter, *queue.keys.slots(0, [1, 2, 3])])
    queue.write("after")
    assert int(cache.get_multi([counter])[counter]) > 3, "no slot number is handed out twice"
    waiting = ReadState.from_bytes(queue.keys.state, stale_state, shards=1)
    waiting.claim([3], max_items=100)
    assert cache.cas_multi({queue.keys.state: (waiting.to_bytes(), stale_token)}) == {queue.keys.state: False}
    assert drain(queue) == ["after"]
    stats = queue.stats()
    assert stats.resets == 1
    assert stats.lost + stats.gapped >= 3, "the three lost messages are within the bound the counts give"


def test_reader_tombstone_lost_to_an_rpc_error_never_strands_a_message(testbed, memcache_rpc_faults, clock):
    reader = Queue("q", clock=clock)
    reader.write("first")

    def read_while_the_writer_is_paused():
        memcache_rpc_faults.fail_next("Set", key=reader.keys.slot(0, 2))  # the reader's tombstone add
        assert reader.read_multi() == ["first"]

    writer = Queue("q", PauseAfterIncr(wrap_client(None), read_while_the_writer_is_paused), clock=clock)
    writer.write("in flight")
    assert memcache_rpc_faults.failed == ["Set"]
    assert drain(reader) == ["in flight"]
    stats = reader.stats()
    assert (stats.lost, stats.read, stats.written) == (0, 2, 2)


def test_slot_read_failing_with_an_rpc_error_leaves_every_message_for_the_next_lease(
    testbed, memcache_rpc_faults, clock
):
    """App Engine answers a failed get with {}: read as "all empty", the lease came
    back empty, was acked, and its messages were never read."""
    queue = Queue("q", clock=clock)
    queue.write_multi(["a", "b", "c"])
    for _read_and_its_half in range(2):  # the adapter makes a failed read again in halves
        memcache_rpc_faults.fail_next("Get", key=queue.keys.slot(0, 1))
    with pytest.raises(CacheUnavailableError):
        queue.lease(10, seconds=30)
    assert memcache_rpc_faults.failed == ["Get", "Get"]
    assert queue.lease(10, seconds=30).messages == ["a", "b", "c"]


def test_add_whose_reply_was_lost_is_stored_once_on_app_engine(testbed, memcache_rpc_faults):
    queue = Queue("q")
    queue.write("warm up")
    assert queue.read() == "warm up"
    memcache_rpc_faults.fail_next("Set", key=queue.keys.slot(0, 2), after_applying=True)
    queue.write("once")
    assert memcache_rpc_faults.failed == ["Set"]
    assert drain(queue) == ["once"]
    stats = queue.stats()
    assert (stats.written, stats.read, stats.lost) == (2, 2, 0)


def test_add_whose_reply_was_lost_is_stored_once_on_memcached(memcached_server, memcached_client):
    from pymemcache.client.base import Client

    proxy = FaultProxy(memcached_server.address)
    with closing(Client(proxy.address, timeout=5)) as client:
        cache = wrap_client(client)

        def lose_the_add_reply():
            proxy.lose_replies = 1

        queue = Queue("q", PauseAfterIncr(cache, lose_the_add_reply))
        queue.write("once")
        assert proxy.cut == 1
        assert drain(Queue("q", memcached_client)) == ["once"]
    proxy.close()


class RaceBeforeCounterAdd(CacheWrapper):
    """A Cache that runs ``race`` once, just before the next ``add_multi`` of ``counter``."""

    def __init__(self, inner, counter, race):
        super().__init__(inner)
        self.counter, self.race = counter, race

    def add_multi(self, values, expire_seconds=0):
        if self.counter in values and self.race is not None:
            race, self.race = self.race, None
            race()
        return self.inner.add_multi(values, expire_seconds)


class EverySlotHeldBySomeoneElse(CacheWrapper):
    """Every slot a writer takes already holds another party's value: each attempt
    collides and repairs the counter, and no write can ever land."""

    def add_multi(self, values, expire_seconds=0):
        return {key: False for key in values} if any(":m:" in key for key in values) else self.inner.add_multi(values, expire_seconds)

    def get_multi(self, keys):
        found = self.inner.get_multi(keys)
        return found | {key: b'"someone else\'s"' for key in keys if ":m:" in key}


def test_a_call_gives_up_with_contention_error_once_it_spent_its_cache_call_budget(testbed, clock):
    cache = CountingCache(EverySlotHeldBySomeoneElse(wrap_client(None)))
    queue = Queue("q", cache, clock=clock)
    with pytest.raises(ContentionError) as raised:
        queue.write("never lands")
    assert MAX_CACHE_CALLS_PER_CALL < cache.total() <= MAX_CACHE_CALLS_PER_CALL + 32  # checks come < 32 calls apart
    assert raised.value.key == queue.keys.state, "it tripped in the counter's repair"


def test_a_counter_repair_that_lost_its_race_records_no_gap(make_queue, cache, clock):
    """Two writers repair a lost counter; the one whose add loses must not leave its
    margin as a gap: 1,030 messages written meanwhile lie there, and an eviction
    among them must count as lost, not as a gap."""
    queue = make_queue()
    queue.write({"id": "first"})
    counter = queue.keys.write_counter(0)
    cache.delete_multi([counter])

    def another_repair_wins_and_writers_go_on():
        cache.add_multi({counter: b"1"})
        make_queue().write_multi([{"id": n} for n in range(1030)])

    Queue("q", RaceBeforeCounterAdd(cache, counter, another_repair_wins_and_writers_go_on), clock=clock).write(
        {"id": "late"}
    )
    cache.delete_multi([queue.keys.slot(0, 2)])  # the first frame of the 1,030 (32 of them), evicted
    received = ids(drain(queue, 1000))
    assert len(received) == 1000 and not set(range(FRAME_MESSAGES)) & set(received)
    stats = queue.stats()
    assert (stats.lost, stats.gapped) == (FRAME_MESSAGES, 0)


def test_a_takeover_whose_reply_was_lost_never_passes_another_holders_takeover_for_its_own(
    testbed, memcache_rpc_faults, clock
):
    """Found by the simulation (seed 36): two readers plan the same takeover (attempt 2);
    the other lands, this one's compare-and-set fails and its reply is lost. Checking
    the state for "attempt 2 of this lease" would take the other's for its own."""
    queue = Queue("q", clock=clock)
    queue.write_multi(["a", "b"])
    first = queue.lease(10, seconds=30)
    clock.advance(31)
    theirs = []

    class TheyTakeOverFirst(CacheWrapper):
        def cas_multi(self, values, expire_seconds=0):
            if queue.keys.state in values and not theirs:
                theirs.append(Queue("q", clock=clock).lease(10, seconds=30))
                memcache_rpc_faults.fail_next("Set", key=queue.keys.state, after_applying=True)
            return self.inner.cas_multi(values, expire_seconds)

    mine = Queue("q", TheyTakeOverFirst(wrap_client(None)), clock=clock).lease(10, seconds=30)
    assert (theirs[0].lease_id, theirs[0].attempt, theirs[0].messages) == (first.lease_id, 2, ["a", "b"])
    assert memcache_rpc_faults.failed == ["Set"]
    assert not mine, "the batch went to one holder of attempt 2 only"


def test_stale_ack_after_a_flush_deletes_nothing_written_after_it(make_queue, cache, cache_client):
    queue = make_queue()
    queue.write("before the flush")
    stale = queue.lease(10, seconds=300)
    flush(cache_client)
    queue.write_multi(["after 1", "after 2"])
    assert stale.ack() is False
    assert drain(queue) == ["after 1", "after 2"]


@pytest.mark.slow
def test_leases_on_64_shards_end_in_too_many_leases_before_the_state_outgrows_a_value(memcached_client):
    queue = Queue("q", memcached_client, shards=64)
    for _shard in range(64):
        queue.write_multi(range(300))  # a batch per shard, in turn: 19,200 messages
    leases = []
    with pytest.raises(TooManyLeasesError):
        for _ in range(MAX_LEASES):
            leases.append(queue.lease(64, seconds=300))
            assert len(leases[-1]) == 64
    assert 100 < len(leases) < MAX_LEASES
    assert all(lease.ack() for lease in leases[:10])
    assert len(queue.lease(64, seconds=300)) == 64, "the queue works on once leases are settled"


def test_memcached_batch_cut_mid_write_is_stored_once(memcached_server, memcached_client):
    from pymemcache.client.base import Client

    proxy = FaultProxy(memcached_server.address)
    messages = [{"id": n, "pad": "x" * 50} for n in range(4)]
    with closing(Client(proxy.address, timeout=5)) as client:
        queue = Queue("q", wrap_client(client))
        queue.write("warm up")
        first_two = b"".join(
            b"ms %s %d T0 ME\r\n%s\r\n" % (key.encode(), len(value), value)
            for key, value in zip(
                queue.keys.slots(0, [2, 3]), [json.dumps(m, separators=(",", ":")).encode() for m in messages]
            )
        )

        def cut_the_add_after_two_messages():
            proxy.forward_request_bytes = len(first_two)

        Queue("q", PauseAfterIncr(wrap_client(client), cut_the_add_after_two_messages)).write_multi(messages)
        assert proxy.cut == 1
    reader = Queue("q", memcached_client)
    assert drain(reader) == ["warm up", *messages]
    stats = reader.stats()
    assert (stats.lost, stats.written, stats.read) == (0, 5, 5)
    proxy.close()


def test_pickled_dict_in_a_leased_slot_neither_crashes_nor_blocks_its_batch(testbed):
    from google.appengine.api import memcache

    queue = Queue("q")
    for message in ["a", "placeholder", "c"]:
        queue.write(message)
    memcache.delete(queue.keys.slot(0, 2))
    memcache.set(queue.keys.slot(0, 2), {"pickled": "dict"})
    with queue.lease(10, seconds=30) as batch:
        assert batch.messages == ["a", "c"]
    assert (queue.stats().lost, queue.stats().leased) == (1, 0)


def test_taken_marks_and_tombstones_are_never_read_as_messages(make_queue, cache):
    queue = make_queue()
    queue.write("a")
    queue.write("b")
    cache.delete_multi([queue.keys.state])  # recovery will read these slots again
    slot_a, slot_b = queue.keys.slots(0, [1, 2])
    tokens = cache.gets_multi([slot_a, slot_b])
    cache.cas_multi({slot_a: (TAKEN, tokens[slot_a][1])})
    assert drain(queue) == ["b"]


# -- the same faults while writer and reader processes run ------------------------------------


def expected_ids():
    return {message_id for writer in range(WRITERS) for message_id in message_ids(writer, PER_WRITER)}


def assert_each_message_had_one_owner(run, written=None):
    owners = defaultdict(set)
    for delivery in run.deliveries:
        owners[delivery.message_id].add(delivery.owner)
    twice = {message_id: sorted(found) for message_id, found in owners.items() if len(found) > 1}
    assert not twice, f"{len(twice)} messages delivered to two owners, e.g. {list(twice.items())[:3]}"
    assert set(owners) <= (written or expected_ids()), "only written messages were delivered"


def assert_no_stall(queue, run):
    """Messages written after the run are all delivered, and so is what the run's readers
    left, once: they stop after a few empty reads running, which a reader walking a
    repaired counter's gap can get while messages still wait above it."""
    after = [f"after-{n}" for n in range(100)] + ["after-last"]
    queue.write_multi([{"id": message_id} for message_id in after[:-1]])
    queue.write({"id": after[-1]})
    drained = ids(drain(queue))
    left_by_the_run = [message_id for message_id in drained if message_id not in after]
    assert sorted(message_id for message_id in drained if message_id in after) == sorted(after)
    assert len(left_by_the_run) == len(set(left_by_the_run)), "a message left by the run was delivered twice"
    assert set(left_by_the_run) <= expected_ids() - set(run.received), "only what the run wrote and never delivered"


@pytest.mark.slow
@pytest.mark.parametrize("shards", [1, 4])
def test_write_counters_deleted_mid_run_lose_nothing(memcached_server, memcached_client, tmp_path, shards):
    queue = Queue("load", memcached_client, shards=shards)
    counters = [queue.keys.write_counter(shard) for shard in range(shards)]
    run = run_on_memcached(
        [memcached_server.address], tmp_path, shards, WRITERS, READERS, PER_WRITER,
        during=lambda: memcached_client.delete_many(counters, noreply=False),
    )
    assert sorted(run.received) == sorted(expected_ids())
    stats = queue.stats()
    assert stats.resets >= 1
    assert (stats.lost, stats.depth, stats.leased) == (0, 0, 0)
    assert_no_stall(queue, run)


@pytest.mark.slow
@pytest.mark.parametrize("shards", [1, 4])
def test_state_deleted_mid_run_neither_stalls_nor_duplicates(memcached_server, memcached_client, tmp_path, shards):
    queue = Queue("load", memcached_client, shards=shards)
    run = run_on_memcached(
        [memcached_server.address], tmp_path, shards, WRITERS, READERS, PER_WRITER,
        during=lambda: memcached_client.delete(queue.keys.state, noreply=False),
    )
    assert_each_message_had_one_owner(run)
    assert queue.stats().resets >= 1
    assert_no_stall(queue, run)


@pytest.mark.slow
@pytest.mark.parametrize("shards", [1, 4])
def test_cache_flushed_mid_run_neither_stalls_nor_duplicates(memcached_server, memcached_client, tmp_path, shards):
    run = run_on_memcached(
        [memcached_server.address], tmp_path, shards, WRITERS, READERS, PER_WRITER,
        during=lambda: memcached_client.flush_all(noreply=False),
    )
    assert_each_message_had_one_owner(run)
    queue = Queue("load", memcached_client, shards=shards)
    assert queue.stats().resets >= 1
    assert_no_stall(queue, run)


@pytest.mark.slow
def test_hash_client_node_restarts_and_a_flush_never_deliver_a_message_under_two_lease_ids(
    memcached_cluster, tmp_path
):
    """Three servers behind a HashClient that takes a failing server out of its
    ring (keys remap, then map back); each server restarts empty once and the
    cache is flushed once, while 3 writer and 3 lease-reader processes run."""
    addresses = [server.address for server in memcached_cluster]

    def faults():
        for server in memcached_cluster:
            server.restart()
        with closing(memcached_client(addresses)) as client:
            client.flush_all(noreply=False)

    writers, per_writer = 3, 3400
    run = run_on_memcached(addresses, tmp_path, 1, writers, 3, per_writer, during=faults, lease_only=True)
    written = {message_id for writer in range(writers) for message_id in message_ids(writer, per_writer)}
    assert_each_message_had_one_owner(run, written)
    with closing(memcached_client(addresses)) as client:
        queue = Queue("load", client)
        assert queue.stats().resets >= 1
        queue.write_multi([{"id": f"after-{n}"} for n in range(100)])
        delivered = ids(message for _lease, message in wait_until(lambda: lease_all(queue) or None, 30))
        assert sorted(delivered) == sorted(f"after-{n}" for n in range(100))


# -- eviction in a real memcached --------------------------------------------------------------


@pytest.mark.slow
def test_eviction_in_a_small_memcached_is_counted_as_lost(small_memcached):
    """20 MB of messages into a memcached of 8 MB: the oldest frames are evicted,
    and every message is either read once or counted in ``lost``."""
    with closing(small_memcached.client()) as client:
        queue = Queue("evict", client)
        payload = "x" * 1000
        batch = 3 * FRAME_MESSAGES  # whole frames: all of one size, evicted oldest first
        total = batch * (20_000 // batch)
        for start in range(0, total, batch):
            queue.write_multi([{"id": n, "pad": payload} for n in range(start, start + batch)])
        received = []
        calls = 0
        while queue.stats().depth:
            received += [message["id"] for message in queue.read_multi(1000)]
            calls += 1
        assert calls < 20, "runs of evicted slots are settled in bulk"
        assert len(received) == len(set(received)), "no duplicates"
        stats = queue.stats()
        assert stats.lost > 0, "the small server evicted messages"
        assert len(received) + stats.lost == total == stats.written
        assert stats.read == len(received)


def test_unpickling_is_impossible_even_for_a_pickle_planted_in_the_state(testbed):
    from google.appengine.api import memcache

    class Exploit:
        def __reduce__(self):
            return (os.system, ("false",))

    queue = Queue("q")
    queue.write("x")
    memcache.set(queue.keys.state, Exploit())
    assert pickle.dumps(Exploit())  # it is a real pickle
    assert queue.read() == "x"
    assert queue.stats().resets == 1


# -- lost replies and unknown outcomes, one call at a time on the App Engine stub ----------------


def expiry_seconds(key):
    """How long ``key`` has left to live, from the stub's own record (None: no expiry)."""
    import time

    from google.appengine.api import memcache

    item = memcache.Client().peek(key)
    expires = item.get_expiration_time_sec()
    return None if not expires else expires - time.time()


def test_marks_expire_and_messages_do_not(testbed, clock):
    from clickqueue.taking import TAKEN_SECONDS

    queue = Queue("q", clock=clock, tombstone_seconds=600, max_write_seconds=60)
    for message in ["read", "held", "gone"]:
        queue.write(message)
    assert expiry_seconds(queue.keys.slot(0, 3)) is None, "a message lives until read or evicted"
    assert queue.read() == "read"
    lease = queue.lease(1, seconds=30)
    slow = Queue("q", PauseAfterIncr(wrap_client(None), lambda: queue.read_multi()), clock=clock)
    slow.write("late")  # its slot is tombstoned by the read, then it writes again
    assert 0 < expiry_seconds(queue.keys.slot(0, 1)) <= TAKEN_SECONDS
    assert expiry_seconds(lease.message_keys[0]) is None, "a leased message lives until acked"
    assert 590 < expiry_seconds(queue.keys.slot(0, 4)) <= 600
    assert drain(queue) == ["late"] and lease.ack()


def test_a_claim_whose_reply_was_lost_but_that_landed_delivers_its_slots(testbed, memcache_rpc_faults):
    queue = Queue("q")
    queue.write_multi(["a", "b"])
    memcache_rpc_faults.fail_next("Set", key=queue.keys.state, after_applying=True)
    lease = queue.lease(10, seconds=30)
    assert (lease.messages, memcache_rpc_faults.failed) == (["a", "b"], ["Set"])
    memcache_rpc_faults.fail_next("Set", key=queue.keys.state, after_applying=True)
    queue.write_multi(["c", "d"])
    assert queue.read_multi() == ["c", "d"]
    assert lease.ack() and queue.read() is None


def test_a_claim_that_failed_before_it_was_applied_is_made_again(testbed, memcache_rpc_faults):
    queue = Queue("q")
    queue.write_multi(["a", "b"])
    memcache_rpc_faults.fail_next("Set", key=queue.keys.state)
    assert queue.read_multi() == ["a", "b"]
    assert queue.stats().as_dict() | {"read": 2, "lost": 0} == queue.stats().as_dict()


class LeaseItDuringTheAdd(CacheWrapper):
    """The writer's add is applied, then ``meanwhile`` runs, then the reply is lost."""

    def __init__(self, inner, meanwhile):
        super().__init__(inner)
        self.meanwhile = meanwhile

    def add_multi(self, values, expire_seconds=0):
        applied = self.inner.add_multi(values, expire_seconds)
        if self.meanwhile is not None and any(":m:" in key for key in values):
            meanwhile, self.meanwhile = self.meanwhile, None
            meanwhile()
            return dict.fromkeys(applied)
        return applied


def test_a_write_whose_reply_was_lost_and_whose_message_was_leased_meanwhile_is_stored_once(make_queue, cache):
    queue = make_queue()
    leases = []
    Queue("q", LeaseItDuringTheAdd(cache, lambda: leases.append(queue.lease(10, seconds=30)))).write("once")
    assert leases[0].messages == ["once"]
    assert leases[0].ack() and queue.read() is None


def test_a_write_whose_reply_was_lost_and_whose_message_was_taken_meanwhile_is_reported_unknown(make_queue, cache):
    queue = make_queue()
    taken = []
    writer = Queue("q", LeaseItDuringTheAdd(cache, lambda: taken.extend(queue.read_multi())))
    with pytest.raises(WriteIncompleteError) as raised:
        writer.write_multi(["maybe"])
    assert (raised.value.stored, raised.value.unknown, taken) == ([], [0], ["maybe"])
    assert queue.read() is None, "not written twice"


def test_a_write_that_cannot_read_back_its_unanswered_add_reports_those_messages_unknown(
    testbed, memcache_rpc_faults
):
    queue = Queue("q")
    queue.write("warm up")
    memcache_rpc_faults.fail_next("Set", key=queue.keys.slot(0, 2), after_applying=True)
    for _read_and_its_half in range(2):  # the adapter makes a failed read again in halves
        memcache_rpc_faults.fail_next("Get", key=queue.keys.slot(0, 2))
    with pytest.raises(WriteIncompleteError) as raised:
        queue.write_multi(["a", "b"])
    assert (raised.value.stored, raised.value.unknown) == ([], [0, 1])
    assert (raised.value.key, raised.value.total) == (queue.keys.slot(0, 2), 2)
    assert drain(queue) == ["warm up", "a", "b"], "they were stored: the outcome was only unknown"


def test_an_ack_of_a_forgotten_lease_leaves_another_leases_marks_alone(make_queue, cache, cache_client):
    first_process = make_queue()
    first_process.write("before the flush")
    forgotten = first_process.lease(10, seconds=300)
    flush(cache_client)
    second_process = make_queue()  # has never seen the queue, so starts it again at slot 1
    second_process.write("after the flush")
    current = second_process.lease(10, seconds=300)
    assert forgotten.message_keys == current.message_keys
    assert forgotten.ack() is False
    assert current.ack() is True, "its mark was left alone"
