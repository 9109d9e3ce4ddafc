"""Today's six-call ``Cache`` over a ``ContractView``: only so the contract view runs before the rewrite.

The rewritten ``Queue`` takes a ``ContractView`` as its cache directly. Until
it lands, the runner puts this thin shim between today's ``Queue`` and the
contract view, so the contract path of the harness (views, oracle, runner)
is exercised end to end; failures found through it are today's bugs (and the
shim's own blind spots: ``delete_multi`` has no per-key answer in the contract,
so the shim claims every key was there).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tests.sim.views import ContractView


class LegacyCacheOverContract:
    def __init__(self, contract: ContractView) -> None:
        self.contract = contract

    def get_multi(self, keys: Sequence[str]) -> dict[str, bytes]:
        return self.contract.get_multi(keys)

    def gets_multi(self, keys: Sequence[str]) -> dict[str, tuple[bytes, int]]:
        return self.contract.gets_multi(keys)

    def cas(self, key: str, value: bytes, token: int) -> bool:
        return self.contract.cas_multi({key: (value, token)})[key] is True

    def add_multi(self, values: Mapping[str, bytes], expire_seconds: int = 0) -> list[str]:
        answers = self.contract.add_multi(values, expire_seconds)
        return [key for key, applied in answers.items() if applied is not True]

    def incr(self, key: str, delta: int, initial_value: int | None = None) -> int | None:
        value = self.contract.incr(key, delta)
        if value is not None or initial_value is None:
            return value
        if self.contract.add_multi({key: str(initial_value + delta).encode()})[key] is True:
            return initial_value + delta
        return self.contract.incr(key, delta)

    def delete_multi(self, keys: Sequence[str]) -> list[str]:
        self.contract.delete_multi(keys)
        return []
