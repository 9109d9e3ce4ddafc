"""Writer and reader loops for the concurrency and fault tests.

They run as threads (App Engine stub) or as processes (memcached); each makes
its own Queue and, on memcached, its own pymemcache client, as real workers do.
Readers record every delivery with its owner (a lease id, or one read_multi
call), so a message delivered to two owners shows; writers record the messages
whose write had an unknown outcome, which may or may not arrive.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from clickqueue import CacheUnavailableError, ContentionError, Queue, QueueKeys, WriteIncompleteError, wrap_client


class SlowStores:
    """A Cache whose ``add_multi`` waits up to ``max_delay_seconds`` first: writers
    linger between taking slots and storing, so readers reach empty slots."""

    def __init__(self, inner, max_delay_seconds: float, seed: int) -> None:
        self.inner, self.max_delay_seconds, self.rng = inner, max_delay_seconds, random.Random(seed)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def add_multi(self, values, expire_seconds=0):
        time.sleep(self.rng.uniform(0, self.max_delay_seconds))
        return self.inner.add_multi(values, expire_seconds)


def memcached_client(addresses: list[tuple[str, int]]):
    """A Client for one server; for several, a HashClient that takes a failing
    server out of its ring for a second (so keys remap, then map back)."""
    from pymemcache.client.base import Client
    from pymemcache.client.hash import HashClient

    if len(addresses) == 1:
        return Client(tuple(addresses[0]), connect_timeout=2, timeout=5)
    return HashClient(
        [tuple(address) for address in addresses],
        connect_timeout=1,
        timeout=2,
        retry_attempts=1,
        retry_timeout=0.05,
        dead_timeout=1,
    )


def memcached_queue(client, shards: int, name: str = "load", store_delay_seconds: float = 0) -> Queue:
    cache = wrap_client(client)
    if store_delay_seconds:
        cache = SlowStores(cache, store_delay_seconds, seed=random.randrange(1 << 30))
    return Queue(name, cache, shards=shards)


def message_ids(writer_index: int, count: int) -> list[str]:
    return [f"w{writer_index}-{n}" for n in range(count)]


RETRY_PAUSE_SECONDS = 0.01
"""How long a worker waits after the cache failed a call (a node restarting)."""


def write_messages(
    queue: Queue, writer_index: int, count: int, seed: int, used: Callable[[], None] = lambda: None
) -> list[str]:
    """Write ``count`` messages, each alone or in batches of 2-50 at random.

    A write the cache failed is tried again for the messages not stored; those
    whose outcome is unknown are not (that could duplicate them) and are returned.
    ``used`` is called once the first write succeeded: this process has used the queue.
    """
    rng = random.Random(seed)
    ids = message_ids(writer_index, count)
    unknown: list[str] = []
    position = 0
    while position < count:
        batch = [{"id": message_id} for message_id in ids[position : position + (1 if rng.random() < 0.3 else rng.randint(2, 50))]]
        position += len(batch)
        while batch:
            try:
                queue.write(batch[0]) if len(batch) == 1 else queue.write_multi(batch)
                batch = []
                used()
            except WriteIncompleteError as error:
                unknown += [batch[index]["id"] for index in error.unknown]
                done = set(error.stored) | set(error.unknown)
                batch = [message for index, message in enumerate(batch) if index not in done]
                time.sleep(RETRY_PAUSE_SECONDS)
            except (CacheUnavailableError, ContentionError):
                time.sleep(RETRY_PAUSE_SECONDS)
    return unknown


EMPTY_POLL_SECONDS = 0.001
"""A reader that found nothing polls again after this, as real consumers do
(spinning on an empty queue would tombstone every slot the moment it is taken)."""


@dataclass(frozen=True)
class Delivery:
    message_id: str
    owner: str
    """The lease id, or ``read:<reader>:<call>`` for one read_multi call."""
    attempt: int


def read_messages(
    queue: Queue,
    writers_done: Callable[[], bool],
    seed: int,
    lease_only: bool = False,
    idle_rounds: int = 3,
    retried: tuple[type[Exception], ...] = (CacheUnavailableError, ContentionError),
    used: Callable[[], None] = lambda: None,
) -> list[Delivery]:
    """Read by ``read_multi`` and by ``lease`` + ack at random (leases only if
    ``lease_only``) until writers are done and the queue gives nothing
    ``idle_rounds`` times running. A call that raises one of ``retried`` (the
    cache failed it) is made again later; any other error ends the reader.
    ``used`` is called after each call that succeeded: this process has used the queue."""
    rng = random.Random(seed)
    deliveries: list[Delivery] = []
    empty_rounds = calls = 0
    while empty_rounds < idle_rounds:
        done_before_read = writers_done()
        calls += 1
        try:
            got = _read_once(queue, rng, lease_only, f"read:{seed}:{calls}", deliveries)
        except retried:
            time.sleep(RETRY_PAUSE_SECONDS)
            empty_rounds = 0
            continue
        used()
        empty_rounds = empty_rounds + 1 if (not got and done_before_read) else 0
        if not got:
            time.sleep(EMPTY_POLL_SECONDS)
    return deliveries


def _read_once(queue: Queue, rng: random.Random, lease_only: bool, read_owner: str, deliveries: list[Delivery]) -> int:
    """One read_multi, or one lease and its ack; records what it delivered; returns how many."""
    max_items = rng.choice([1, 7, 50, 100])
    if not lease_only and rng.random() < 0.5:
        got = [Delivery(message["id"], read_owner, 1) for message in queue.read_multi(max_items)]
        deliveries += got
        return len(got)
    lease = queue.lease(max_items, seconds=5 if lease_only else 300)
    deliveries += [Delivery(message["id"], lease.lease_id, lease.attempt) for message in lease.messages]
    if lease:
        lease.ack()  # if this fails the lease expires and comes back under its id
    return len(lease.messages)


def used_marker(out: str) -> Path:
    """The file a worker writing to ``out`` creates once it has used the queue."""
    return Path(f"{out}.used")


def writer_process(addresses, shards: int, writer_index: int, count: int, store_delay_seconds: float, out: str, start) -> None:
    start.wait()
    client = memcached_client(addresses)
    queue = memcached_queue(client, shards, store_delay_seconds=store_delay_seconds)
    unknown = write_messages(queue, writer_index, count, seed=writer_index, used=used_marker(out).touch)
    Path(out).write_text(json.dumps(unknown))
    client.close()


def reader_process(
    addresses, shards: int, reader_index: int, done_flag: str, out: str, lease_only: bool, retried: tuple, start
) -> None:
    start.wait()
    client = memcached_client(addresses)
    deliveries = read_messages(
        memcached_queue(client, shards),
        Path(done_flag).exists,
        seed=1000 + reader_index,
        lease_only=lease_only,
        retried=retried,
        used=used_marker(out).touch,
    )
    Path(out).write_text(json.dumps([[d.message_id, d.owner, d.attempt] for d in deliveries]))
    client.close()


@dataclass(frozen=True)
class RunResult:
    deliveries: list[Delivery]
    unknown_writes: list[str]

    @property
    def received(self) -> list[str]:
        return [delivery.message_id for delivery in self.deliveries]


def run_on_memcached(
    addresses: list[tuple[str, int]],
    work_dir: Path,
    shards: int,
    writers: int,
    readers: int,
    per_writer: int,
    store_delay_seconds: float = 0.0,
    during: Callable[[], None] | None = None,
    lease_only: bool = False,
    readers_retry: tuple[type[Exception], ...] = (CacheUnavailableError, ContentionError),
) -> RunResult:
    """Run writer and reader processes on memcached; return every delivery.

    Every process waits until all have started; ``during``, if given, runs in
    this process once every worker has used the queue (so each can tell a lost
    state from a new queue) and a third of the messages are written. A reader exits
    with an error (failing the run) on any exception not in ``readers_retry``.
    """
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(writers + readers + 1)
    done_flag = work_dir / "writers-done"
    writer_outputs = [work_dir / f"writer-{index}.json" for index in range(writers)]
    reader_outputs = [work_dir / f"reader-{index}.json" for index in range(readers)]
    writer_processes = [
        context.Process(
            target=writer_process, args=(addresses, shards, index, per_writer, store_delay_seconds, str(out), start)
        )
        for index, out in enumerate(writer_outputs)
    ]
    reader_processes = [
        context.Process(
            target=reader_process,
            args=(addresses, shards, index, str(done_flag), str(out), lease_only, readers_retry, start),
        )
        for index, out in enumerate(reader_outputs)
    ]
    processes = writer_processes + reader_processes
    try:
        for process in processes:
            process.start()
        start.wait(timeout=120)
        if during is not None:
            deadline = time.monotonic() + 120
            markers = [used_marker(str(out)) for out in writer_outputs + reader_outputs]
            while _slots_handed_out(addresses, shards) < writers * per_writer // 3 or not all(
                marker.exists() for marker in markers
            ):
                assert time.monotonic() < deadline, "workers made no progress"
                time.sleep(0.005)
            during()
        for process in writer_processes:
            process.join(timeout=300)
            assert process.exitcode == 0, f"writer exited with {process.exitcode}"
        done_flag.touch()
        for process in reader_processes:
            process.join(timeout=300)
            assert process.exitcode == 0, f"reader exited with {process.exitcode}"
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
    deliveries = [Delivery(*entry) for out in reader_outputs for entry in json.loads(out.read_text())]
    unknown = [message_id for out in writer_outputs for message_id in json.loads(out.read_text())]
    return RunResult(deliveries, unknown)


def _slots_handed_out(addresses, shards: int) -> int:
    """The write counters' sum: a progress probe that reads no queue state."""
    from pymemcache.exceptions import MemcacheError

    client = memcached_client(addresses)
    keys = [QueueKeys("load").write_counter(shard) for shard in range(shards)]
    try:
        return sum(int(value) for value in client.get_many(keys).values() if value.isdigit())
    except (OSError, MemcacheError):  # a server mid-restart: look again
        return 0
    finally:
        client.close()
