"""Invariant 1, proven by message id: every message written is returned by exactly
one read or lease, with many writers and readers at once, on both backends."""

import threading
from collections import Counter

import pytest
from tests.support.queue_workers import message_ids, read_messages, run_on_memcached, write_messages

from clickqueue import CacheUnavailableError, Queue, QueueStats

WRITERS, READERS, PER_WRITER = 4, 3, 3000  # 12,000 messages

pytestmark = [pytest.mark.slow, pytest.mark.processes]


def expected_ids() -> Counter:
    return Counter(message_id for writer in range(WRITERS) for message_id in message_ids(writer, PER_WRITER))


def assert_exactly_once(received: list[str], queue: Queue) -> QueueStats:
    counts = Counter(received)
    duplicated = {message_id: n for message_id, n in counts.items() if n > 1}
    missing = set(expected_ids()) - set(counts)
    assert not duplicated, f"{len(duplicated)} messages delivered twice, e.g. {list(duplicated)[:5]}"
    assert not missing, f"{len(missing)} messages never delivered, e.g. {sorted(missing)[:5]}"
    assert counts == expected_ids()
    stats = queue.stats()
    assert (stats.depth, stats.leased, stats.lost, stats.resets) == (0, 0, 0, 0)
    assert stats.written == stats.read == WRITERS * PER_WRITER
    assert stats.skipped == stats.retried
    return stats


@pytest.mark.parametrize("shards", [1, 4])
def test_threads_on_the_app_engine_stub_get_every_message_exactly_once(testbed, shards):
    writers_done = threading.Event()
    received: list[list[str]] = [[] for _ in range(READERS)]

    def read(index):
        deliveries = read_messages(Queue("load", shards=shards), writers_done.is_set, seed=index)
        received[index] = [delivery.message_id for delivery in deliveries]

    writers = [
        threading.Thread(target=write_messages, args=(Queue("load", shards=shards), index, PER_WRITER, index))
        for index in range(WRITERS)
    ]
    readers = [threading.Thread(target=read, args=(index,)) for index in range(READERS)]
    for thread in writers + readers:
        thread.start()
    for thread in writers:
        thread.join()
    writers_done.set()
    for thread in readers:
        thread.join()
    assert all(received), "every reader took part"
    assert_exactly_once([message_id for ids in received for message_id in ids], Queue("load", shards=shards))


NO_CONTENTION_ALLOWED = (CacheUnavailableError,)
"""Readers retry only what the cache failed: with no faults, a ``ContentionError`` fails the run."""


@pytest.mark.parametrize("shards", [1, 4])
def test_processes_on_memcached_get_every_message_exactly_once(memcached_server, memcached_client, tmp_path, shards):
    run = run_on_memcached(
        [memcached_server.address], tmp_path, shards, WRITERS, READERS, PER_WRITER, readers_retry=NO_CONTENTION_ALLOWED
    )
    assert run.unknown_writes == []
    assert_exactly_once(run.received, Queue("load", memcached_client, shards=shards))


def test_readers_racing_on_a_nearly_drained_queue_never_give_up(memcached_server, memcached_client, tmp_path):
    """More readers than writers on one shard: claims collide on the state all the
    time, yet no reader loses every compare-and-set (the pause after a lost one
    breaks the lockstep) and every message arrives exactly once."""
    run = run_on_memcached(
        [memcached_server.address], tmp_path, 1, WRITERS, 2 * READERS, PER_WRITER, readers_retry=NO_CONTENTION_ALLOWED
    )
    assert_exactly_once(run.received, Queue("load", memcached_client))


@pytest.mark.parametrize("shards", [1, 4])
def test_readers_that_reach_slots_before_their_writers_lose_nothing(
    memcached_server, memcached_client, tmp_path, shards
):
    """Writers linger up to 10 ms between incr and add: readers tombstone empty slots,
    writers retry, and still every message arrives exactly once."""
    run = run_on_memcached(
        [memcached_server.address],
        tmp_path,
        shards,
        WRITERS,
        READERS,
        PER_WRITER,
        store_delay_seconds=0.01,
        readers_retry=NO_CONTENTION_ALLOWED,
    )
    stats = assert_exactly_once(run.received, Queue("load", memcached_client, shards=shards))
    assert stats.retried > 0, "the in-flight race was exercised"
