"""Messages of a given size, and the timing every measurement shares."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, TypeVar

Run = TypeVar("Run")

EMPTY_MESSAGE_BYTES = len(json.dumps({"type": "click", "item": "item-000000", "pad": ""}, separators=(",", ":")))


def make_messages(count: int, size_bytes: int) -> list[dict[str, Any]]:
    """``count`` click events whose compact JSON is ``size_bytes`` long (or the smallest possible)."""
    pad = "x" * max(0, size_bytes - EMPTY_MESSAGE_BYTES)
    return [{"type": "click", "item": f"item-{index % 1_000_000:06d}", "pad": pad} for index in range(count)]


Step = Callable[[], int]
"""Moves one batch and returns how many messages it moved (0: nothing left)."""


@dataclass(frozen=True)
class Throughput:
    """What one case moved, and its rate: the median over its time slices."""

    case: str
    batch: int
    message_bytes: int
    messages: int
    seconds: float
    per_second: float

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "seconds": round(self.seconds, 3), "per_second": round(self.per_second, 1)}


@dataclass
class Tally:
    """One step's slices so far."""

    messages: int = 0
    seconds: float = 0.0
    rates: list[float] = field(default_factory=list)
    dry: bool = False

    def finished(self, max_messages: int, max_seconds: float) -> bool:
        return self.dry or self.messages >= max_messages or self.seconds >= max_seconds

    def run_slice(self, step: Step, max_messages: int, slice_seconds: float) -> None:
        """Call ``step`` for ``slice_seconds`` at most (and up to ``max_messages`` in all)."""
        moved = 0
        started = time.perf_counter()
        while self.messages + moved < max_messages and time.perf_counter() - started < slice_seconds:
            count = step()
            if count == 0:
                self.dry = True
                break
            moved += count
        seconds = time.perf_counter() - started
        self.messages += moved
        self.seconds += seconds
        if moved:
            self.rates.append(moved / seconds)


def interleave(steps: dict[str, Step], max_messages: int, max_seconds: float, slice_seconds: float) -> dict[str, Tally]:
    """Run the steps in turns of ``slice_seconds`` until each has moved ``max_messages``,
    run ``max_seconds`` or run dry. Other load on the machine then falls on every
    step alike, and the median slice rate ignores its bursts."""
    tallies = {name: Tally() for name in steps}
    while True:
        running = [name for name, tally in tallies.items() if not tally.finished(max_messages, max_seconds)]
        if not running:
            return tallies
        for name in running:
            tallies[name].run_slice(steps[name], max_messages, slice_seconds)


def median_runs(runs: Iterable[Run], identity: Callable[[Run], Hashable], speed: Callable[[Run], float]) -> list[Run]:
    """The median run (by ``speed``; the lower middle one of an even count) of each identity, in first-seen order."""
    groups: dict[Hashable, list[Run]] = {}
    for run in runs:
        groups.setdefault(identity(run), []).append(run)
    return [sorted(group, key=speed)[(len(group) - 1) // 2] for group in groups.values()]


def percentile(values: Iterable[float], percent: float) -> float | None:
    """The nearest-rank ``percent`` percentile of ``values`` (None if there are none)."""
    ordered = sorted(values)
    if not ordered:
        return None
    return ordered[max(0, math.ceil(percent / 100 * len(ordered)) - 1)]
