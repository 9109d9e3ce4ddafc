"""memcached through pymemcache as a clickqueue Cache.

Takes a pymemcache ``Client``, ``PooledClient`` or ``HashClient`` (several
servers: Memorystore for Memcached, or your own). Every call is sent as
memcached meta commands (``mg``, ``ms`` in add or compare-and-set mode, ``md``,
``ma``; memcached 1.6+), pipelined in one batch per server. Reads ask in quiet
mode, closed by ``mn``: a miss costs no reply at all, and each hit names its
key (a read of a hundred slots that are mostly empty parses only what is
there). Every write gets its own answer per key. pymemcache has no public call
for that: its multi-key stores raise at the first error line after storing the
keys before it, it has no ``add_many``, and ``raw_command`` (4.0) loses bytes
when a reply spans two socket reads. So batches are written to and read from
the client's own socket here (a pooled client lends one of its clients), and a
failure closes that connection.

With a ``HashClient``, keys are routed by its ring and every call runs through
its own failure handling, so its retry and dead-server settings apply as they
do to its own calls. pymemcache has no public API for any of this; the names
this adapter needs, all tested with pymemcache 4.0.0 (the ``memcached`` extra
allows 4.0.x only), are:

* ``Client._connect()`` and ``Client.sock``: open and use the connection;
* ``PooledClient.client_pool.get_and_release()``: borrow a pooled connection;
* ``HashClient.clients`` (server name to ``Client``), ``HashClient._get_client(key)``
  (the ring; also brings dead servers back) and ``HashClient._safely_run_func``
  (retries, dead-server marking);
* ``LegacyWrappingSerde._default_deserialize``: to tell a client that returns raw
  bytes (no serde of its own) from one that would unpickle.

A server that is failing,
or being waited on before a retry, fails the call (``CacheUnavailableError``,
or an unknown outcome per key) instead of passing for a miss.

A client with a serde of its own (pickle, for one) or a key prefix is refused:
clickqueue stores JSON bytes under its own keys and never lets a cache value be
unpickled. Give clients a ``timeout``/``connect_timeout``: without one a hung
server blocks a call.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from pymemcache.client.base import Client
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheError
from pymemcache.serde import LegacyWrappingSerde

from clickqueue.cache import Applied, CasToken, Expiry, expiry_of
from clickqueue.errors import CacheUnavailableError, InvalidArgumentError

_NOT_RUN = object()
"""What ``HashClient._safely_run_func`` hands back when it skipped a failing server."""

_STORED, _NOT_STORED, _EXISTS, _NOT_FOUND = b"HD", b"NS", b"EX", b"NF"
_NOT_IN_A_KEY = re.compile(r"[^!-~]")
"""A key memcached's text protocol takes: 1 to 250 printable ASCII characters, no space."""
_RECV_BYTES = 65536


def _node_clients(client: Any) -> list[Any]:
    return list(client.clients.values()) if isinstance(client, HashClient) else [client]


def _reads_raw_bytes(node: Any) -> bool:
    serde = getattr(node, "serde", None)
    return isinstance(serde, LegacyWrappingSerde) and getattr(serde.deserialize, "__func__", None) is (
        LegacyWrappingSerde._default_deserialize
    )


def _connection(server: Any) -> AbstractContextManager[Client]:
    """The plain ``Client`` behind ``server``, borrowed from its pool if it has one."""
    pool = getattr(server, "client_pool", None)
    return nullcontext(server) if pool is None else pool.get_and_release(destroy_on_fail=True)


class _Replies:
    """Reads reply lines and values from a socket, however the bytes arrive."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.position = 0

    def _receive(self) -> None:
        chunk = self.sock.recv(_RECV_BYTES)
        if not chunk:
            raise ConnectionResetError("memcached closed the connection mid-reply")
        self.buffer += chunk

    def line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n", self.position)) < 0:
            self._receive()
        line = bytes(self.buffer[self.position : end])
        self.position = end + 2
        return line

    def lines(self, count: int) -> list[bytes]:
        """The next ``count`` reply lines (of commands that answer one line each)."""
        while self.buffer.count(b"\r\n", self.position) < count:
            self._receive()
        lines = bytes(self.buffer[self.position :]).split(b"\r\n", count)
        self.position = len(self.buffer) - len(lines.pop())
        return lines

    def value(self, size: int) -> bytes:
        """The ``size`` bytes of a value after its header line, and the line end after them."""
        end = self.position + size
        while len(self.buffer) < end + 2:
            self._receive()
        value = bytes(self.buffer[self.position : end])
        self.position = end + 2
        return value


def _pipeline(server: Any, payload: bytes, read: Callable[[_Replies], Any]) -> Any:
    """Send ``payload`` on one connection of ``server`` and ``read`` the replies."""
    with _connection(server) as client:
        if client.sock is None:
            client._connect()
        try:
            client.sock.sendall(payload)
            return read(_Replies(client.sock))
        except BaseException:
            client.close()  # a half-read reply, or one not read at all, must not reach the next call
            raise


class PymemcacheCache:
    """One round trip per call and server touched."""

    def __init__(self, client: Any) -> None:
        nodes = _node_clients(client)
        if not all(_reads_raw_bytes(node) for node in nodes):
            raise TypeError("pass a pymemcache client without serde/serializer: clickqueue stores JSON bytes")
        if any(getattr(node, "key_prefix", b"") for node in nodes):
            raise TypeError("pass a pymemcache client without key_prefix: the queue prefixes its own keys")
        self.client = client
        self._ring = client if isinstance(client, HashClient) else None

    # -- routing and failures ------------------------------------------------------

    def _by_server(self, keys: Sequence[str]) -> dict[Any, list[str]]:
        """The keys by the server that holds them, every key checked first: a key is
        written into the command line as it is."""
        lengths = list(map(len, keys))
        if _NOT_IN_A_KEY.search("".join(keys)) or min(lengths, default=1) < 1 or max(lengths, default=1) > 250:
            bad = next(key for key in keys if _NOT_IN_A_KEY.search(key) or not 0 < len(key) <= 250)
            raise InvalidArgumentError("cache key", bad, "use 1 to 250 printable ASCII characters without spaces")
        if self._ring is None:
            return {self.client: list(keys)}
        batches: dict[Any, list[str]] = defaultdict(list)
        for key in keys:
            try:
                server = self._ring._get_client(key)
            except MemcacheError as error:  # every server is marked dead
                raise CacheUnavailableError(key, "route") from error
            if server is None:
                raise CacheUnavailableError(key, "route")
            batches[server].append(key)
        return batches

    def servers_touched(self, keys: Sequence[str]) -> int:
        """How many servers a call naming ``keys`` goes to: its round trips (``RoutedCache``)."""
        try:
            return len(self._by_server(keys)) if keys else 1
        except (CacheUnavailableError, InvalidArgumentError):
            return 1  # the call itself fails the same way, after trying one server at most

    def _run(self, server: Any, operation: str, key: str, function: Callable[..., Any], *args: Any) -> Any:
        """Run one server's part of a call; any failure becomes ``CacheUnavailableError``."""
        try:
            result = function(*args) if self._ring is None else self._ring._safely_run_func(server, function, _NOT_RUN, *args)
        except (OSError, MemcacheError) as error:
            result = _NOT_RUN
            failure: BaseException | None = error
        else:
            failure = None
        if result is _NOT_RUN:
            raise CacheUnavailableError(key, operation) from failure
        return result

    def _meta(self, server: Any, operation: str, keys: list[str], commands: list[bytes]) -> list[bytes]:
        """Send ``commands`` (one per key) as one pipeline; return the reply line of each."""
        payload = b"".join(commands)
        lines: list[bytes] = self._run(
            server, operation, keys[0], _pipeline, server, payload, lambda replies: replies.lines(len(commands))
        )
        return lines

    def _read(self, keys: Sequence[str], flags: bytes, operation: str) -> dict[str, list[bytes]]:
        """``mg`` each key with ``flags`` in quiet mode (misses answer nothing) and a
        closing ``mn``, one pipeline per server: each present key's value and the
        flags its reply carried."""
        found: dict[str, list[bytes]] = {}
        if not keys:
            return found

        def read(replies: _Replies) -> None:
            while (head := replies.line()) != b"MN":
                if not head.startswith(b"VA "):
                    raise CacheUnavailableError(keys[0], operation)
                _va, size, *returned = head.split(b" ")
                value = replies.value(int(size))
                key = next(flag[1:] for flag in returned if flag[:1] == b"k").decode()
                found[key] = [value, *returned]

        for server, server_keys in self._by_server(keys).items():
            payload = b"".join([b"mg %s %s\r\n" % (key.encode(), flags) for key in server_keys]) + b"mn\r\n"
            self._run(server, operation, server_keys[0], _pipeline, server, payload, read)
        return found

    # -- the Cache interface -------------------------------------------------------

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        return {key: reply[0] for key, reply in self._read(keys, b"v k q", "get").items()}

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, CasToken]]:
        return {
            key: (reply[0], next(flag[1:] for flag in reply[1:] if flag[:1] == b"c"))
            for key, reply in self._read(keys, b"v c k q", "gets").items()
        }

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> dict[str, Applied]:
        return self._store(
            "add", {key: b" T%d ME" % expire_seconds for key in values}, values, {_STORED: True, _NOT_STORED: False}
        )

    def cas_multi(self, values: Mapping[str, tuple[bytes, CasToken]], expire_seconds: Expiry = 0) -> dict[str, Applied]:
        return self._store(
            "cas",
            {key: b" T%d C%s" % (expiry_of(expire_seconds, key), token) for key, (_value, token) in values.items()},
            {key: value for key, (value, _token) in values.items()},
            {_STORED: True, _EXISTS: False, _NOT_FOUND: False},
        )

    def _store(
        self, operation: str, flags: dict[str, bytes], values: Mapping[str, bytes], answers: dict[bytes, bool]
    ) -> dict[str, Applied]:
        """``ms`` each value with its flags; a reply outside ``answers`` (an error) is unknown."""
        applied: dict[str, Applied] = {}
        if not values:
            return applied
        for server, keys in self._by_server(list(values)).items():
            commands = [
                b"ms %s %d%s\r\n%s\r\n" % (key.encode(), len(values[key]), flags[key], values[key]) for key in keys
            ]
            try:
                replies = self._meta(server, operation, keys, commands)
            except CacheUnavailableError:
                applied.update(dict.fromkeys(keys))
                continue
            applied.update({key: answers.get(reply.split(b" ", 1)[0]) for key, reply in zip(keys, replies)})
        return applied

    def incr(self, key: str, delta: int) -> int | None:
        (server,) = self._by_server([key])

        def read(replies: _Replies) -> int | None:
            head = replies.line()
            if head.startswith(b"VA "):
                value = replies.line()
                return int(value) if value.isdigit() else None
            if head == _NOT_FOUND or head.startswith(b"CLIENT_ERROR"):
                return None  # missing, or not a number
            raise CacheUnavailableError(key, "incr")

        value: int | None = self._run(server, "incr", key, _pipeline, server, b"ma %s D%d v\r\n" % (key.encode(), delta), read)
        return value

    def delete_multi(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        for server, server_keys in self._by_server(keys).items():
            replies = self._meta(server, "delete", server_keys, [b"md %s\r\n" % key.encode() for key in server_keys])
            if any(reply not in (_STORED, _NOT_FOUND) for reply in replies):
                raise CacheUnavailableError(server_keys[0], "delete")
