"""Building a party's ``clickqueue.Queue`` on its view of the simulated cache.

The Queue takes ``rng: random.Random`` (lease ids and the first shard come
from it), so a seed fixes every draw.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from clickqueue import Queue
from tests.sim.views import ContractView

QUEUE_NAME = "sim"
QUEUE_KEY_PREFIX = f"cq:{QUEUE_NAME}:"


def make_queue(cache: ContractView, clock: Callable[[], float], rng: random.Random, options: dict[str, Any]) -> Queue:
    """A Queue on ``cache`` (a view) with the run's ``options`` (shards, tombstone_seconds...)."""
    return Queue(QUEUE_NAME, cache, clock=clock, sleep=lambda seconds: None, rng=rng, **options)
