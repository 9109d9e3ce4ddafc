"""App Engine memcache (appengine-python-standard) as a clickqueue Cache.

Runs against production memcache on App Engine and against the SDK's
``MemcacheServiceStub`` locally (testbed, dev_appserver). Differences ironed out:
CAS ids live on a ``memcache.Client`` object, so every ``gets_multi`` uses a
fresh Client and hands it out as the token (threads never share CAS ids); the
module-level ``delete_multi`` answers True even when every key was missing, so
per-key statuses come from ``delete_multi_async``; counters read back as ints
are returned as their decimal bytes, like memcached.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from google.appengine.api import memcache

from clickqueue.errors import CacheUnavailableError


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int):
        return str(value).encode()
    if isinstance(value, str):
        return value.encode()
    raise TypeError(f"unexpected memcache value type {type(value).__name__}")


class AppEngineMemcache:
    """One round trip per call; namespaces are left to the key prefix."""

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        found = memcache.get_multi(list(keys))
        return {key: _as_bytes(value) for key, value in found.items()}

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, memcache.Client]]:
        client = memcache.Client()
        found = client.get_multi(list(keys), for_cas=True)
        return {key: (_as_bytes(value), client) for key, value in found.items()}

    def cas(self, key: str, value: bytes, token: memcache.Client) -> bool:
        return bool(token.cas(key, value))

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> list[str]:
        if not values:
            return []
        return list(memcache.add_multi(dict(values), time=expire_seconds))

    def incr(self, key: str, delta: int, initial_value: int | None = None) -> int | None:
        return memcache.incr(key, delta, initial_value=initial_value)

    def delete_multi(self, keys: Sequence[str]) -> list[str]:
        keys = list(keys)
        if not keys:
            return []
        statuses = memcache.Client().delete_multi_async(keys).get_result()
        for key, status in zip(keys, statuses):
            if status == memcache.DELETE_NETWORK_FAILURE:
                raise CacheUnavailableError(key, "delete")
        return [key for key, status in zip(keys, statuses) if status == memcache.DELETE_ITEM_MISSING]
