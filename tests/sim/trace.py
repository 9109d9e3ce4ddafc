"""The run as lines: every cache call (party, queue call, cache call, keys, fault, result),
every operation's start and end, every delivery and every fault.

The failure report prints the last ``TAIL_STEPS`` of it, plus the faults and
the lines about the messages a violation names; ``--trace`` prints it all.
Entries are stored raw and formatted only when printed, to keep steps cheap.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from tests.sim.library import QUEUE_KEY_PREFIX

if TYPE_CHECKING:
    from tests.sim.parties import OpContext

TAIL_STEPS = 40


@dataclass(frozen=True)
class TraceEntry:
    seq: int
    step: int
    time: float
    party: str
    text: str
    fault: str = ""
    ids: tuple[str, ...] = ()

    def format(self, start_time: float) -> str:
        fault = f"  !! {self.fault}" if self.fault else ""
        return f"{self.step:>7} t+{self.time - start_time:9.3f}s {self.party:<8} {self.text}{fault}"


def summarize_keys(keys: Sequence[str]) -> str:
    if not keys:
        return "-"
    first = keys[0].removeprefix(QUEUE_KEY_PREFIX)
    return first if len(keys) == 1 else f"{first} (+{len(keys) - 1})"


class Trace:
    def __init__(self, start_time: float, keep_all: bool) -> None:
        self.start_time = start_time
        self.entries: deque[TraceEntry] | list[TraceEntry] = [] if keep_all else deque(maxlen=TAIL_STEPS)
        self.faults: list[TraceEntry] = []
        self.about_messages: list[TraceEntry] = []
        """Entries naming message or lease ids (writes, deliveries, acks): kept whole, to follow one."""
        self._seq = 0

    def _add(
        self, step: int, time: float, party: str, text: str, fault: str = "", ids: Iterable[str] = ()
    ) -> TraceEntry:
        self._seq += 1
        entry = TraceEntry(self._seq, step, time, party, text, fault, tuple(ids))
        self.entries.append(entry)
        return entry

    def call(
        self,
        step: int,
        time: float,
        party: str,
        operation: OpContext,
        call: str,
        keys: Sequence[str],
        fault: str,
        result: str,
    ) -> None:
        text = f"{call}({summarize_keys(keys)}) -> {result}   [{operation.label}]"
        entry = self._add(step, time, party, text, fault, operation.ids)
        if entry.ids:
            self.about_messages.append(entry)

    def note(self, step: int, time: float, party: str, text: str, ids: Iterable[str] = ()) -> None:
        entry = self._add(step, time, party, text, ids=ids)
        if entry.ids:
            self.about_messages.append(entry)

    def fault(self, step: int, time: float, party: str, description: str) -> None:
        self.faults.append(self._add(step, time, party, "fault", description))

    def format(self, entries: Iterable[TraceEntry]) -> list[str]:
        return [entry.format(self.start_time) for entry in entries]

    def relevant(self, subjects: Iterable[str]) -> list[TraceEntry]:
        """Faults, lines about ``subjects`` (message or lease ids), and the last steps, in step order."""
        wanted = set(subjects)
        chosen = {entry.seq: entry for entry in self.faults}
        chosen.update({entry.seq: entry for entry in self.about_messages if wanted & set(entry.ids)})
        chosen.update({entry.seq: entry for entry in list(self.entries)[-TAIL_STEPS:]})
        return [chosen[seq] for seq in sorted(chosen)]
