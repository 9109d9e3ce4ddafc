"""Every memcache key of one queue, built in one place, prefixed ``cq:<name>:``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

GENERATION_MARKERS = 4
"""Copies of the generation marker: on several servers, one survives a node restart."""


@dataclass(frozen=True)
class QueueKeys:
    """The keys of queue ``name`` (at most 100 characters: keys stay far below 250 bytes)."""

    name: str

    @property
    def prefix(self) -> str:
        return f"cq:{self.name}:"

    @property
    def state(self) -> str:
        return f"{self.prefix}state"

    def write_counter(self, shard: int) -> str:
        return f"{self.prefix}w:{shard}"

    def slot(self, shard: int, number: int) -> str:
        return self.slots(shard, [number])[0]

    def slots(self, shard: int, numbers: Iterable[int]) -> list[str]:
        """The keys of slots ``numbers`` of ``shard``, built fast: reads and writes take hundreds."""
        shard_prefix = f"{self.prefix}m:{shard}:"
        return [f"{shard_prefix}{number}" for number in numbers]

    @property
    def generation_markers(self) -> list[str]:
        return [f"{self.prefix}gen:{copy}" for copy in range(GENERATION_MARKERS)]
