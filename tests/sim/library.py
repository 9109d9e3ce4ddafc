"""Building a party's ``clickqueue.Queue``, for today's library and the rewritten one alike.

The rewritten ``Queue`` takes ``rng: random.Random`` (lease ids and the first
shard come from it) and speaks the cache contract (``ContractView``, with
``cas_multi``). Today's draws its lease ids from ``uuid.uuid4()`` and its first
shard from ``random.randrange``, and speaks the six-call ``Cache``: for it
alone, ``seeded_legacy_entropy`` patches those two names in
``clickqueue.queue`` for the length of a run, and a contract view is given to
it through ``LegacyCacheOverContract``.
"""

from __future__ import annotations

import inspect
import random
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import SimpleNamespace
from typing import Any
from unittest import mock

import clickqueue
from clickqueue import Queue
from tests.sim.contract_shim import LegacyCacheOverContract
from tests.sim.views import ContractView

QUEUE_NAME = "sim"
QUEUE_KEY_PREFIX = f"cq:{QUEUE_NAME}:"


def queue_takes_rng() -> bool:
    return "rng" in inspect.signature(Queue).parameters


def queue_speaks_contract() -> bool:
    return hasattr(clickqueue.Cache, "cas_multi")


def make_queue(cache: Any, clock: Callable[[], float], rng: random.Random, options: dict[str, Any]) -> Queue:
    """A Queue on ``cache`` (a view) with the run's ``options`` (shards, tombstone_seconds...)."""
    if isinstance(cache, ContractView) and not queue_speaks_contract():
        cache = LegacyCacheOverContract(cache)
    extra = {"rng": rng} if queue_takes_rng() else {}
    return Queue(QUEUE_NAME, cache, clock=clock, **options, **extra)


@contextmanager
def seeded_legacy_entropy(rng: random.Random) -> Iterator[None]:
    """Make today's Queue draw lease ids and first shards from ``rng`` (nothing, for the rewrite).

    Only one party runs at a time, in an order fixed by the seed, so one
    generator shared by all parties gives every run the same draws.
    """
    if queue_takes_rng():
        yield
        return
    import clickqueue.queue as legacy_queue_module

    seeded_uuid = SimpleNamespace(uuid4=lambda: uuid.UUID(int=rng.getrandbits(128), version=4))
    seeded_random = SimpleNamespace(randrange=rng.randrange)
    with (
        mock.patch.object(legacy_queue_module, "uuid", seeded_uuid),
        mock.patch.object(legacy_queue_module, "random", seeded_random),
    ):
        yield
