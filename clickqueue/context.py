"""What the parts of one queue share: its cache, keys, call budget, state store,
recovery, clock, sleep and random source, built once by ``Queue`` and passed to
each part (``writing``, ``claiming``, ``taking``, ``leases``), so that no part
reaches into another's attributes. The protocol: docs/protocol.md."""

from __future__ import annotations

import functools
import itertools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Concatenate, ParamSpec, Protocol, TypeVar

from clickqueue.cache import CallBudget, ObservedCache
from clickqueue.clients import wrap_client
from clickqueue.errors import CacheUnavailableError, ContentionError
from clickqueue.keys import QueueKeys
from clickqueue.recovery import Recovery
from clickqueue.state import ReadState, StateStore, cas_pause_seconds

logger = logging.getLogger(__name__)

MAX_CACHE_CALLS_PER_CALL = 500
"""Cache calls one public call may make, whatever the cache holds: past it, the call
raises ``ContentionError`` at its next point where nothing is half-done. A normal
call makes 1 to 6; the most a call needs on its own terms is a write taking all its
``MAX_WRITE_ATTEMPTS`` fresh slots (about 4 calls each)."""


@dataclass
class QueueContext:
    """One queue's collaborators and settings (see ``Queue`` for each)."""

    name: str
    cache: ObservedCache
    budget: CallBudget
    shards: int
    clock: Callable[[], float]
    sleep: Callable[[float], None]
    rng: random.Random
    tombstone_seconds: int
    max_write_seconds: float
    keys: QueueKeys = field(init=False)
    counter_keys: list[str] = field(init=False)
    writer_shards: Iterator[int] = field(init=False)
    """The shard each write takes its slots from: every shard in turn, from a random one."""
    store: StateStore = field(init=False)
    recovery: Recovery = field(init=False)
    seen_queue: bool = False
    """Whether this process has used the queue (then a missing state is a reset)."""
    last_claimed: list[int] | None = None
    """Where this process last saw the claims end, per shard: a hint of which slots
    the next claim takes, read with the state (``claiming.read_ahead_keys``)."""
    last_claim_slots: int = 0
    """How many slots this process's last claim planned: how many to read ahead next."""

    def __post_init__(self) -> None:
        self.keys = QueueKeys(self.name)
        self.counter_keys = [self.keys.write_counter(shard) for shard in range(self.shards)]
        first_shard = self.rng.randrange(self.shards)
        self.writer_shards = itertools.cycle([*range(first_shard, self.shards), *range(first_shard)])
        self.store = StateStore(self.cache, self.keys, self.shards, self.budget.check, self.pause_after_failed_cas)
        self.recovery = Recovery(
            self.cache, self.keys, self.store, seen_before=lambda: self.seen_queue, check_budget=self.budget.check
        )

    @classmethod
    def build(
        cls,
        name: str,
        client: object | None,
        *,
        shards: int,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        rng: random.Random,
        tombstone_seconds: int,
        max_write_seconds: float,
    ) -> QueueContext:
        """The context of queue ``name`` on ``client`` (see ``wrap_client``), its cache
        calls counted against ``MAX_CACHE_CALLS_PER_CALL`` per public call."""
        budget = CallBudget(MAX_CACHE_CALLS_PER_CALL)
        cache = ObservedCache(wrap_client(client), budget.spend)
        return cls(name, cache, budget, shards, clock, sleep, rng, tombstone_seconds, max_write_seconds)

    def pause_after_failed_cas(self, failed_attempts: int) -> None:
        self.sleep(cas_pause_seconds(failed_attempts, self.rng))

    def nonce(self) -> str:
        """A random 64-bit id, as hex: who holds a lease's current attempt."""
        return f"{self.rng.getrandbits(64):016x}"

    def record_counts(self, count: Callable[[ReadState], None], what: str) -> None:
        """Apply ``count`` to the state's counts, at most once (a count lost to an error
        only makes ``lost`` larger)."""

        def change(state: ReadState) -> bool:
            count(state)
            return True

        try:
            self.store.change(change, landed=lambda state: True)
        except (CacheUnavailableError, ContentionError) as error:
            logger.warning("queue %s: could not record %s: %s", self.name, what, error)


class HasContext(Protocol):
    @property
    def context(self) -> QueueContext: ...


Self = TypeVar("Self", bound=HasContext)
Params = ParamSpec("Params")
Result = TypeVar("Result")


def one_call(
    method: Callable[Concatenate[Self, Params], Result],
) -> Callable[Concatenate[Self, Params], Result]:
    """Count the cache calls of one public call against ``MAX_CACHE_CALLS_PER_CALL``
    (calls nested in it share its count). The signature is kept, for callers and
    type checkers; the methods it wraps only delegate, so no logic hides here."""

    @functools.wraps(method)
    def counted(owner: Self, /, *args: Params.args, **kwargs: Params.kwargs) -> Result:
        with owner.context.budget.one_call():
            return method(owner, *args, **kwargs)

    return counted
