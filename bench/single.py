"""Single-process throughput: the queue, raw memcached and Redis, batch by batch.

Every case moves the same messages (dicts, compact JSON of a set size) and
pays the same encoding (``clickqueue.codec``), so the ratios show what the
queue's own logic and extra round trips cost. Each case starts on an empty
memcached and Redis.
"""

from __future__ import annotations

import json

import statistics
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import redis
from pymemcache.client.base import Client

from bench.workload import Step, Throughput, interleave, make_messages
from clickqueue import Queue
from clickqueue.codec import encode_message

PREFILL_BATCH = 100
APPENGINE_APP_ID = "dev~clickqueue-bench"


@dataclass(frozen=True)
class CaseContext:
    """What a case needs: one batch of messages, the clients, how much to prefill."""

    name: str
    batch: int
    message_bytes: int
    max_messages: int
    memcached: Client
    redis: redis.Redis

    @property
    def messages(self) -> list[dict[str, Any]]:
        return make_messages(self.batch, self.message_bytes)

    def queue(self, client: object) -> Queue:
        return Queue(f"bench-{self.name}-{self.batch}-{self.message_bytes}", client)

    def prefilled_queue(self) -> Queue:
        """A queue holding ``max_messages`` messages, written untimed in batches of 100."""
        queue = self.queue(self.memcached)
        chunk = make_messages(PREFILL_BATCH, self.message_bytes)
        for start in range(0, self.max_messages, PREFILL_BATCH):
            queue.write_multi(chunk[: self.max_messages - start])
        return queue


Case = Callable[[CaseContext], AbstractContextManager[Step]]


def cycle_step(queue: Queue, messages: list[dict[str, Any]]) -> Step:
    """Write a batch, then read a batch."""

    def step() -> int:
        queue.write_multi(messages)
        return len(queue.read_multi(len(messages)))

    return step


@contextmanager
def write(context: CaseContext) -> Iterator[Step]:
    queue, message = context.queue(context.memcached), context.messages[0]

    def step() -> int:
        queue.write(message)
        return 1

    yield step


@contextmanager
def write_multi(context: CaseContext) -> Iterator[Step]:
    queue, messages = context.queue(context.memcached), context.messages

    def step() -> int:
        queue.write_multi(messages)
        return len(messages)

    yield step


@contextmanager
def read_multi(context: CaseContext) -> Iterator[Step]:
    queue = context.prefilled_queue()
    yield lambda: len(queue.read_multi(context.batch))


@contextmanager
def lease_ack(context: CaseContext) -> Iterator[Step]:
    queue = context.prefilled_queue()

    def step() -> int:
        with queue.lease(context.batch) as lease:
            return len(lease.messages)

    yield step


@contextmanager
def queue_cycle(context: CaseContext) -> Iterator[Step]:
    yield cycle_step(context.queue(context.memcached), context.messages)


@contextmanager
def raw_memcached(context: CaseContext) -> Iterator[Step]:
    """``set_many`` + ``get_many`` + ``delete_many``, all replied, on one connection."""
    client, messages = context.memcached, context.messages
    next_key = 0

    def step() -> int:
        nonlocal next_key
        keys = [f"raw:{number}" for number in range(next_key, next_key + len(messages))]
        next_key += len(messages)
        client.set_many(
            {key: encode_message(message) for key, message in zip(keys, messages, strict=True)}, noreply=False
        )
        received = [json.loads(value) for value in client.get_many(keys).values()]
        client.delete_many(keys, noreply=False)
        return len(received)

    yield step


@contextmanager
def redis_list(context: CaseContext) -> Iterator[Step]:
    """``LPUSH`` a batch, then ``RPOP key count``."""
    client, messages, key = context.redis, context.messages, "bench:list"

    def step() -> int:
        client.lpush(key, *(encode_message(message) for message in messages))
        return len([json.loads(value) for value in client.rpop(key, len(messages)) or []])

    yield step


@contextmanager
def appengine_stub_cycle(context: CaseContext) -> Iterator[Step]:
    """The queue cycle on the App Engine SDK's in-process memcache stub (testbed)."""
    from google.appengine.ext import testbed

    bed = testbed.Testbed()
    bed.activate()
    try:
        bed.setup_env(app_id=APPENGINE_APP_ID, overwrite=True)
        bed.init_memcache_stub()
        yield cycle_step(context.queue(None), context.messages)
    finally:
        bed.deactivate()


CASES: dict[str, Case] = {
    "write": write,
    "write_multi": write_multi,
    "read_multi": read_multi,
    "lease_ack": lease_ack,
    "queue_cycle": queue_cycle,
    "raw_memcached": raw_memcached,
    "redis_list": redis_list,
    "appengine_stub_cycle": appengine_stub_cycle,
}
"""Every single-process case. ``write`` is ``write_multi`` of one message: it runs at
batch 1, and ``write_multi`` at the other batch sizes."""


def cases_at(batch: int) -> list[str]:
    single_message = batch == 1
    return [name for name in CASES if (name, single_message) not in {("write", False), ("write_multi", True)}]


def run_group(
    batch: int,
    message_bytes: int,
    clients: tuple[Client, redis.Redis],
    max_messages: int,
    max_seconds: float,
    slice_seconds: float,
) -> list[Throughput]:
    """Every case at one batch and message size: set up together on emptied servers
    (untimed), then timed in turns of ``slice_seconds`` (see ``interleave``)."""
    memcached, redis_client = clients
    memcached.flush_all(noreply=False)
    redis_client.flushdb()
    with ExitStack() as stack:
        steps = {
            name: stack.enter_context(
                CASES[name](CaseContext(name, batch, message_bytes, max_messages, memcached, redis_client))
            )
            for name in cases_at(batch)
        }
        tallies = interleave(steps, max_messages, max_seconds, slice_seconds)
    return [
        Throughput(
            name,
            batch,
            message_bytes,
            tally.messages,
            tally.seconds,
            statistics.median(tally.rates) if tally.rates else 0.0,
        )
        for name, tally in tallies.items()
    ]
