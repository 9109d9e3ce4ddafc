"""Writer and reader loops for the concurrency and fault tests.

They run as threads (App Engine stub) or as processes (memcached); each makes
its own Queue and, on memcached, its own pymemcache client, as real workers do.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from clickqueue import Queue, wrap_client


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


@contextmanager
def memcached_queue(
    address: tuple[str, int], shards: int, name: str = "load", store_delay_seconds: float = 0
) -> Iterator[Queue]:
    """A Queue on a pymemcache client of its own, closed on exit."""
    from pymemcache.client.base import Client

    with closing(Client(tuple(address))) as client:
        cache = wrap_client(client)
        if store_delay_seconds:
            cache = SlowStores(cache, store_delay_seconds, seed=random.randrange(1 << 30))
        yield Queue(name, cache, shards=shards)


def message_ids(writer_index: int, count: int) -> list[str]:
    return [f"w{writer_index}-{n}" for n in range(count)]


def write_messages(queue: Queue, writer_index: int, count: int, seed: int) -> None:
    """Write ``count`` messages, each alone or in batches of 2-50 at random."""
    rng = random.Random(seed)
    ids = message_ids(writer_index, count)
    position = 0
    while position < count:
        size = 1 if rng.random() < 0.3 else rng.randint(2, 50)
        batch = [{"id": message_id} for message_id in ids[position : position + size]]
        if len(batch) == 1:
            queue.write(batch[0])
        else:
            queue.write_multi(batch)
        position += len(batch)


EMPTY_POLL_SECONDS = 0.001
"""A reader that found nothing polls again after this, as real consumers do
(spinning on an empty queue would tombstone every slot the moment it is taken)."""


def read_messages(queue: Queue, writers_done: Callable[[], bool], seed: int) -> list[str]:
    """Read by ``read_multi`` and by ``lease`` + ack at random until writers are done
    and the queue gives nothing three times running."""
    rng = random.Random(seed)
    received: list[str] = []
    empty_rounds = 0
    while empty_rounds < 3:
        done_before_read = writers_done()
        max_items = rng.choice([1, 7, 50, 100])
        if rng.random() < 0.5:
            batch = queue.read_multi(max_items)
        else:
            with queue.lease(max_items, seconds=300) as lease:
                batch = list(lease)
        received += [message["id"] for message in batch]
        empty_rounds = empty_rounds + 1 if (not batch and done_before_read) else 0
        if not batch:
            time.sleep(EMPTY_POLL_SECONDS)
    return received


def writer_process(
    address: tuple[str, int], shards: int, writer_index: int, count: int, store_delay_seconds: float, start
) -> None:
    start.wait()
    with memcached_queue(address, shards, store_delay_seconds=store_delay_seconds) as queue:
        write_messages(queue, writer_index, count, seed=writer_index)


def reader_process(
    address: tuple[str, int], shards: int, reader_index: int, done_flag: str, out: str, start
) -> None:
    start.wait()
    with memcached_queue(address, shards) as queue:
        received = read_messages(queue, Path(done_flag).exists, seed=1000 + reader_index)
    Path(out).write_text(json.dumps(received))


def run_on_memcached(
    address: tuple[str, int],
    work_dir: Path,
    shards: int,
    writers: int,
    readers: int,
    per_writer: int,
    store_delay_seconds: float = 0.0,
    during: Callable[[], None] | None = None,
) -> list[str]:
    """Run writer and reader processes on one memcached; return every id the readers got.

    Every process waits until all have started; ``during``, if given, runs in
    this process once a third of the messages are written.
    """
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(writers + readers + 1)
    done_flag = work_dir / "writers-done"
    outputs = [work_dir / f"reader-{index}.json" for index in range(readers)]
    writer_processes = [
        context.Process(target=writer_process, args=(address, shards, index, per_writer, store_delay_seconds, start))
        for index in range(writers)
    ]
    reader_processes = [
        context.Process(target=reader_process, args=(address, shards, index, str(done_flag), str(out), start))
        for index, out in enumerate(outputs)
    ]
    processes = writer_processes + reader_processes
    try:
        for process in processes:
            process.start()
        start.wait(timeout=120)
        if during is not None:
            with memcached_queue(address, shards) as observer:
                deadline = time.monotonic() + 120
                while observer.stats().written < writers * per_writer // 3:
                    assert time.monotonic() < deadline, "writers made no progress"
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
    received = [json.loads(out.read_text()) for out in outputs]
    assert all(received), "every reader took part"
    return [message_id for ids in received for message_id in ids]
