"""How a queue reaches the simulated cache: one view per cache interface and backend flavour.

A view is what the ``Queue`` under test is given as its cache. Every call goes
through the party's ``CallGate`` first (which parks the party until the
scheduler picks it, counts the call against the budget, and hands back the
call fault of this step, if any), then runs on the ``SimCache`` and answers
the way the backend and adapter would, faults included:

* ``LegacyAppEngineView``: today's ``clickqueue.cache.Cache`` as
  ``AppEngineMemcache`` gives it over App Engine's API, which answers
  "nothing" on an RPC error (``{}``, every key not stored, False, None) and
  unpickles values stored with the pickle flag; ``delete_multi`` raises
  ``CacheUnavailableError``. Values over 1 MB raise ``ValueError`` in the
  API (checked on the SDK); a call over 32 MB stores nothing.
* ``LegacyPymemcacheView``: today's ``Cache`` as ``PymemcacheCache`` gives it:
  errors raise pymemcache's exceptions, a batch may be stored in part before
  one does, ``incr`` with an initial value is three round trips.
* ``ContractView``: the interface of the rewritten library, for either
  backend: per-key ``Applied`` answers (True, False, None for unknown) and
  ``CacheUnavailableError`` where a call cannot answer.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from pymemcache.exceptions import MemcacheClientError, MemcacheServerError, MemcacheUnexpectedCloseError

from clickqueue import CacheUnavailableError
from tests.sim.faults import Fault, FaultKind
from tests.sim.simcache import FLAGS_PICKLED, MAX_VALUE_BYTES, Backend, Item, Outcome, SimCache

Applied = bool | None


class CacheCall(Protocol):
    """One cache call in progress, as the gate opened it."""

    fault: Fault | None
    result: str

    def applied(self, count: int) -> int:
        """How many of the call's ``count`` keys are applied, given its fault."""

    def deleted(self, value: bytes) -> None:
        """Report a value this call deleted (the oracle looks for messages deleted unseen)."""


class CallGate(Protocol):
    """What a view needs from the simulation around each call of one party."""

    @property
    def dead_nodes(self) -> frozenset[int]:
        """The nodes this party currently considers down."""

    def call(self, name: str, keys: Sequence[str], amount: int = 0) -> AbstractContextManager[CacheCall]:
        """Park until scheduled, then open the call (its fault decided); close records it.
        ``amount`` is an ``incr``'s delta (what a failed stat increment leaves uncounted)."""

    def unpickled(self, key: str) -> None:
        """The backend client unpickled the value of ``key``."""


def applied_count(fault: Fault | None, count: int) -> int:
    """Keys applied by a call of ``count`` keys: all, none, or a prefix (a batch cut short)."""
    if fault is None or fault.kind is FaultKind.LOST_REPLY:
        return count
    if fault.kind is FaultKind.FAIL_BEFORE:
        return 0
    return fault.rng.randrange(1, count) if count > 1 else fault.rng.randrange(2)


def _shown(answer: Outcome | int | None) -> str:
    """A SimCache answer as a trace line shows it ("not applied" when the fault kept it from running)."""
    if answer is None:
        return "none"
    return answer.value if isinstance(answer, Outcome) else str(answer)


def _small_value(values: Mapping[str, object]) -> str:
    """The value of a one-key store, when short (a counter): the trace shows what was written."""
    if len(values) != 1:
        return ""
    (value,) = values.values()
    value = value[0] if isinstance(value, tuple) else value
    return f" {value!r}" if len(value) <= 24 else ""


def _call_bytes(values: Mapping[str, bytes]) -> int:
    return sum(len(key) + len(value) for key, value in values.items())


class _SimView:
    def __init__(self, cache: SimCache, gate: CallGate) -> None:
        self.cache = cache
        self.gate = gate

    def _items(self, keys: Sequence[str]) -> Iterator[tuple[str, Item]]:
        dead = self.gate.dead_nodes
        for key in keys:
            item = self.cache.get(key, dead)
            if item is not None:
                yield key, item

    def _delete(self, call: CacheCall, keys: Sequence[str]) -> list[bool]:
        dead = self.gate.dead_nodes
        deleted = []
        for key in keys:
            item = self.cache.get(key, dead)
            deleted.append(self.cache.delete(key, dead))
            if item is not None:
                call.deleted(item.value)
        return deleted

    def _over_call_limit(self, values: Mapping[str, bytes]) -> bool:
        limit = self.cache.backend.max_call_bytes
        return limit is not None and _call_bytes(values) > limit


# -- today's interface ---------------------------------------------------------------------


class LegacyAppEngineView(_SimView):
    """``clickqueue.cache.Cache`` as today's App Engine adapter answers it."""

    def _value(self, key: str, item: Item) -> bytes:
        if item.flags != FLAGS_PICKLED:
            return item.value
        self.gate.unpickled(key)
        value = pickle.loads(item.value)  # what memcache.get_multi does with the pickle flag
        if isinstance(value, bytes):
            return value
        if isinstance(value, int):
            return str(value).encode()
        if isinstance(value, str):
            return value.encode()
        raise TypeError(f"unexpected memcache value type {type(value).__name__}")

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        with self.gate.call("get_multi", keys) as call:
            if call.fault:
                return {}
            found = {key: self._value(key, item) for key, item in self._items(keys)}
            call.result = f"{len(found)} found"
            return found

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, int]]:
        if not keys:
            return {}
        with self.gate.call("gets_multi", keys) as call:
            if call.fault:
                return {}
            found = {key: (self._value(key, item), item.cas_id) for key, item in self._items(keys)}
            call.result = f"{len(found)} found"
            return found

    def cas(self, key: str, value: bytes, token: int) -> bool:
        with self.gate.call("cas", [key]) as call:
            if len(value) > MAX_VALUE_BYTES:
                raise ValueError(f"Values may not be more than {MAX_VALUE_BYTES} bytes in length")
            outcome = self.cache.cas(key, value, token, 0, self.gate.dead_nodes) if call.applied(1) else None
            call.result = _shown(outcome)
            return not call.fault and outcome is Outcome.STORED

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> list[str]:
        if not values:
            return []
        keys = list(values)
        with self.gate.call("add_multi", keys) as call:
            if any(len(value) > MAX_VALUE_BYTES for value in values.values()):
                raise ValueError(f"Values may not be more than {MAX_VALUE_BYTES} bytes in length")
            if self._over_call_limit(values):
                call.result = "call over 32 MB: nothing stored"
                return keys
            dead = self.gate.dead_nodes
            outcomes = [
                self.cache.add(key, values[key], expire_seconds, dead) for key in keys[: call.applied(len(keys))]
            ]
            if call.fault:
                return keys
            not_stored = [key for key, outcome in zip(keys, outcomes) if outcome is not Outcome.STORED]
            call.result = f"{len(not_stored)} not stored{_small_value(values)}"
            return not_stored

    def incr(self, key: str, delta: int, initial_value: int | None = None) -> int | None:
        with self.gate.call("incr", [key], delta) as call:
            value = None
            if call.applied(1):
                dead = self.gate.dead_nodes
                value = self.cache.incr(key, delta, dead)
                if value is None and initial_value is not None:
                    value = (
                        initial_value + delta if self.cache.create_counter(key, initial_value + delta, dead) else None
                    )
            call.result = _shown(value)
            return None if call.fault or isinstance(value, Outcome) else value

    def delete_multi(self, keys: Sequence[str]) -> list[str]:
        keys = list(keys)
        if not keys:
            return []
        with self.gate.call("delete_multi", keys) as call:
            deleted = self._delete(call, keys[: call.applied(len(keys))])
            if call.fault:
                raise CacheUnavailableError(keys[0], "delete")
            missing = [key for key, was_there in zip(keys, deleted) if not was_there]
            call.result = f"{len(missing)} missing"
            return missing


def injected(error: Exception) -> Exception:
    """Mark a backend exception as an injected fault (legacy views): the legacy
    library passes those through, and the oracle tolerates exactly those."""
    error.injected_by_simulation = True
    return error


def _pymemcache_error(fault: Fault) -> Exception:
    if fault.rng.random() < 0.5:
        return injected(MemcacheUnexpectedCloseError())
    return injected(MemcacheServerError("SERVER_ERROR out of memory storing object"))


class LegacyPymemcacheView(_SimView):
    """``clickqueue.cache.Cache`` as today's pymemcache adapter answers it."""

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        with self.gate.call("get_multi", keys) as call:
            if call.fault:
                raise _pymemcache_error(call.fault)
            found = {key: item.value for key, item in self._items(keys)}
            call.result = f"{len(found)} found"
            return found

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, int]]:
        if not keys:
            return {}
        with self.gate.call("gets_multi", keys) as call:
            if call.fault:
                raise _pymemcache_error(call.fault)
            found = {key: (item.value, item.cas_id) for key, item in self._items(keys)}
            call.result = f"{len(found)} found"
            return found

    def cas(self, key: str, value: bytes, token: int) -> bool:
        with self.gate.call("cas", [key]) as call:
            outcome = self.cache.cas(key, value, token, 0, self.gate.dead_nodes) if call.applied(1) else None
            call.result = _shown(outcome)
            if call.fault:
                raise _pymemcache_error(call.fault)
            if outcome is Outcome.TOO_LARGE:
                raise MemcacheServerError("object too large for cache")
            return outcome is Outcome.STORED

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> list[str]:
        keys = list(values)
        if not keys:
            return []
        with self.gate.call("add_multi", keys) as call:
            dead = self.gate.dead_nodes
            outcomes = [
                self.cache.add(key, values[key], expire_seconds, dead) for key in keys[: call.applied(len(keys))]
            ]
            call.result = (
                f"{sum(outcome is Outcome.STORED for outcome in outcomes)} of {len(keys)} stored{_small_value(values)}"
            )
            if call.fault:
                raise _pymemcache_error(call.fault)
            if Outcome.TOO_LARGE in outcomes:
                raise MemcacheServerError("object too large for cache")
            return [key for key, outcome in zip(keys, outcomes) if outcome is not Outcome.STORED]

    def _incr_once(self, key: str, delta: int) -> int | None:
        with self.gate.call("incr", [key], delta) as call:
            value = self.cache.incr(key, delta, self.gate.dead_nodes) if call.applied(1) else None
            call.result = _shown(value)
            if call.fault:
                raise _pymemcache_error(call.fault)
            if isinstance(value, Outcome):
                raise MemcacheClientError("cannot increment or decrement non-numeric value")
            return value

    def incr(self, key: str, delta: int, initial_value: int | None = None) -> int | None:
        value = self._incr_once(key, delta)
        if value is not None or initial_value is None:
            return value
        if not self.add_multi({key: str(initial_value + delta).encode()}):
            return initial_value + delta
        return self._incr_once(key, delta)

    def delete_multi(self, keys: Sequence[str]) -> list[str]:
        keys = list(keys)
        if not keys:
            return []
        with self.gate.call("delete_multi", keys) as call:
            deleted = self._delete(call, keys[: call.applied(len(keys))])
            if call.fault:
                raise _pymemcache_error(call.fault)
            missing = [key for key, was_there in zip(keys, deleted) if not was_there]
            call.result = f"{len(missing)} missing"
            return missing


# -- the rewritten library's interface ---------------------------------------------------------


class ContractView(_SimView):
    """The cache contract of the rewritten library (the lead's adapters implement it).

    A value stored with the pickle flag comes back as its raw bytes, as an
    adapter that never unpickles would hand it over.
    """

    def __init__(self, cache: SimCache, gate: CallGate, backend: Backend) -> None:
        super().__init__(cache, gate)
        self.backend = backend

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        if not keys:
            return {}
        with self.gate.call("get_multi", keys) as call:
            if call.fault:
                raise CacheUnavailableError(keys[0], "get")
            found = {key: item.value for key, item in self._items(keys)}
            call.result = f"{len(found)} found"
            return found

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, int]]:
        if not keys:
            return {}
        with self.gate.call("gets_multi", keys) as call:
            if call.fault:
                raise CacheUnavailableError(keys[0], "gets")
            found = {key: (item.value, item.cas_id) for key, item in self._items(keys)}
            call.result = f"{len(found)} found"
            return found

    def _store_multi(self, name: str, values: Mapping[str, object], store) -> dict[str, Applied]:
        keys = list(values)
        if not keys:
            return {}
        with self.gate.call(name, keys) as call:
            if self._over_call_limit({key: _stored_bytes(value) for key, value in values.items()}):
                call.result = "call over 32 MB: nothing stored"
                return dict.fromkeys(keys)
            outcomes = [store(key, values[key]) for key in keys[: call.applied(len(keys))]]
            answers: dict[str, Applied] = {
                key: None if outcome is Outcome.TOO_LARGE else outcome is Outcome.STORED
                for key, outcome in zip(keys, outcomes)
            }
            call.result = (
                f"{sum(answer is True for answer in answers.values())} of {len(keys)} applied{_small_value(values)}"
            )
            return dict.fromkeys(keys) if call.fault else answers

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> dict[str, Applied]:
        dead = self.gate.dead_nodes
        return self._store_multi(
            "add_multi", values, lambda key, value: self.cache.add(key, value, expire_seconds, dead)
        )

    def cas_multi(self, values: Mapping[str, tuple[bytes, int]], expire_seconds: int = 0) -> dict[str, Applied]:
        dead = self.gate.dead_nodes
        return self._store_multi(
            "cas_multi", values, lambda key, pair: self.cache.cas(key, pair[0], pair[1], expire_seconds, dead)
        )

    def incr(self, key: str, delta: int) -> int | None:
        with self.gate.call("incr", [key], delta) as call:
            value = self.cache.incr(key, delta, self.gate.dead_nodes) if call.applied(1) else None
            call.result = _shown(value)
            if call.fault:
                raise CacheUnavailableError(key, "incr")
            return None if isinstance(value, Outcome) else value

    def delete_multi(self, keys: Sequence[str]) -> None:
        keys = list(keys)
        if not keys:
            return
        with self.gate.call("delete_multi", keys) as call:
            self._delete(call, keys[: call.applied(len(keys))])
            if call.fault:
                raise CacheUnavailableError(keys[0], "delete")


def _stored_bytes(value: object) -> bytes:
    """The bytes an add (a value) or a cas (a value and its token) stores."""
    return value[0] if isinstance(value, tuple) else value
