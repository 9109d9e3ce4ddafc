"""memcached through pymemcache as a clickqueue Cache.

Takes a pymemcache ``Client``, ``PooledClient`` or ``HashClient`` (several
servers: Memorystore for Memcached, or your own). Differences ironed out:
pymemcache defaults to ``noreply=True``, under which ``add`` always reports
success, so every call here asks for the reply; it has no ``add_many`` and its
``delete_many`` reports nothing per key, so both are sent as one pipelined
batch per server through the client's own command writer (``_store_cmd`` /
``_misc_cmd`` of pymemcache 4.0, the methods its ``set_many`` and
``delete_many`` use); ``cas`` on a missing key answers None, made False here;
``incr`` has no initial value, so one is added with ``add`` when asked for.

A client with a serde of its own (pickle, for one) is refused: clickqueue
stores JSON bytes and never lets a cache value be unpickled.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient
from pymemcache.serde import LegacyWrappingSerde


def _node_clients(client: Any) -> list[Any]:
    return list(client.clients.values()) if isinstance(client, HashClient) else [client]


def _reads_raw_bytes(node: Any) -> bool:
    serde = getattr(node, "serde", None)
    return isinstance(serde, LegacyWrappingSerde) and getattr(serde.deserialize, "__func__", None) is (
        LegacyWrappingSerde._default_deserialize
    )


@contextmanager
def _base_client(node: Any) -> Iterator[Client]:
    """The plain ``Client`` behind ``node``, borrowed from its pool if it has one."""
    pool = getattr(node, "client_pool", None)
    if pool is None:
        yield node
    else:
        with pool.get_and_release(destroy_on_fail=True) as client:
            yield client


class PymemcacheCache:
    """One round trip per call and server touched."""

    def __init__(self, client: Any) -> None:
        nodes = _node_clients(client)
        if not all(_reads_raw_bytes(node) for node in nodes):
            raise TypeError("pass a pymemcache client without serde/serializer: clickqueue stores JSON bytes")
        self.client = client

    def _by_node(self, keys: Sequence[str]) -> dict[Any, list[str]]:
        if not isinstance(self.client, HashClient):
            return {self.client: list(keys)}
        batches: dict[Any, list[str]] = defaultdict(list)
        for key in keys:
            batches[self.client._get_client(key)].append(key)
        return batches

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        return self.client.get_many(list(keys))

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, bytes]]:
        return self.client.gets_many(list(keys))

    def cas(self, key: str, value: bytes, token: bytes) -> bool:
        return self.client.cas(key, value, token, noreply=False) is True

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> list[str]:
        not_stored: list[str] = []
        for node, keys in self._by_node(list(values)).items():
            with _base_client(node) as client:
                stored = client._store_cmd(b"add", {key: values[key] for key in keys}, expire_seconds, noreply=False)
            not_stored += [key for key in keys if not stored[key]]
        return not_stored

    def incr(self, key: str, delta: int, initial_value: int | None = None) -> int | None:
        value = self.client.incr(key, delta, noreply=False)
        if value is not None or initial_value is None:
            return value
        if self.client.add(key, str(initial_value + delta).encode(), noreply=False):
            return initial_value + delta
        return self.client.incr(key, delta, noreply=False)

    def delete_multi(self, keys: Sequence[str]) -> list[str]:
        missing: list[str] = []
        for node, node_keys in self._by_node(keys).items():
            with _base_client(node) as client:
                commands = [b"delete " + client.check_key(key, client.key_prefix) + b"\r\n" for key in node_keys]
                replies = client._misc_cmd(commands, b"delete", False)
            missing += [key for key, reply in zip(node_keys, replies) if reply != b"DELETED"]
        return missing
