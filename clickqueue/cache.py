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

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from clickqueue.errors import ContentionError

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


class ObservedCache:
    """A Cache that reports every call it passes on to ``observe(method_name, key)``,
    ``key`` being the first key the call names."""

    def __init__(self, inner: Cache, observe: Callable[[str, str], None]) -> None:
        self.inner = inner
        self.observe = observe

    def get_multi(self, keys):
        self.observe("get_multi", _first(keys))
        return self.inner.get_multi(keys)

    def gets_multi(self, keys):
        self.observe("gets_multi", _first(keys))
        return self.inner.gets_multi(keys)

    def add_multi(self, values, expire_seconds=0):
        self.observe("add_multi", _first(values))
        return self.inner.add_multi(values, expire_seconds)

    def cas_multi(self, values, expire_seconds=0):
        self.observe("cas_multi", _first(values))
        return self.inner.cas_multi(values, expire_seconds)

    def incr(self, key, delta):
        self.observe("incr", key)
        return self.inner.incr(key, delta)

    def delete_multi(self, keys):
        self.observe("delete_multi", _first(keys))
        return self.inner.delete_multi(keys)


def _first(keys: Iterable[str]) -> str:
    return next(iter(keys), "")


class CountingCache(ObservedCache):
    """A Cache that counts the calls made through it, by method name.

    The round-trip tests and the benchmark use it to show calls per operation.
    """

    def __init__(self, inner: Cache) -> None:
        super().__init__(inner, self._count)
        self.calls: Counter[str] = Counter()

    def _count(self, method_name: str, _key: str) -> None:
        self.calls[method_name] += 1

    def total(self) -> int:
        return sum(self.calls.values())


class CallBudget:
    """The cache calls each public queue call may make, counted per thread.

    ``one_call()`` opens the count for a public call (calls nested in it share
    it); every cache call spends one; ``check()``, made only where stopping
    leaves nothing half-done, raises ``ContentionError`` once it is spent,
    naming the key of the last cache call.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._thread = threading.local()

    @contextmanager
    def one_call(self) -> Iterator[None]:
        thread = self._thread
        if getattr(thread, "open", False):
            yield
            return
        thread.open, thread.spent, thread.last_key = True, 0, ""
        try:
            yield
        finally:
            thread.open = False

    def spend(self, _method_name: str, key: str) -> None:
        if getattr(self._thread, "open", False):
            self._thread.spent += 1
            self._thread.last_key = key

    def check(self) -> None:
        if getattr(self._thread, "spent", 0) > self.limit and getattr(self._thread, "open", False):
            raise ContentionError(self._thread.last_key, self._thread.spent)


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
