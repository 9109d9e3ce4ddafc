"""Recovery: what the queue does when a key it needs is lost or holds a foreign value.

Each path is one method, called by the claim or the write when it finds:

* no state: ``recreate_state`` (a new generation, counted as a reset unless
  the queue is brand new);
* a state that is not ours: ``replace_corrupt_state`` (the same, by CAS);
* a write counter missing, not a number, behind the claims, or behind slots
  already stored: ``repair_counter`` (above every slot in use, plus a margin
  recorded as a gap).

Safety never rests on these: a message is delivered only by whoever wins its
slot (see ``clickqueue.queue``). They keep the queue moving and the counts
honest, and say so in ``resets``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from clickqueue.cache import Cache, CasToken
from clickqueue.keys import QueueKeys
from clickqueue.errors import CorruptStateError
from clickqueue.state import ReadState, SlotRange, StateStore

REPAIR_MARGIN = 1000
"""Slots a repaired write counter skips above the last stored slot (recorded as a
gap): room for writes that took a slot from the old counter but had not stored yet."""

RECOVERY_SLOTS = 1000
"""How far below the write counter a recreated state starts (as a gap), so the
messages written just before the state was lost are still read."""

PROBE_WINDOW = 16
"""Slots read together when looking for the last stored slot: small holes
(evictions, writes in flight) do not end the search."""

GALLOP_STEPS = 32
"""Windows probed at exponentially growing distances in one call (up to ~6.9e10 slots)."""

BISECT_WINDOWS = 16
"""Windows probed evenly per bisection call; the search ends within ~9 calls in all."""


def decimal(raw: bytes | None) -> int | None:
    """A counter's value, or None if absent or not a plain decimal number."""
    if raw is None or not 0 < len(raw) <= 20 or not raw.isdigit():
        return None
    return int(raw)


class Recovery:
    """Repairs one queue's keys. ``seen_before`` tells whether this process has used
    the queue: then a missing state is a reset even if nothing else survived."""

    def __init__(self, cache: Cache, keys: QueueKeys, store: StateStore, seen_before: Callable[[], bool]) -> None:
        self.cache = cache
        self.keys = keys
        self.store = store
        self.seen_before = seen_before
        self.counter_keys = [keys.write_counter(shard) for shard in range(store.shards)]

    # -- the state -----------------------------------------------------------------

    def recreate_state(self, found: Mapping[str, tuple[bytes, CasToken]]) -> None:
        """Add a new state, since ``found`` (the claim's read) has none.

        It starts ``RECOVERY_SLOTS`` below each write counter (or below the last
        stored slot where the counter is gone too), as a gap: recent messages are
        still delivered, older ones are left unread. A brand-new queue gets its
        counters here too, before its state; any sign the queue existed (a
        counter above 0, a generation marker, this process having used it)
        makes it a reset.
        """
        state, existed = self._fresh_state(found)
        if not existed:
            # A new queue's counters come first: whoever sees its state sees them,
            # so a missing counter always means a lost one (repaired with a margin).
            self.cache.add_multi({key: b"0" for key in self.counter_keys if key not in found})
        if self.cache.add_multi({self.keys.state: self.store.encode(state)})[self.keys.state] is not True:
            return  # another party created it (or the outcome is unknown: the next read tells)
        self._mark_generation(state.generation)

    def replace_corrupt_state(self, token: CasToken, found: Mapping[str, tuple[bytes, CasToken]]) -> None:
        """Replace a state value this module did not write (compare-and-set on what was read)."""
        state, _existed = self._fresh_state(found, known_to_exist=True)
        if self.cache.cas_multi({self.keys.state: (self.store.encode(state), token)})[self.keys.state]:
            self._mark_generation(state.generation)

    def _fresh_state(
        self, found: Mapping[str, tuple[bytes, CasToken]], known_to_exist: bool = False
    ) -> tuple[ReadState, bool]:
        markers = self.cache.get_multi(self.keys.generation_markers)
        previous_generation = max((decimal(value) or 0 for value in markers.values()), default=0)
        counters = [decimal(found[key][0]) if key in found else None for key in self.counter_keys]
        existed = known_to_exist or self.seen_before() or previous_generation > 0 or any(counters)
        start, gaps = [], []
        for shard, counter in enumerate(counters):
            top = counter if counter is not None else (self.last_stored_slot(shard, 0) if existed else 0)
            start.append(max(0, top - RECOVERY_SLOTS))
            if top > start[shard]:
                gaps.append(SlotRange(shard, start[shard] + 1, top, in_gap=True))
        resets = max(previous_generation, 1) if existed else 0
        return ReadState.starting_at(previous_generation + 1, start, gaps, resets=resets), existed

    def _mark_generation(self, generation: int) -> None:
        """Record the generation in every marker copy (best effort: each is a hint)."""
        value = str(generation).encode()
        present = self.cache.gets_multi(self.keys.generation_markers)
        if present:
            self.cache.cas_multi({key: (value, token) for key, (_old, token) in present.items()})
        if len(present) < len(self.keys.generation_markers):
            self.cache.add_multi({key: value for key in self.keys.generation_markers if key not in present})

    # -- write counters ------------------------------------------------------------

    def repair_counter(self, shard: int, stored_at: int = 0) -> None:
        """Put shard ``shard``'s write counter above every slot in use, if it is not.

        Called when the counter was missing or foreign, or a writer found
        ``stored_at`` (a slot the counter handed it) already holding someone
        else's value. The counter goes to the last stored slot plus
        ``REPAIR_MARGIN``; the party whose add or CAS of it wins records the
        margin as a gap and counts a reset, in one state CAS.
        """
        counter_key = self.counter_keys[shard]
        found = self.cache.gets_multi([self.keys.state, *self.counter_keys])
        if self.keys.state not in found:
            self.recreate_state(found)
            return  # the caller goes round again, against the new state
        raw_state, state_token = found[self.keys.state]
        try:
            state = self.store.parse(raw_state)
        except CorruptStateError:
            self.replace_corrupt_state(state_token, found)
            return
        raw_counter, token = found.get(counter_key, (None, None))
        counter = decimal(raw_counter)
        floor = max(state.used_through(shard), stored_at, counter or 0)
        top = self.last_stored_slot(shard, floor)
        if counter is not None and counter >= top:
            return  # in place already (repaired by someone else, or never lost)
        target = top + REPAIR_MARGIN
        if raw_counter is None:
            applied = self.cache.add_multi({counter_key: str(target).encode()})[counter_key]
        else:
            applied = self.cache.cas_multi({counter_key: (str(target).encode(), token)})[counter_key]
        if applied is not True:
            return
        gap = SlotRange(shard, top + 1, target, in_gap=True)

        def record(state: ReadState) -> bool:
            state.add_gap(gap)
            state.counts.resets += 1
            return True

        self.store.change(record, landed=lambda state: True)

    def last_stored_slot(self, shard: int, start: int) -> int:
        """The highest slot above ``start`` holding anything, found in a bounded number
        of calls: windows at exponentially growing distances, then bisection.

        A probe, not a scan: exact for a stored run that begins near ``start``
        (a backlog), but a short run far above it can fall between windows.
        A counter set too low that way is lifted again by the first writer
        whose slot is found taken (``repair_counter(stored_at=...)``)."""
        windows = [start + 1 + PROBE_WINDOW * (2**step - 1) for step in range(GALLOP_STEPS)]
        top, next_empty = self._probe(shard, windows)
        if top is None:
            return start
        while next_empty is not None and next_empty - top > PROBE_WINDOW * BISECT_WINDOWS:
            stride = (next_empty - top) // (BISECT_WINDOWS + 1)
            found_top, found_empty = self._probe(shard, [top + 1 + stride * n for n in range(BISECT_WINDOWS)])
            if found_top is not None:
                top = found_top
            next_empty = found_empty if found_empty is not None and found_empty > top else next_empty
        if next_empty is not None:
            found_top, _ = self._probe(shard, list(range(top + 1, next_empty, PROBE_WINDOW)))
            top = found_top if found_top is not None else top
        return top

    def _probe(self, shard: int, window_starts: list[int]) -> tuple[int | None, int | None]:
        """Read windows of ``PROBE_WINDOW`` slots from each start (ascending) in one call.

        Returns the highest stored slot, and the start of the first empty window above it.
        """
        numbers = {}
        for first in window_starts:
            numbers.update(zip(self.keys.slots(shard, range(first, first + PROBE_WINDOW)), range(first, first + PROBE_WINDOW)))
        stored = self.cache.get_multi(list(numbers))
        if not stored:
            return None, window_starts[0] if window_starts else None
        top = max(numbers[key] for key in stored)
        above = [first for first in window_starts if first > top]
        return top, above[0] if above else None
