"""Faults: killed readers, lost counters and state, flushes, eviction.

The rule throughout: no stall, no duplicate, and whatever is lost is counted.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter

import pytest
from conftest import REPO_ROOT, stop_process, wait_until
from queue_workers import message_ids, run_on_memcached

from clickqueue import Queue
from clickqueue.queue import ReadState

WRITERS, READERS, PER_WRITER = 4, 3, 3000


def ids(messages):
    return [message["id"] for message in messages]


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
        stop_process(reader)
    assert reader.returncode == -signal.SIGKILL
    assert not queue.lease(100, seconds=30), "the lease still holds before its deadline"
    redelivered = wait_until(lambda: queue.lease(100, seconds=30) or None, 30, message="lease redelivery")
    assert (redelivered.lease_id, redelivered.attempt) == (held["lease_id"], 2)
    assert redelivered.messages == held["messages"] == [{"id": n} for n in range(10)]
    assert redelivered.ack() is True
    assert queue.read() is None


# -- lost counters and state, one step at a time on every backend -----------------------------


def test_deleted_write_counter_is_reseeded_and_nothing_is_lost(make_queue, cache):
    queue = make_queue()
    queue.write_multi(range(10))
    assert queue.read_multi(4) == [0, 1, 2, 3]
    cache.delete_multi([queue.keys.write_counter(0)])
    queue.write_multi(range(10, 15))
    assert drain_all(queue) == list(range(4, 15))
    stats = queue.stats()
    assert (stats.resets, stats.lost, stats.depth) == (1, 0, 0)


def test_write_counter_reseeds_above_a_claim_made_from_its_old_value(make_queue, cache):
    """A reader read the counter at 10 just before it vanished and the state just
    after it was reseeded (two servers, read one after the other): its claim up
    to slot 10 lands, and new writes must still go above slot 10."""
    queue = make_queue()
    queue.write_multi(range(10))
    cache.delete_multi([queue.keys.write_counter(0)])
    queue.write("after reseed")
    raw_state, token = cache.gets_multi([queue.keys.state])[queue.keys.state]
    state = ReadState.from_bytes(queue.keys.state, raw_state)
    state.claim([10], max_items=100)
    assert cache.cas(queue.keys.state, state.to_bytes(), token)
    cache.delete_multi([queue.keys.slot(0, n) for n in range(1, 11)])  # the stale reader took them
    assert drain_all(queue) == ["after reseed"]
    stats = queue.stats()
    assert (stats.lost, stats.resets, stats.read, stats.written) == (0, 1, 11, 11)


def test_deleted_state_restarts_at_the_write_counter_and_counts_what_it_skips(make_queue, cache):
    queue = make_queue()
    queue.write_multi(range(10))
    assert queue.read_multi(4) == [0, 1, 2, 3]
    cache.delete_multi([queue.keys.state])
    assert queue.read_multi() == []
    queue.write_multi(range(10, 13))
    assert drain_all(queue) == [10, 11, 12]
    stats = queue.stats()
    assert (stats.resets, stats.lost) == (1, 6)


def test_flushed_cache_restarts_the_queue_and_counts_the_reset(make_queue, cache, cache_client):
    queue = make_queue()
    queue.write_multi(range(10))
    assert queue.read_multi(4) == [0, 1, 2, 3]
    flush(cache_client)
    queue.write_multi(range(10, 13))
    assert drain_all(queue) == [10, 11, 12]
    assert queue.stats().resets == 1


def test_evicted_message_is_counted_as_lost(make_queue, cache):
    queue = make_queue()
    queue.write_multi(range(5))
    cache.delete_multi([queue.keys.slot(0, 2), queue.keys.slot(0, 4)])
    assert drain_all(queue) == [0, 2, 4]
    stats = queue.stats()
    assert (stats.skipped, stats.lost, stats.written, stats.read) == (2, 2, 5, 3)


def drain_all(queue):
    received = []
    while batch := queue.read_multi(100):
        received += batch
    return received


def flush(cache_client):
    if cache_client is None:
        from google.appengine.api import memcache

        memcache.flush_all()
    else:
        cache_client.flush_all(noreply=False)


# -- the same faults while 4 writer and 3 reader processes run --------------------------------


def expected_ids():
    return Counter(message_id for writer in range(WRITERS) for message_id in message_ids(writer, PER_WRITER))


def assert_no_duplicates(received):
    counts = Counter(received)
    assert max(counts.values()) == 1, "a message was delivered twice"
    assert set(counts) <= set(expected_ids()), "only written messages were delivered"


def assert_no_stall(queue):
    queue.write_multi([{"id": f"after-{n}"} for n in range(100)])
    queue.write({"id": "after-last"})
    assert sorted(ids(drain_all(queue))) == sorted([f"after-{n}" for n in range(100)] + ["after-last"])


@pytest.mark.parametrize("shards", [1, 4])
def test_write_counters_deleted_mid_run_lose_nothing(memcached_server, memcached_client, tmp_path, shards):
    queue = Queue("load", memcached_client, shards=shards)
    counters = [queue.keys.write_counter(shard) for shard in range(shards)]
    received = run_on_memcached(
        memcached_server.address, tmp_path, shards, WRITERS, READERS, PER_WRITER,
        during=lambda: memcached_client.delete_many(counters, noreply=False),
    )
    assert Counter(received) == expected_ids()
    stats = queue.stats()
    assert stats.resets >= 1
    assert (stats.lost, stats.depth, stats.leased) == (0, 0, 0)
    assert_no_stall(queue)


@pytest.mark.parametrize("shards", [1, 4])
def test_state_deleted_mid_run_neither_stalls_nor_duplicates(memcached_server, memcached_client, tmp_path, shards):
    queue = Queue("load", memcached_client, shards=shards)
    received = run_on_memcached(
        memcached_server.address, tmp_path, shards, WRITERS, READERS, PER_WRITER,
        during=lambda: memcached_client.delete(queue.keys.state, noreply=False),
    )
    assert_no_duplicates(received)
    stats = queue.stats()
    assert stats.resets >= 1
    assert len(received) + stats.lost >= WRITERS * PER_WRITER, "every message was delivered or counted lost"
    assert_no_stall(queue)


@pytest.mark.parametrize("shards", [1, 4])
def test_cache_flushed_mid_run_neither_stalls_nor_duplicates(memcached_server, memcached_client, tmp_path, shards):
    received = run_on_memcached(
        memcached_server.address, tmp_path, shards, WRITERS, READERS, PER_WRITER,
        during=lambda: memcached_client.flush_all(noreply=False),
    )
    assert_no_duplicates(received)
    queue = Queue("load", memcached_client, shards=shards)
    assert queue.stats().resets >= 1
    assert_no_stall(queue)


# -- eviction in a real memcached --------------------------------------------------------------


def test_eviction_in_a_small_memcached_is_counted_as_lost(small_memcached):
    """20 MB of messages into a memcached of 8 MB: the oldest are evicted, and
    every message is either read once or counted in ``lost``."""
    queue = Queue("evict", small_memcached.client())
    payload = "x" * 1000
    total = 20_000
    for start in range(0, total, 100):
        queue.write_multi([{"id": n, "pad": payload} for n in range(start, start + 100)])
    received = []
    while batch := queue.read_multi(1000):
        received += [message["id"] for message in batch]
    assert len(received) == len(set(received)), "no duplicates"
    stats = queue.stats()
    assert stats.lost > 0, "the small server evicted messages"
    assert len(received) + stats.lost == total == stats.written
    assert stats.read == len(received)
