"""The small interface between the queue and a cache, and how a client is wrapped.

The queue speaks only these six calls; one adapter per backend maps them onto
its client (``appengine_cache`` for App Engine memcache, ``pymemcache_cache``
for memcached) and makes both fail the same way:

* reads (``get_multi``, ``gets_multi``) and ``incr``/``delete_multi`` raise
  ``CacheUnavailableError`` when the cache fails (App Engine's API answers
  "nothing" instead, pymemcache raises its own errors: adapters tell);
* writes that may fail per key (``add_multi``, ``cas_multi``) answer per key
  ``True`` (applied), ``False`` (refused: for add the key was present, for cas
  the value changed or is gone) or ``None`` (unknown: an error, or a reply lost
  after it was applied).

Each call is one round trip per cache server it touches.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

CasToken = Any
"""Opaque: whatever the backend needs to compare-and-set the value it came with."""

Applied = bool | None
"""True: applied; False: refused; None: unknown (may or may not have been applied)."""


class Cache(Protocol):
    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Values of the keys present; counters come back as their decimal bytes."""

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, CasToken]]:
        """Like ``get_multi``, each value with the token ``cas_multi`` needs."""

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> dict[str, Applied]:
        """Store each value whose key is absent."""

    def cas_multi(self, values: Mapping[str, tuple[bytes, CasToken]], expire_seconds: int = 0) -> dict[str, Applied]:
        """Store each value if its key is unchanged since the ``gets_multi`` that gave its token."""

    def incr(self, key: str, delta: int) -> int | None:
        """Add ``delta`` atomically and return the new value; None if the key is
        missing or does not hold a decimal number."""

    def delete_multi(self, keys: Sequence[str]) -> None:
        """Delete the keys (those missing are fine)."""


CACHE_METHODS = ("get_multi", "gets_multi", "add_multi", "cas_multi", "incr", "delete_multi")


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

    def add_multi(self, values, expire_seconds=0):
        self.calls["add_multi"] += 1
        return self.inner.add_multi(values, expire_seconds)

    def cas_multi(self, values, expire_seconds=0):
        self.calls["cas_multi"] += 1
        return self.inner.cas_multi(values, expire_seconds)

    def incr(self, key, delta):
        self.calls["incr"] += 1
        return self.inner.incr(key, delta)

    def delete_multi(self, keys):
        self.calls["delete_multi"] += 1
        return self.inner.delete_multi(keys)


def wrap_client(client: object | None) -> Cache:
    """The Cache for ``client``: None is App Engine memcache, pymemcache clients
    are wrapped, and any object with the six Cache methods is used as it is
    (checked by name, so delegating wrappers and proxies count too)."""
    if client is None:
        from clickqueue.appengine_cache import AppEngineMemcache

        return AppEngineMemcache()
    if type(client).__module__.startswith("pymemcache."):
        from clickqueue.pymemcache_cache import PymemcacheCache

        return PymemcacheCache(client)
    missing = [name for name in CACHE_METHODS if not callable(getattr(client, name, None))]
    if not missing:
        return client  # type: ignore[return-value]
    raise TypeError(
        f"unsupported cache client {type(client).__name__} (no {', '.join(missing)}): pass None "
        "(App Engine memcache), a pymemcache Client/HashClient/PooledClient, or an object with the "
        f"clickqueue.cache.Cache methods {', '.join(CACHE_METHODS)}"
    )
