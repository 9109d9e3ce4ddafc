"""Cache calls per queue operation, counted by ``CountingCache`` on memcached."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymemcache.client.base import Client

from bench.workload import make_messages
from clickqueue import CountingCache, Queue, wrap_client

BATCH = 100
REPEATS = 20


def count_calls(memcached: Client) -> dict[str, Any]:
    """Average cache calls of each operation over ``REPEATS`` runs on an emptied memcached.

    The queue is written and read once before counting, so its state exists
    (a new queue's first claim also creates the state: one ``add_multi`` more).
    """
    memcached.flush_all(noreply=False)
    cache = CountingCache(wrap_client(memcached))
    queue = Queue("bench-calls", cache)
    one, batch = make_messages(1, 100)[0], make_messages(BATCH, 100)
    queue.write(one)
    queue.read_multi()

    def per_run(operation: Callable[[], object], method: str | None = None) -> float:
        before = cache.calls[method] if method else cache.total()
        for _ in range(REPEATS):
            operation()
        return ((cache.calls[method] if method else cache.total()) - before) / REPEATS

    def lease_and_ack() -> None:
        queue.lease(BATCH).ack()

    counts: dict[str, Any] = {"write": per_run(lambda: queue.write(one))}
    queue.read_multi(REPEATS)
    counts["write_multi_100"] = per_run(lambda: queue.write_multi(batch))
    counts["read_multi_100"] = per_run(lambda: queue.read_multi(BATCH))
    counts["read_multi_empty"] = per_run(lambda: queue.read_multi(BATCH))
    for _ in range(REPEATS):
        queue.write_multi(batch)
    counts["lease_ack_100"] = per_run(lease_and_ack)
    before = cache.calls.copy()
    counts["cycle_100"] = per_run(lambda: (queue.write_multi(batch), queue.read_multi(BATCH)))
    counts["cycle_100_by_method"] = {method: (cache.calls[method] - before[method]) / REPEATS for method in cache.calls}
    counts["incr_per_message_batch_1"] = per_run(lambda: queue.write(one), "incr")
    counts["incr_per_message_batch_100"] = per_run(lambda: queue.write_multi(batch), "incr") / BATCH
    return counts
