"""From a client to a ``Cache``: App Engine memcache, pymemcache, or any object
with the ``Cache`` methods. Each adapter is imported only when its client is
given, so neither backend is needed to import clickqueue."""

from __future__ import annotations

from typing import cast

from clickqueue.cache import Cache

CACHE_METHODS = ("get_multi", "gets_multi", "add_multi", "cas_multi", "incr", "delete_multi")


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
        return cast(Cache, client)
    raise TypeError(
        f"unsupported cache client {type(client).__name__} (no {', '.join(missing)}): pass None "
        "(App Engine memcache), a pymemcache Client/HashClient/PooledClient, or an object with the "
        f"clickqueue.cache.Cache methods {', '.join(CACHE_METHODS)}"
    )
