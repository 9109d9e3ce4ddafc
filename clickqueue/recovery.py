"""Recovery: what the queue does when a key it needs is lost or holds a foreign value.

Each path is one method, called by the claim or the write when it finds:

* no state: ``recreate_state`` (a new generation, counted as a reset unless
  the queue is brand new);
* a state that is not ours: ``replace_corrupt_state`` (the same, by CAS);
* write counters missing, not numbers, behind the claims, or behind slots
  already stored: ``repair_counters`` (above every slot in use, plus a margin
  recorded as a gap; all the shards at once).

Safety never rests on these: a message is delivered only by whoever wins its
slot (see docs/protocol.md). They keep the queue moving and the counts
honest, and say so in ``resets``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from clickqueue.cache import Cache, CasToken
from clickqueue.codec import FRAME_MESSAGES, slot_span
from clickqueue.keys import QueueKeys
from clickqueue.errors import CorruptStateError
from clickqueue.state import ReadState, SlotRange, StateStore

REPAIR_MARGIN = 1000
"""Slots a repaired write counter skips above the last stored slot (recorded as a
gap): room for writes that took a slot from the old counter but had not stored yet."""

RECOVERY_SLOTS = 1000
"""How far below the write counter a recreated state starts (as a gap), so the
messages written just before the state was lost are still read."""

PROBE_WINDOW = FRAME_MESSAGES
"""Slots read together when looking for the last stored slot: small holes
(evictions, writes in flight) do not end the search, and a window inside a run
of stored frames always holds the first slot of one (none spans more)."""

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

    def __init__(
        self,
        cache: Cache,
        keys: QueueKeys,
        store: StateStore,
        seen_before: Callable[[], bool],
        check_budget: Callable[[], None],
    ) -> None:
        self.cache = cache
        self.keys = keys
        self.store = store
        self.seen_before = seen_before
        self.check_budget = check_budget
        self.counter_keys = [keys.write_counter(shard) for shard in range(store.shards)]

    # -- the state -----------------------------------------------------------------

    def recreate_state(self, found: Mapping[str, tuple[bytes, CasToken]]) -> None:
        """Add a new state, since ``found`` (the claim's read) has none.

        It starts ``RECOVERY_SLOTS`` below each write counter (or below the last
        stored slot where the counter is gone too), as a gap: recent messages are
        still delivered, older ones are left unread. A brand-new queue gets its
        counters here too, after its state and before its generation marker;
        any sign the queue existed (a counter above 0, a generation marker,
        this process having used it) makes it a reset.
        """
        state, existed = self._fresh_state(found)
        if self.cache.add_multi({self.keys.state: self.store.encode(state)})[self.keys.state] is not True:
            return  # another party created it (or the outcome is unknown: the next read tells)
        if not existed:
            self.cache.add_multi({key: b"0" for key in self.counter_keys if key not in found})
        self._mark_generation(state.generation)  # last: until then, the creation is visibly unfinished

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
        lost = {shard: 0 for shard, counter in enumerate(counters) if counter is None} if existed else {}
        tops = self.last_stored_slots(lost)
        start, gaps = [], []
        for shard, counter in enumerate(counters):
            top = counter if counter is not None else tops.get(shard, 0)
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

    def repair_counters(self, evidence: Mapping[int, int]) -> None:
        """Put the write counters of the shards in ``evidence`` above every slot in use,
        where they are not, all at once: about 16 cache calls for any number of shards.

        Called when a counter was missing or foreign, or a writer found a slot its
        counter handed out (``evidence[shard]``, else 0) already holding someone
        else's value. A counter goes to its shard's last stored slot plus
        ``REPAIR_MARGIN``; each whose add or CAS wins has its margin recorded as
        a gap and counted as a reset, in one state CAS.
        """
        found = self.cache.gets_multi([self.keys.state, *self.counter_keys, *self.keys.generation_markers])
        if self.keys.state not in found:
            self.recreate_state(found)
            return  # the caller goes round again, against the new state
        raw_state, state_token = found[self.keys.state]
        try:
            state = self.store.parse(raw_state)
        except CorruptStateError:
            self.replace_corrupt_state(state_token, found)
            return
        counters = {shard: found.get(self.counter_keys[shard], (None, None)) for shard in evidence}
        floors = {
            shard: max(state.used_through(shard), stored_at, decimal(counters[shard][0]) or 0)
            for shard, stored_at in evidence.items()
        }
        tops = self.last_stored_slots(floors)
        # Read again after the probe: each slot it found was handed out by an incr
        # before it, so only a counter below its top now has really gone back (the
        # first read may predate other writers' incr, which on App Engine's stub
        # leaves the CAS id unchanged: a CAS on it would undo their slots).
        current = self.cache.gets_multi([self.counter_keys[shard] for shard in tops])
        behind = {
            shard: top
            for shard, top in tops.items()
            if (counter := decimal(current.get(self.counter_keys[shard], (None, None))[0])) is None or counter < top
        }
        if not any(marker in found for marker in self.keys.generation_markers):
            # The queue is still being created (its marker comes last): a counter not
            # made yet, of a shard where nothing was claimed or stored, starts at 0.
            unborn = {
                self.counter_keys[shard]: b"0"
                for shard, top in behind.items()
                if self.counter_keys[shard] not in current and top == state.base[shard] == state.used_through(shard)
            }
            self.cache.add_multi(unborn)
            behind = {shard: top for shard, top in behind.items() if self.counter_keys[shard] not in unborn}
        targets = {self.counter_keys[shard]: str(top + REPAIR_MARGIN).encode() for shard, top in behind.items()}
        missing = {key: target for key, target in targets.items() if key not in current}
        foreign = {key: (target, current[key][1]) for key, target in targets.items() if key in current}
        applied = {**self.cache.add_multi(missing), **self.cache.cas_multi(foreign)}
        gaps = [
            SlotRange(shard, top + 1, top + REPAIR_MARGIN, in_gap=True)
            for shard, top in behind.items()
            if applied.get(self.counter_keys[shard]) is True
        ]
        if gaps:

            def record(state: ReadState) -> bool:
                for gap in gaps:
                    state.add_gap(gap)
                state.counts.resets += len(gaps)
                return True

            self.store.change(record, landed=lambda state: True)

    def last_stored_slots(self, starts: Mapping[int, int]) -> dict[int, int]:
        """Per shard, the highest slot above its start holding anything (or spanned by
        a frame that does), for all the
        shards at once in a bounded number of calls (about 10): windows at
        exponentially growing distances, then bisection.

        A probe, not a scan: exact for a stored run that begins near the start
        (a backlog), but a short run far above it can fall between windows.
        A counter set too low that way is lifted again by the first writer
        whose slot is found taken (``repair_counters`` with its evidence)."""
        if not starts:
            return {}
        self.check_budget()
        gallop = {shard: [start + 1 + PROBE_WINDOW * (2**step - 1) for step in range(GALLOP_STEPS)] for shard, start in starts.items()}
        tops: dict[int, int] = dict(starts)
        bounds = {}  # shard -> the start of an empty window above its top
        for shard, (top, next_empty) in self._probe(gallop).items():
            if top is not None:
                tops[shard], bounds[shard] = top, next_empty
        while wide := {
            shard: next_empty
            for shard, next_empty in bounds.items()
            if next_empty is not None and next_empty - tops[shard] > PROBE_WINDOW * BISECT_WINDOWS
        }:
            windows = {}
            for shard, next_empty in wide.items():
                stride = (next_empty - tops[shard]) // (BISECT_WINDOWS + 1)
                windows[shard] = [tops[shard] + 1 + stride * n for n in range(BISECT_WINDOWS)]
            for shard, (top, next_empty) in self._probe(windows).items():
                if top is not None:
                    tops[shard] = top
                if next_empty is not None and next_empty > tops[shard]:
                    bounds[shard] = next_empty
                elif top is None:
                    bounds[shard] = windows[shard][0]
        narrow = {
            shard: list(range(tops[shard] + 1, next_empty, PROBE_WINDOW))
            for shard, next_empty in bounds.items()
            if next_empty is not None and next_empty > tops[shard] + 1
        }
        for shard, (top, _next_empty) in self._probe(narrow).items():
            if top is not None:
                tops[shard] = top
        return tops

    def _probe(self, windows: Mapping[int, list[int]]) -> dict[int, tuple[int | None, int | None]]:
        """Read, for each shard, windows of ``PROBE_WINDOW`` slots from each start
        (ascending), all in one call. Per shard: the highest stored slot (the last
        a stored frame spans), and the
        start of the first empty window above it (None where there is none)."""
        numbers: dict[str, tuple[int, int]] = {}
        for shard, starts in windows.items():
            for first in starts:
                span = range(first, first + PROBE_WINDOW)
                numbers.update(zip(self.keys.slots(shard, span), ((shard, number) for number in span)))
        stored = self.cache.get_multi(list(numbers)) if numbers else {}
        result: dict[int, tuple[int | None, int | None]] = {}
        for shard, starts in windows.items():
            found = [numbers[key][1] + slot_span(value) - 1 for key, value in stored.items() if numbers[key][0] == shard]
            if not found:
                result[shard] = (None, starts[0] if starts else None)
                continue
            top = max(found)
            above = [first for first in starts if first > top]
            result[shard] = (top, above[0] if above else None)
        return result
