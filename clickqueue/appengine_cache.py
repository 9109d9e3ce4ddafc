"""App Engine memcache (appengine-python-standard) as a clickqueue Cache.

Runs against production memcache on App Engine and against the SDK's
``MemcacheServiceStub`` locally (testbed, dev_appserver). Differences ironed out:

* The API answers "nothing" on an RPC error (``{}``, every key not stored,
  ``None``): every call here makes its own RPC object and checks it, so an
  error raises ``CacheUnavailableError`` (reads, incr, delete) or answers
  ``None`` per key (add, cas), and a per-key ``ERROR`` status is ``None`` too.
* The API unpickles any value stored with the pickle flag. The client here
  is built with an unpickler that reads nothing and hands back a marker, so a
  planted pickle is a foreign value, never code that runs.
* CAS ids live on a ``memcache.Client`` object: every ``gets_multi`` uses a
  fresh Client and hands it out as the token.
* One call carries at most 32 MB: writes are sent in parts under that, at
  once (a ``cas_multi`` with the tokens of several reads, or with several
  expiries, sends one RPC per Client and expiry, all at once too: one round
  trip); a read that fails is retried in halves, down to one key, in case it
  was its size that failed it.
* Counters (stored as ints) read back as their decimal bytes, like memcached.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from google.appengine.api import memcache
from google.appengine.api.memcache.memcache_service_pb2 import MemcacheIncrementResponse
from google.appengine.runtime import apiproxy_errors

from clickqueue.cache import Applied, Expiry, expiry_of
from clickqueue.errors import CacheUnavailableError

MAX_CALL_BYTES = 30_000_000
"""Bytes of values sent in one RPC (App Engine refuses calls over 32 MB)."""

FOREIGN_VALUE = b"\x00foreign:appengine"
"""What a value App Engine could only have unpickled (or a bool) reads as."""

_FOREIGN = object()


class _RefusingUnpickler:
    """Stands where ``pickle.Unpickler`` would: reads nothing, returns a marker."""

    def __init__(self, _file: Any) -> None:
        pass

    def load(self) -> object:
        return _FOREIGN


def _as_bytes(value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    return FOREIGN_VALUE


def _client() -> memcache.Client:
    return memcache.Client(unpickler=_RefusingUnpickler)


def _call(operation: str, key: str, start: Callable[..., Any]) -> Any:
    """Run one RPC started by ``start(rpc=...)``; raise if the RPC itself failed."""
    rpc = memcache.create_rpc()
    start(rpc=rpc)
    rpc.wait()
    try:
        rpc.check_success()
    except apiproxy_errors.Error as error:
        raise CacheUnavailableError(key, operation) from error
    return rpc.get_result()


def _parts(values: Mapping[str, bytes]) -> list[dict[str, bytes]]:
    """``values`` split so that no part carries more than ``MAX_CALL_BYTES``."""
    parts: list[dict[str, bytes]] = [{}]
    part_bytes = 0
    for key, value in values.items():
        if parts[-1] and part_bytes + len(value) > MAX_CALL_BYTES:
            parts.append({})
            part_bytes = 0
        parts[-1][key] = value
        part_bytes += len(value)
    return parts


class AppEngineMemcache:
    """One RPC per call (more only past 32 MB); namespaces are left to the key prefix."""

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        found = self._read(list(keys), _client(), "get")
        return {key: _as_bytes(value) for key, value in found.items()}

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, memcache.Client]]:
        client = _client()
        found = self._read(list(keys), client, "gets")
        return {key: (_as_bytes(value), client) for key, value in found.items()}

    def _read(self, keys: list[str], client: memcache.Client, operation: str) -> dict[str, object]:
        """``get_multi`` (``operation`` "get"), or with CAS tokens for ``client`` ("gets");
        a read refused for its answer's size is made again in halves."""
        if not keys:
            return {}
        for_cas = operation == "gets"
        try:
            found: dict[str, object] = _call(
                operation, keys[0], lambda rpc: client.get_multi_async(keys, for_cas=for_cas, rpc=rpc)
            )
            return found
        except CacheUnavailableError:
            if len(keys) == 1:
                raise
        middle = len(keys) // 2
        return {**self._read(keys[:middle], client, operation), **self._read(keys[middle:], client, operation)}

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> dict[str, Applied]:
        client = _client()
        start = _add_with(client, expire_seconds)
        return self._store([(part, start) for part in _parts(values)] if values else [])

    def cas_multi(
        self, values: Mapping[str, tuple[bytes, memcache.Client]], expire_seconds: Expiry = 0
    ) -> dict[str, Applied]:
        by_client: dict[tuple[memcache.Client, int], dict[str, bytes]] = defaultdict(dict)
        for key, (value, client) in values.items():
            by_client[client, expiry_of(expire_seconds, key)][key] = value
        return self._store(
            [
                (part, _cas_with(client, expiry))
                for (client, expiry), client_values in by_client.items()
                for part in _parts(client_values)
            ]
        )

    def _store(self, parts: list[tuple[dict[str, bytes], Callable[[dict[str, bytes], Any], Any]]]) -> dict[str, Applied]:
        """Send each part by its own ``start``, all RPCs in flight at once (one round
        trip: the tokens of several ``gets_multi`` cost no more); map statuses to Applied."""
        applied: dict[str, Applied] = {}
        rpcs = []
        for part, start in parts:
            rpc = memcache.create_rpc()
            start(part, rpc)
            rpcs.append((part, rpc))
        for part, rpc in rpcs:
            rpc.wait()
            try:
                rpc.check_success()
            except apiproxy_errors.Error:
                applied.update(dict.fromkeys(part))
                continue
            statuses = rpc.get_result() or {}
            applied.update({key: _applied(statuses.get(key)) for key in part})
        return applied

    def incr(self, key: str, delta: int) -> int | None:
        # BatchIncrement answers per key (the single Increment fails the RPC on a
        # missing key, which would look like an outage).
        rpc = memcache.create_rpc()
        _client().offset_multi_async({key: delta}, rpc=rpc)
        rpc.wait()
        try:
            rpc.check_success()
        except apiproxy_errors.Error as error:
            raise CacheUnavailableError(key, "incr") from error
        (item,) = rpc.response.item
        if item.increment_status == MemcacheIncrementResponse.OK:
            new_value: int = item.new_value
            return new_value
        if item.increment_status == MemcacheIncrementResponse.NOT_CHANGED:
            return None  # missing, or not a number
        raise CacheUnavailableError(key, "incr")

    def delete_multi(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        statuses = _call("delete", keys[0], lambda rpc: _client().delete_multi_async(keys, rpc=rpc))
        if statuses is None:  # what the API answers when any key's status is an error
            raise CacheUnavailableError(keys[0], "delete")


def _add_with(client: memcache.Client, expire_seconds: int) -> Callable[[dict[str, bytes], Any], Any]:
    """Starts the add of a part through ``client``."""
    return lambda part, rpc: client.add_multi_async(part, time=expire_seconds, rpc=rpc)


def _cas_with(client: memcache.Client, expire_seconds: int) -> Callable[[dict[str, bytes], Any], Any]:
    """Starts the compare-and-set of a part through ``client``, the one whose ``gets`` gave its tokens."""
    return lambda part, rpc: client.cas_multi_async(part, time=expire_seconds, rpc=rpc)


def _applied(status: int | None) -> Applied:
    if status == memcache.STORED:
        return True
    if status in (memcache.NOT_STORED, memcache.EXISTS):
        return False
    return None  # ERROR, or no status at all
