"""Cache calls and round trips per queue operation, counted by ``CountingCache`` on memcached."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymemcache.client.base import Client

from bench.workload import make_messages
from clickqueue import CountingCache, Queue, wrap_client

BATCH = 100
REPEATS = 20


def count_calls(memcached: Client) -> dict[str, Any]:
    """Average cache calls of each operation over ``REPEATS`` runs on an emptied memcached,
    and under ``round_trips`` the round trips of each (one per call and server touched).

    The queue is written and read once before counting, so its state exists
    (a new queue's first claim also creates the state: one ``add_multi`` more).
    """
    memcached.flush_all(noreply=False)
    cache = CountingCache(wrap_client(memcached))
    queue = Queue("bench-calls", cache)
    one, batch = make_messages(1, 100)[0], make_messages(BATCH, 100)
    queue.write(one)
    queue.read_multi()
    counts: dict[str, Any] = {}
    round_trips: dict[str, float] = {}

    def per_run(operation: Callable[[], object], method: str | None = None) -> tuple[float, float]:
        """(calls, round trips) per run of ``operation``; calls only of ``method`` if given."""
        before, trips_before = (cache.calls[method] if method else cache.total()), cache.round_trips
        for _ in range(REPEATS):
            operation()
        after = cache.calls[method] if method else cache.total()
        return (after - before) / REPEATS, (cache.round_trips - trips_before) / REPEATS

    def measure(name: str, operation: Callable[[], object]) -> None:
        counts[name], round_trips[name] = per_run(operation)

    def lease_and_ack() -> None:
        queue.lease(BATCH).ack()

    measure("write", lambda: queue.write(one))
    queue.read_multi(REPEATS)
    measure("write_multi_100", lambda: queue.write_multi(batch))
    measure("read_multi_100", lambda: queue.read_multi(BATCH))
    measure("read_multi_empty", lambda: queue.read_multi(BATCH))
    for _ in range(REPEATS):
        queue.write_multi(batch)
    measure("lease_ack_100", lease_and_ack)
    before = cache.calls.copy()
    measure("cycle_100", lambda: (queue.write_multi(batch), queue.read_multi(BATCH)))
    counts["cycle_100_by_method"] = {method: (cache.calls[method] - before[method]) / REPEATS for method in cache.calls}
    counts["incr_per_message_batch_1"] = per_run(lambda: queue.write(one), "incr")[0]
    counts["incr_per_message_batch_100"] = per_run(lambda: queue.write_multi(batch), "incr")[0] / BATCH
    counts["round_trips"] = round_trips
    return counts
