"""How a queue reaches the simulated cache: the cache contract of ``clickqueue.cache``.

``ContractView`` is what the ``Queue`` under test is given as its cache. Every
call goes through the party's ``CallGate`` first (which parks the party until
the scheduler picks it, counts the call against the budget, and hands back the
call fault of this step, if any), then runs on the ``SimCache`` and answers as
both backends' adapters do, faults included: per-key ``Applied`` answers
(True, False, None for unknown) from ``add_multi``/``cas_multi``, and
``CacheUnavailableError`` where a call cannot answer. A value stored with
App Engine's pickle flag comes back as its raw bytes, never unpickled.
(The views of the library before the fault-model work, with its adapters' failure
behaviour, are in git history, at df9db96.)
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Protocol


from clickqueue import CacheUnavailableError
from clickqueue.cache import Expiry, expiry_of
from tests.sim.faults import Fault, FaultKind
from tests.sim.simcache import Backend, Item, Outcome, SimCache

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
        ``amount`` is an ``incr``'s delta (shown in the trace)."""


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

    def cas_multi(self, values: Mapping[str, tuple[bytes, int]], expire_seconds: Expiry = 0) -> dict[str, Applied]:
        dead = self.gate.dead_nodes
        return self._store_multi(
            "cas_multi",
            values,
            lambda key, pair: self.cache.cas(key, pair[0], pair[1], expiry_of(expire_seconds, key), dead),
        )

    def incr(self, key: str, delta: int) -> int | None:
        with self.gate.call("incr", [key], delta) as call:
            value = self.cache.incr(key, delta, self.gate.dead_nodes) if call.applied(1) else None
            call.result = _shown(value)
            if isinstance(value, int):
                self.gate.world.slots_handed_out(key, delta, value)
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
