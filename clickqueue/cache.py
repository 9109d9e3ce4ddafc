"""The small interface between the queue and a cache, and how a client is wrapped.

The queue speaks only these six calls; one adapter per backend maps them onto
its client (``appengine_cache`` for App Engine memcache, ``pymemcache_cache``
for memcached) and irons out where the backends disagree. Each call is one
cache round trip (per server, for a client spread over several servers).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

CasToken = Any
"""Opaque: whatever the backend needs to compare-and-set the value it came with."""


@runtime_checkable
class Cache(Protocol):
    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Values of the keys present; counters come back as their decimal bytes."""

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, CasToken]]:
        """Like ``get_multi``, each value with the token ``cas`` needs."""

    def cas(self, key: str, value: bytes, token: CasToken) -> bool:
        """Store ``value`` if ``key`` is unchanged since the ``gets`` that gave ``token``.

        False when someone changed it in between, or it is gone.
        """

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> list[str]:
        """Store each value whose key is absent; return the keys NOT stored."""

    def incr(self, key: str, delta: int, initial_value: int | None = None) -> int | None:
        """Add ``delta`` atomically and return the new value.

        A missing key gives None, or with ``initial_value`` is created as
        ``initial_value + delta``.
        """

    def delete_multi(self, keys: Sequence[str]) -> list[str]:
        """Delete the keys; return those that were not there."""


class CountingCache:
    """A Cache that counts the calls made through it, by method name.

    The round-trip tests and the benchmark use it to show calls per operation.
    """

    def __init__(self, inner: Cache) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def total(self) -> int:
        return sum(self.calls.values())

    def get_multi(self, keys):
        self.calls["get_multi"] += 1
        return self.inner.get_multi(keys)

    def gets_multi(self, keys):
        self.calls["gets_multi"] += 1
        return self.inner.gets_multi(keys)

    def cas(self, key, value, token):
        self.calls["cas"] += 1
        return self.inner.cas(key, value, token)

    def add_multi(self, values, expire_seconds=0):
        self.calls["add_multi"] += 1
        return self.inner.add_multi(values, expire_seconds)

    def incr(self, key, delta, initial_value=None):
        self.calls["incr"] += 1
        return self.inner.incr(key, delta, initial_value)

    def delete_multi(self, keys):
        self.calls["delete_multi"] += 1
        return self.inner.delete_multi(keys)


def wrap_client(client: object | None) -> Cache:
    """The Cache for ``client``: None is App Engine memcache, pymemcache clients
    are wrapped, and an object that already is a Cache is used as it is."""
    if client is None:
        from clickqueue.appengine_cache import AppEngineMemcache

        return AppEngineMemcache()
    if type(client).__module__.startswith("pymemcache."):
        from clickqueue.pymemcache_cache import PymemcacheCache

        return PymemcacheCache(client)
    if isinstance(client, Cache):
        return client
    raise TypeError(
        f"unsupported cache client {type(client).__name__}: pass None (App Engine memcache), "
        "a pymemcache Client/HashClient/PooledClient, or a clickqueue.cache.Cache"
    )
