"""Memcache bytes per stored message: the queue's frames against one key per message.

Each way fills a memcached of its own, started for it, with the same messages
in batches: the queue by ``write_multi`` (its frames carry up to
``FRAME_MESSAGES`` messages in one value), raw memcached by ``set_many`` of
one key per message (``raw:<n>``, as the single-process ``raw_memcached``
case). What memcached reports before and after (``bench.memcached_stats.memory``),
over the messages stored, is the cost per message.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import closing
from typing import Any

from pymemcache.client.base import Client

from bench import servers
from bench.memcached_stats import memory
from bench.workload import make_messages
from clickqueue import Queue
from clickqueue.codec import encode_message
from clicks.settings import default_queue

MEASURES = ("bytes", "chunk_bytes", "total_malloced")
TARGET_MEASURE = "chunk_bytes"
"""What the target compares: the memory the items take from memcached's limit
(``bytes`` leaves out the slab rounding, ``total_malloced`` counts 1 MB pages)."""

Fill = Callable[[Client, list[list[dict[str, Any]]]], None]


def fill_queue(client: Client, batches: list[list[dict[str, Any]]]) -> None:
    """The app's queue (name and shards of ``default_queue``), one ``write_multi`` per batch."""
    reference = default_queue()
    queue = Queue(reference.name, client, shards=reference.shards)
    for batch in batches:
        queue.write_multi(batch)


def fill_raw(client: Client, batches: list[list[dict[str, Any]]]) -> None:
    """One key per message, one replied ``set_many`` per batch."""
    number = 0
    for batch in batches:
        client.set_many({f"raw:{number + index}": encode_message(m) for index, m in enumerate(batch)}, noreply=False)
        number += len(batch)


FILLS: dict[str, Fill] = {"queue": fill_queue, "raw": fill_raw}


def stored_bytes(fill: Fill, batches: list[list[dict[str, Any]]]) -> dict[str, int]:
    """What ``fill`` added to a fresh memcached, in each of ``memory``'s measures."""
    with servers.memcached() as server, closing(Client(server.address)) as client:
        before = memory(client)
        fill(client, batches)
        after = memory(client)
    return {name: after[name] - before[name] for name in after}


def bytes_per_message(messages: int, message_bytes: int, batch: int) -> dict[str, Any]:
    """Bytes per stored message of the queue and of raw memcached, and the ratios."""
    batches = [make_messages(min(batch, messages - start), message_bytes) for start in range(0, messages, batch)]
    result: dict[str, Any] = {"messages": messages, "message_bytes": message_bytes, "batch": batch}
    for name, fill in FILLS.items():
        added = stored_bytes(fill, batches)
        result[name] = {
            "items": added["items"],
            "messages_per_item": round(messages / added["items"], 2) if added["items"] else None,
            **{f"{measure}_per_message": round(added[measure] / messages, 1) for measure in MEASURES},
        }
    result["queue_to_raw"] = {
        measure: round(result["queue"][f"{measure}_per_message"] / result["raw"][f"{measure}_per_message"], 3)
        for measure in MEASURES
    }
    result["target_measure"] = TARGET_MEASURE
    return result
