"""The small interface between the queue and a cache, and the wrappers that observe it.

The queue speaks only these six calls; one adapter per backend maps them onto
its client (``appengine_cache`` for App Engine memcache, ``pymemcache_cache``
for memcached; ``clickqueue.clients.wrap_client`` picks one) and makes both fail
the same way:

* reads (``get_multi``, ``gets_multi``) and ``incr``/``delete_multi`` raise
  ``CacheUnavailableError`` when the cache fails (App Engine's API answers
  "nothing" instead, pymemcache raises its own errors: adapters tell);
* writes that may fail per key (``add_multi``, ``cas_multi``) answer per key
  ``True`` (applied), ``False`` (refused: for add the key was present, for cas
  the value changed or is gone) or ``None`` (unknown: an error, or a reply lost
  after it was applied).

Each call is one round trip per cache server it touches (a pipelined batch of
commands, or RPCs in flight at once, is one trip); an adapter whose keys can
live on several servers says how many a call touches (``RoutedCache``).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable

from clickqueue.errors import ContentionError

CasToken = Any
"""Opaque: whatever the backend needs to compare-and-set the value it came with."""

Applied = bool | None
"""True: applied; False: refused; None: unknown (may or may not have been applied)."""

Expiry = int | Mapping[str, int]
"""Seconds until stored values expire (0: never): one number for every value, or
one per key (a key it does not name: 0)."""


def expiry_of(expire_seconds: Expiry, key: str) -> int:
    """The seconds ``expire_seconds`` gives the value of ``key``."""
    return expire_seconds if isinstance(expire_seconds, int) else expire_seconds.get(key, 0)


class Cache(Protocol):
    """The six calls the queue makes. Each is one round trip per server it touches.
    Every call also raises ``InvalidArgumentError`` for a key its backend cannot
    store (the queue's own keys always can be)."""

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        """Returns the values of the keys present (a missing key is absent from the
        dict); counters come back as their decimal bytes.
        Raises ``CacheUnavailableError`` when the cache fails."""
        ...

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, CasToken]]:
        """Returns, like ``get_multi``, each present value with the token
        ``cas_multi`` needs. Raises ``CacheUnavailableError`` when the cache fails."""
        ...

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> dict[str, Applied]:
        """Stores each value whose key is absent. Returns, per key, True (stored),
        False (the key was present) or None (unknown: an error, or a lost reply).
        Raises ``CacheUnavailableError`` only when it cannot be sent at all (no
        server for a key); a failure once sent is None for the keys it touched."""
        ...

    def cas_multi(self, values: Mapping[str, tuple[bytes, CasToken]], expire_seconds: Expiry = 0) -> dict[str, Applied]:
        """Stores each value if its key is unchanged since the ``gets_multi`` that gave
        its token, to expire after ``expire_seconds`` (one number for all, or one per
        key: ``expiry_of``). Returns, per key, True (stored), False (changed or gone)
        or None (unknown). Raises as ``add_multi`` does."""
        ...

    def incr(self, key: str, delta: int) -> int | None:
        """Adds ``delta`` atomically. Returns the new value; None if the key is missing
        or does not hold a decimal number. Raises ``CacheUnavailableError`` when the
        cache fails, even if the increment may have been applied."""
        ...

    def delete_multi(self, keys: Sequence[str]) -> None:
        """Deletes the keys (those missing are fine). Returns nothing.
        Raises ``CacheUnavailableError`` when the cache fails."""
        ...


class ObservedCache:
    """A Cache that reports every call it passes on to ``observe(method_name, key)``,
    ``key`` being the first key the call names."""

    def __init__(self, inner: Cache, observe: Callable[[str, str], None]) -> None:
        self.inner = inner
        self.observe = observe

    def _seen(self, method_name: str, keys: Sequence[str]) -> None:
        self.observe(method_name, _first(keys))

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        self._seen("get_multi", keys)
        return self.inner.get_multi(keys)

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, CasToken]]:
        self._seen("gets_multi", keys)
        return self.inner.gets_multi(keys)

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> dict[str, Applied]:
        self._seen("add_multi", list(values))
        return self.inner.add_multi(values, expire_seconds)

    def cas_multi(self, values: Mapping[str, tuple[bytes, CasToken]], expire_seconds: Expiry = 0) -> dict[str, Applied]:
        self._seen("cas_multi", list(values))
        return self.inner.cas_multi(values, expire_seconds)

    def incr(self, key: str, delta: int) -> int | None:
        self._seen("incr", [key])
        return self.inner.incr(key, delta)

    def delete_multi(self, keys: Sequence[str]) -> None:
        self._seen("delete_multi", keys)
        self.inner.delete_multi(keys)


@runtime_checkable
class RoutedCache(Protocol):
    """A Cache whose keys can live on several servers (memcached through a
    ``HashClient``): a call is one round trip per server it touches."""

    def servers_touched(self, keys: Sequence[str]) -> int:
        """How many servers a call naming ``keys`` sends to."""
        ...


def round_trips(cache: object, keys: Sequence[str]) -> int:
    """The round trips of one call naming ``keys``: one per server it touches, and
    one for a cache that is one server (or answers every call in one RPC)."""
    return cache.servers_touched(keys) if isinstance(cache, RoutedCache) else 1


def _first(keys: Iterable[str]) -> str:
    return next(iter(keys), "")


class CountingCache(ObservedCache):
    """A Cache that counts the calls made through it, by method name, and their
    round trips (``round_trips``: one per call and server it touches).

    The round-trip tests and the benchmark use it to show calls per operation.
    """

    def __init__(self, inner: Cache) -> None:
        super().__init__(inner, lambda _method_name, _key: None)
        self.calls: Counter[str] = Counter()
        self.round_trips = 0

    def _seen(self, method_name: str, keys: Sequence[str]) -> None:
        self.calls[method_name] += 1
        self.round_trips += round_trips(self.inner, keys)

    def total(self) -> int:
        return sum(self.calls.values())

    def clear(self) -> None:
        """Start counting again from zero."""
        self.calls.clear()
        self.round_trips = 0


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
