"""The slots of one claim (or of a plan), in order, and what each holds as a reader
sees it: the table that claiming and taking work on. A read finds a value in a
few slots; frames span the rest (docs/protocol.md, "Slot layout")."""

from __future__ import annotations

from typing import NamedTuple

from clickqueue.codec import EMPTY_SLOT, SlotKind, SlotValue
from clickqueue.keys import QueueKeys
from clickqueue.state import SlotRange


class Slot(NamedTuple):
    """A claimed slot."""

    key: str
    shard: int
    number: int
    in_gap: bool
    """Whether it lies in a gap (a repaired counter's margin, a recreated state's lookback)."""


class Views(dict[str, SlotValue]):
    """What slots hold, by key: a slot read as missing holds nothing."""

    def __missing__(self, key: str) -> SlotValue:
        return EMPTY_SLOT


PRESENT = (SlotKind.MESSAGE, SlotKind.LEASED_TO_US, SlotKind.SETTLED, SlotKind.FOREIGN)
"""The kinds of value that settle a slot: it needs no tombstone."""


class SlotTable:
    """Slots of one claim (or of a plan) in order, and the sparse work on them."""

    def __init__(self, keys: QueueKeys, ranges: list[SlotRange]) -> None:
        self.ranges = ranges
        self.slots: list[Slot] = [
            Slot(key, r.shard, number, r.in_gap)
            for r in ranges
            for key, number in zip(keys.slots(r.shard, r.numbers()), r.numbers())
        ]
        self.position = {slot.key: index for index, slot in enumerate(self.slots)}

    def claimed_as(self, keys: QueueKeys, ranges: list[SlotRange]) -> SlotTable:
        """The slots of ``ranges``, a claim made from this plan: the plan itself when
        the claim took it all, outside any gap (the common case)."""
        return self if ranges == self.ranges else SlotTable(keys, ranges)

    def __len__(self) -> int:
        return len(self.slots)

    def keys(self) -> list[str]:
        return [slot.key for slot in self.slots]

    def held(self, views: dict[str, SlotValue], kinds: tuple[SlotKind, ...]) -> list[tuple[Slot, SlotValue]]:
        """The slots holding a value of ``kinds``, in order, each with it."""
        return sorted(
            (
                (self.slots[self.position[key]], view)
                for key, view in views.items()
                if view.kind in kinds and key in self.position
            ),
            key=lambda held: self.position[held[0].key],
        )

    def uncovered(self, views: dict[str, SlotValue], kinds: tuple[SlotKind, ...]) -> list[Slot]:
        """The slots neither holding a value of ``kinds`` nor spanned by one (a frame
        spans the slots after its own, in its shard)."""
        covered = bytearray(len(self.slots))
        for slot, view in self.held(views, kinds):
            first = self.position[slot.key]
            last = min(first + view.span, len(self.slots))
            while (self.slots[last - 1].shard, self.slots[last - 1].number) != (
                slot.shard,
                slot.number + last - 1 - first,
            ):  # a shard ends sooner
                last -= 1
            covered[first:last] = b"\x01" * (last - first)
        return [] if 0 not in covered else [slot for slot, is_covered in zip(self.slots, covered) if not is_covered]


def fit_frames(planned: SlotTable, views: dict[str, SlotValue], ends: dict[int, int]) -> dict[int, int]:
    """Cut a planned claim (``ends``: the last slot per shard) so that it ends where a
    frame does: before the frame that runs past a shard's end, if the claim holds
    messages before it in that shard; else the frame stays, and taking takes its
    first part."""
    fitted = dict(ends)
    first_frame: dict[int, int] = {}
    for slot, view in planned.held(views, (SlotKind.MESSAGE,)):
        first_frame.setdefault(slot.shard, slot.number)
        if slot.number + view.span - 1 > ends[slot.shard] and slot.number > first_frame[slot.shard]:
            fitted[slot.shard] = slot.number - 1
    return fitted
