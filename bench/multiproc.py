"""Several writer and reader processes on one memcached, for each shard count.

Writers rotate over the shards' write counters (one ``incr`` per batch), so
sharding spreads the hottest keys; readers drain every shard in one claim, so
they all CAS the one state key whatever the shard count. Each process has its
own pymemcache client and counts its cache calls (``incr`` also per key).
"""

from __future__ import annotations

import multiprocessing
import queue as queue_module
import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier, Event
from typing import Any

from pymemcache.client.base import Client

from bench import memcached_stats
from bench.workload import make_messages
from clickqueue import CountingCache, Queue, QueueKeys, wrap_client

EMPTY_READ_PAUSE_SECONDS = 0.002
START_TIMEOUT_SECONDS = 60.0
READER_GRACE_SECONDS = 30.0
"""How long readers may keep draining after the writers stopped, at most."""


class KeyCountingCache(CountingCache):
    """A CountingCache that also counts ``incr`` calls per key: the hot-key load."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.incr_by_key: Counter[str] = Counter()

    def incr(self, key: str, delta: int) -> int | None:
        self.incr_by_key[key] += 1
        return super().incr(key, delta)


@dataclass(frozen=True)
class Workload:
    """What the processes do: ``messages`` written in all, for ``max_seconds`` at most."""

    writers: int
    readers: int
    write_batch: int
    read_batch: int
    message_bytes: int
    messages: int
    max_seconds: float


@dataclass(frozen=True)
class RunConfig:
    """What every process of one run gets."""

    address: tuple[str, int]
    queue_name: str
    shards: int
    workload: Workload

    @property
    def messages_per_writer(self) -> int:
        return max(self.workload.write_batch, self.workload.messages // self.workload.writers)


@dataclass
class WorkerReport:
    role: str
    messages: int = 0
    operations: int = 0
    started: float = 0.0
    finished: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)
    incr_by_key: dict[str, int] = field(default_factory=dict)


@contextmanager
def _worker_queue(config: RunConfig) -> Iterator[tuple[Queue, KeyCountingCache]]:
    """Leave Ctrl-C to the parent (it ends workers by PID); open the queue on a client of our own, closed on exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with closing(Client(config.address)) as client:
        cache = KeyCountingCache(wrap_client(client))
        yield Queue(config.queue_name, cache, shards=config.shards), cache


def _finish(report: WorkerReport, cache: KeyCountingCache, reports: multiprocessing.Queue) -> None:
    report.calls, report.incr_by_key = dict(cache.calls), dict(cache.incr_by_key)
    reports.put(report)


def writer(config: RunConfig, start: Barrier, reports: multiprocessing.Queue) -> None:
    """Write ``messages_per_writer`` messages in batches, or for ``max_seconds``."""
    with _worker_queue(config) as (queue, cache):
        messages = make_messages(config.workload.write_batch, config.workload.message_bytes)
        report = WorkerReport("writer")
        start.wait(timeout=START_TIMEOUT_SECONDS)
        report.started = time.monotonic()
        deadline = report.started + config.workload.max_seconds
        while report.messages < config.messages_per_writer and time.monotonic() < deadline:
            queue.write_multi(messages)
            report.messages += len(messages)
            report.operations += 1
        report.finished = time.monotonic()
        _finish(report, cache, reports)


def reader(config: RunConfig, start: Barrier, writers_done: Event, reports: multiprocessing.Queue) -> None:
    """Read until the writers are done and the queue is empty."""
    with _worker_queue(config) as (queue, cache):
        report = WorkerReport("reader")
        start.wait(timeout=START_TIMEOUT_SECONDS)
        report.started = report.finished = time.monotonic()
        deadline = report.started + config.workload.max_seconds + READER_GRACE_SECONDS
        while time.monotonic() < deadline:
            done = writers_done.is_set()
            read = queue.read_multi(config.workload.read_batch)
            report.operations += 1
            if read:
                report.messages += len(read)
                report.finished = time.monotonic()
            elif done:
                break
            else:
                time.sleep(EMPTY_READ_PAUSE_SECONDS)
        _finish(report, cache, reports)


def run_processes(config: RunConfig) -> list[WorkerReport]:
    """Start the processes together (spawned, each its own client) and collect their reports."""
    writers, readers = config.workload.writers, config.workload.readers
    context = multiprocessing.get_context("spawn")
    start, writers_done, reports = context.Barrier(writers + readers), context.Event(), context.Queue()
    processes = [context.Process(target=writer, args=(config, start, reports)) for _ in range(writers)]
    processes += [context.Process(target=reader, args=(config, start, writers_done, reports)) for _ in range(readers)]
    collected: list[WorkerReport] = []
    try:
        for process in processes:
            process.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS + config.workload.max_seconds + READER_GRACE_SECONDS
        while len(collected) < len(processes):
            try:
                collected.append(reports.get(timeout=1))
            except queue_module.Empty:
                failed = [process.exitcode for process in processes if process.exitcode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{len(collected)} of {len(processes)} bench processes reported; exit codes {failed}"
                    ) from None
                continue
            if sum(report.role == "writer" for report in collected) == writers:
                writers_done.set()
        for process in processes:
            process.join(timeout=10)
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    return collected


def summarize(config: RunConfig, reports: list[WorkerReport]) -> dict[str, Any]:
    """Total msg/s (messages read over the whole run), and the per-message and per-key load."""
    writer_reports = [report for report in reports if report.role == "writer"]
    reader_reports = [report for report in reports if report.role == "reader"]
    written = sum(report.messages for report in writer_reports)
    read = sum(report.messages for report in reader_reports)
    seconds = max(report.finished for report in reports) - min(report.started for report in reports)
    write_seconds = max(r.finished for r in writer_reports) - min(r.started for r in writer_reports)
    calls = sum((Counter(report.calls) for report in reports), Counter())
    incr_by_key = sum((Counter(report.incr_by_key) for report in reports), Counter())
    keys = QueueKeys(config.queue_name)
    per_counter_key = [incr_by_key[keys.write_counter(shard)] for shard in range(config.shards)]
    read_calls = sum(report.operations for report in reader_reports)
    return {
        "shards": config.shards,
        "writers": len(writer_reports),
        "readers": len(reader_reports),
        "write_batch": config.workload.write_batch,
        "read_batch": config.workload.read_batch,
        "messages_written": written,
        "messages_read": read,
        "seconds": round(seconds, 3),
        "per_second": round(read / seconds, 1) if seconds > 0 else 0.0,
        "write_per_second": round(written / write_seconds, 1) if write_seconds > 0 else 0.0,
        "incr_per_message": round(calls["incr"] / written, 4) if written else 0.0,
        "incr_per_counter_key": per_counter_key,
        "max_counter_key_incr_per_second": round(max(per_counter_key) / write_seconds, 1) if write_seconds else 0.0,
        # A read_multi makes two compare-and-sets (the claim, the takes); more are claims lost to contention.
        "cas_per_read_multi": round(calls["cas_multi"] / read_calls, 3) if read_calls else 0.0,
        "calls": dict(calls),
    }


def run_sharded(address: tuple[str, int], shards: int, workload: Workload) -> dict[str, Any]:
    """One multi-process run on an emptied memcached.

    The queue's own counts (``retried``: writers that lost a slot to a reader's
    tombstone, ``lost``) come from ``Queue.stats()`` afterwards, with memcached's
    ``evictions`` during the run: with no fault injected, eviction is what can
    make ``lost`` more than 0 (the earlier parts give memory to other slab classes).
    """
    client = Client(address)
    try:
        client.flush_all(noreply=False)
        evictions_before = memcached_stats.general(client)["evictions"]
        config = RunConfig(address, f"bench-mp-{shards}", shards, workload)
        summary = summarize(config, run_processes(config))
        stats = Queue(config.queue_name, client, shards=shards).stats()
        evictions = int(memcached_stats.general(client)["evictions"] - evictions_before)
    finally:
        client.close()
    return {**summary, "retried": stats.retried, "lost": stats.lost, "evictions": evictions}
