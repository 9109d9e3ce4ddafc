"""What memcached says of itself (``stats``, ``stats slabs``): commands served and memory used.

Both are read from the server, so they count what every client did: the
benchmark reads them around a load on a server nothing else uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pymemcache.client.base import Client

COMMAND_COUNTERS = (
    "cmd_get",
    "cmd_set",
    "cmd_touch",
    "incr_hits",
    "incr_misses",
    "decr_hits",
    "decr_misses",
    "delete_hits",
    "delete_misses",
)
"""One per key a command names, whatever the protocol: a meta get (``mg``) counts in
``cmd_get``; a meta set (``ms``) in every mode (set, add, compare-and-set) in
``cmd_set``; ``ma`` in ``incr_*``/``decr_*``; ``md`` in ``delete_*``."""


def _numbers(raw: Mapping[bytes, Any]) -> dict[str, float]:
    return {key.decode(): value for key, value in raw.items() if isinstance(value, (int, float))}


def general(client: Client) -> dict[str, float]:
    """memcached's ``stats``, the numeric ones."""
    return _numbers(client.stats())


def commands_between(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, int]:
    """Commands served between two ``general`` readings, by counter, and their ``total``."""
    counts = {name: int(after[name] - before[name]) for name in COMMAND_COUNTERS if name in after}
    return {**counts, "total": sum(counts.values())}


def memory(client: Client) -> dict[str, int]:
    """What the items take, three ways.

    ``bytes`` (``stats``): the items' own sizes (header, key, value, line end);
    ``chunk_bytes`` (``stats slabs``): the slab chunks they sit in, each item
    rounded up to its slab class's chunk size, which is what they take from
    memcached's memory limit; ``total_malloced``: the 1 MB slab pages memcached
    has taken, free chunks in them included.
    """
    stats, slabs = general(client), _numbers(client.stats("slabs"))
    chunk_bytes = sum(
        int(slabs[key]) * int(slabs[key.replace(":used_chunks", ":chunk_size")])
        for key in slabs
        if key.endswith(":used_chunks")
    )
    return {
        "items": int(stats["curr_items"]),
        "bytes": int(stats["bytes"]),
        "chunk_bytes": chunk_bytes,
        "total_malloced": int(slabs["total_malloced"]),
    }
