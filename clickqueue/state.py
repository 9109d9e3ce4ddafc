"""The read state: what readers have claimed, the outstanding leases, and the counts.

``ReadState`` is the value under ``QueueKeys.state`` (JSON), changed only by
compare-and-set; its methods are pure, so each rule is testable without a
cache. ``StateStore`` does the get-change-CAS loop.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields

from clickqueue.cache import Cache
from clickqueue.errors import ContentionError, CorruptStateError, ShardMismatchError
from clickqueue.keys import QueueKeys

MAX_STATE_BYTES = 256_000
"""The state must stay one memcache value (1 MB): new leases are refused past this."""

MAX_LEASES = 1000
"""Most outstanding leases one state carries."""

MAX_CAS_ATTEMPTS = 100
"""Compare-and-set attempts one call makes before giving up (``ContentionError``)."""

FIRST_CAS_PAUSE_SECONDS = 0.001
MAX_CAS_PAUSE_SECONDS = 0.02
"""After its n-th failed compare-and-set a call pauses a random time of up to
``min(MAX_CAS_PAUSE_SECONDS, FIRST_CAS_PAUSE_SECONDS * 2 ** (n - 1))`` (full
jitter). Without it two readers that meet in step can stay in step: one lost
all 100 attempts and gave up in one run in four of 2 writers and 2 readers on
one shard. With it a call pauses at most 1.931 s in all (half that on average)
before ``ContentionError``."""


def cas_pause_seconds(failed_attempts: int, rng: random.Random) -> float:
    """How long to pause after ``failed_attempts`` failed compare-and-sets."""
    return rng.uniform(0, min(MAX_CAS_PAUSE_SECONDS, FIRST_CAS_PAUSE_SECONDS * 2 ** (failed_attempts - 1)))


@dataclass(frozen=True)
class SlotRange:
    """Slots ``first..last`` (inclusive) of one shard; ``in_gap`` when they lie in a
    range no writer was given (a reseed's margin, or a recovered state's lookback)."""

    shard: int
    first: int
    last: int
    in_gap: bool = False

    def numbers(self) -> range:
        return range(self.first, self.last + 1)

    def __len__(self) -> int:
        return self.last - self.first + 1

    def as_list(self) -> list[int]:
        return [self.shard, self.first, self.last, int(self.in_gap)]


@dataclass
class Counts:
    """Events only readers and writers see, kept in the state so they live and die with it."""

    skipped: int = 0
    """Claimed slots outside gaps that gave no message (empty, tombstoned, foreign, another lease's)."""
    gapped: int = 0
    """Claimed slots inside gaps that gave no message."""
    retried: int = 0
    """Slots a writer left for a reader's tombstone (or empty), its message stored elsewhere."""
    collided: int = 0
    """Slots a writer found holding someone else's value (a counter that went back)."""
    requeued: int = 0
    resets: int = 0
    """Lost or foreign states and write counters recovered from."""

    def add(self, skipped: int = 0, gapped: int = 0) -> None:
        self.skipped += skipped
        self.gapped += gapped


@dataclass
class LeaseRecord:
    ranges: list[SlotRange]
    deadline: float
    attempt: int
    precounted: tuple[int, int]
    """(skipped, gapped): its slots without a message, counted in the CAS that made it."""
    holder: str
    """A nonce of the claim or takeover that holds it now: after a CAS whose reply was
    lost, tells this holder's claim from another's that planned the same attempt."""

    def slot_count(self) -> int:
        return sum(len(r) for r in self.ranges)


@dataclass
class ReadState:
    generation: int
    base: list[int]
    """Where each shard's counts start: stats are since this state was created."""
    claimed: list[int]
    seen: list[int]
    """The highest write counter a claim saw, per shard."""
    leases: dict[str, LeaseRecord] = field(default_factory=dict)
    gaps: list[SlotRange] = field(default_factory=list)
    counts: Counts = field(default_factory=Counts)

    @classmethod
    def starting_at(cls, generation: int, start: Sequence[int], gaps: Sequence[SlotRange] = (), resets: int = 0) -> ReadState:
        return cls(generation, list(start), list(start), list(start), gaps=list(gaps), counts=Counts(resets=resets))

    # -- encoding ------------------------------------------------------------------

    @classmethod
    def from_bytes(cls, key: str, raw: bytes, shards: int) -> ReadState:
        """Parse a stored state, refusing anything this module did not write."""
        try:
            data = json.loads(raw)
            state = cls(
                generation=_integer(data["generation"]),
                base=_integers(data["base"]),
                claimed=_integers(data["claimed"]),
                seen=_integers(data["seen"]),
                leases={
                    _lease_id(lease_id): LeaseRecord(
                        ranges=[_slot_range(bounds) for bounds in record[2]],
                        deadline=float(record[0]),
                        attempt=_integer(record[1]),
                        precounted=(_integer(record[3][0]), _integer(record[3][1])),
                        holder=str(record[4]),
                    )
                    for lease_id, record in data["leases"].items()
                },
                gaps=[_slot_range(bounds) for bounds in data["gaps"]],
                counts=Counts(**{f.name: _integer(data["counts"][f.name]) for f in fields(Counts)}),
            )
        except (ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError) as error:
            raise CorruptStateError(key) from error
        if not len(state.base) == len(state.claimed) == len(state.seen) or not state.claimed:
            raise CorruptStateError(key)
        if len(state.claimed) != shards:
            raise ShardMismatchError(key, len(state.claimed), shards)
        return state

    def to_bytes(self) -> bytes:
        data = {
            "generation": self.generation,
            "base": self.base,
            "claimed": self.claimed,
            "seen": self.seen,
            "leases": {
                lease_id: [
                    record.deadline,
                    record.attempt,
                    [r.as_list() for r in record.ranges],
                    list(record.precounted),
                    record.holder,
                ]
                for lease_id, record in self.leases.items()
            },
            "gaps": [r.as_list() for r in self.gaps],
            "counts": asdict(self.counts),
        }
        return json.dumps(data, separators=(",", ":")).encode()

    # -- claiming ------------------------------------------------------------------

    def plan_claim(self, write_counters: Sequence[int], max_items: int) -> dict[int, int]:
        """Per shard, the last slot a claim of up to ``max_items`` slots below the
        counters would take. Every shard with a backlog gets a fair share (what a
        small shard leaves goes to the larger ones), so no shard waits behind
        another's backlog."""
        backlog = {
            shard: counter - self.claimed[shard]
            for shard, counter in enumerate(write_counters)
            if counter > self.claimed[shard]
        }
        ends = {}
        remaining = max_items
        by_size = sorted(backlog, key=lambda shard: (backlog[shard], shard))
        for position, shard in enumerate(by_size):
            taken = min(backlog[shard], remaining // (len(by_size) - position))
            if taken:
                ends[shard] = self.claimed[shard] + taken
                remaining -= taken
        return ends

    def claim(
        self, write_counters: Sequence[int], max_items: int, ends: Mapping[int, int] | None = None
    ) -> list[SlotRange]:
        """Advance ``claimed`` to ``ends`` (``plan_claim``'s, or ends cut shorter from
        it; by default planned here) and return the slots claimed."""
        self.seen = [max(seen, counter) for seen, counter in zip(self.seen, write_counters)]
        ranges: list[SlotRange] = []
        for shard, last in (self.plan_claim(write_counters, max_items) if ends is None else ends).items():
            if last > self.claimed[shard]:
                ranges += self._split_at_gaps(shard, self.claimed[shard] + 1, last)
                self.claimed[shard] = last
        self._prune_gaps()
        return ranges

    def runs_to_settle(self, write_counters: Sequence[int], limit: int, gaps_only: bool) -> list[list[SlotRange]]:
        """Per shard, the next unclaimed slots that ``settle_run`` may claim in bulk
        (at most ``limit`` in all): those in a gap, and unless ``gaps_only`` any
        that are at least ``limit`` below the counter, where no writer is still
        expected (the head of a queue is its writes in flight). Each run is split
        where gaps begin and end."""
        ends = {}
        for shard, counter in enumerate(write_counters):
            first = self.claimed[shard] + 1
            gap_end = next((g.last for g in self.gaps if g.shard == shard and g.first <= first <= g.last), 0)
            end = max(min(gap_end, counter), 0 if gaps_only else counter - limit)
            if end >= first:
                ends[shard] = end
        return [
            self._split_at_gaps(shard, self.claimed[shard] + 1, min(end, self.claimed[shard] + max(1, limit // len(ends))))
            for shard, end in ends.items()
        ]

    def settle_run(self, shard: int, skipped: int, gapped: int) -> None:
        """Claim the next ``skipped + gapped`` slots of ``shard``, already tombstoned
        or holding no message, counting them as they are."""
        self.claimed[shard] += skipped + gapped
        self.counts.add(skipped, gapped)
        self._prune_gaps()

    def _prune_gaps(self) -> None:
        self.gaps = [gap for gap in self.gaps if gap.last > self.claimed[gap.shard]]

    def _split_at_gaps(self, shard: int, first: int, last: int) -> list[SlotRange]:
        ranges = []
        for gap in sorted((g for g in self.gaps if g.shard == shard), key=lambda g: g.first):
            if gap.last < first or gap.first > last:
                continue
            if gap.first > first:
                ranges.append(SlotRange(shard, first, gap.first - 1))
            ranges.append(SlotRange(shard, max(first, gap.first), min(last, gap.last), in_gap=True))
            first = gap.last + 1
        if first <= last:
            ranges.append(SlotRange(shard, first, last))
        return ranges

    def used_through(self, shard: int) -> int:
        """The highest slot of ``shard`` the state knows to have been handed out."""
        return max(self.claimed[shard], self.seen[shard], *(gap.last for gap in self.gaps if gap.shard == shard))

    def add_gap(self, gap: SlotRange) -> bool:
        """Record ``gap`` from where it is not yet claimed; False if nothing of it is left."""
        first = max(gap.first, self.claimed[gap.shard] + 1)
        if first > gap.last or any(g.shard == gap.shard and g.last >= first for g in self.gaps):
            return False
        self.gaps.append(SlotRange(gap.shard, first, gap.last, in_gap=True))
        return True

    def in_gap(self, shard: int, number: int) -> bool:
        return any(gap.shard == shard and gap.first <= number <= gap.last for gap in self.gaps)

    def unclaimed_gap_slots(self) -> int:
        return sum(gap.last - max(gap.first - 1, self.claimed[gap.shard]) for gap in self.gaps)

    # -- leases --------------------------------------------------------------------

    def first_expired_lease(self, now: float, max_slots: int) -> str | None:
        """The longest-expired lease of at most ``max_slots`` slots (a lease goes out whole)."""
        expired = [
            lease_id
            for lease_id, record in self.leases.items()
            if record.deadline <= now and record.slot_count() <= max_slots
        ]
        return min(expired, key=lambda lease_id: self.leases[lease_id].deadline, default=None)

    def leased_slots(self) -> int:
        return sum(record.slot_count() for record in self.leases.values())


def _integer(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"not an integer: {value!r}")
    return value


def _integers(values: object) -> list[int]:
    if not isinstance(values, list):
        raise TypeError("not a list")
    return [_integer(value) for value in values]


def _lease_id(value: str) -> str:
    if len(value) != 32 or not all(c in "0123456789abcdef" for c in value):
        raise ValueError(f"not a lease id: {value!r}")
    return value


def _slot_range(bounds: object) -> SlotRange:
    shard, first, last, in_gap = _integers(bounds)
    return SlotRange(shard, first, last, bool(in_gap))


class StateStore:
    """Reads and changes the state by gets + compare-and-set."""

    def __init__(
        self,
        cache: Cache,
        keys: QueueKeys,
        shards: int,
        check_budget: Callable[[], None],
        pause_after_failed_cas: Callable[[int], None],
    ) -> None:
        self.cache = cache
        self.key = keys.state
        self.shards = shards
        self.check_budget = check_budget
        self.pause_after_failed_cas = pause_after_failed_cas

    def parse(self, raw: bytes) -> ReadState:
        return ReadState.from_bytes(self.key, raw, self.shards)

    def encode(self, state: ReadState) -> bytes:
        """The state's bytes; gaps go first (oldest first) if it outgrows one value,
        which only makes readers count those slots as skipped instead of gapped."""
        encoded = state.to_bytes()
        while len(encoded) > MAX_STATE_BYTES and state.gaps:
            bytes_per_gap = len(json.dumps(state.gaps[-1].as_list())) + 1
            del state.gaps[: (len(encoded) - MAX_STATE_BYTES) // bytes_per_gap + 1]
            encoded = state.to_bytes()
        return encoded

    def change(self, change: Callable[[ReadState], bool], landed: Callable[[ReadState], bool] | None = None) -> bool:
        """Apply ``change`` (which edits the state and returns False to give up) by CAS.

        Returns whether a change was stored; False also when there is no
        parsable state (the next claim recovers it). A CAS with an unknown
        outcome is checked with ``landed`` on a fresh read; without it the
        change is tried again (at least once, never lost).
        """
        outcome_unknown = False
        for attempt in range(1, MAX_CAS_ATTEMPTS + 1):
            self.check_budget()
            found = self.cache.gets_multi([self.key])
            if self.key not in found:
                return False
            raw_state, token = found[self.key]
            try:
                state = self.parse(raw_state)
            except CorruptStateError:
                return False
            if outcome_unknown and landed is not None and landed(state):
                return True
            if not change(state):
                return False
            applied = self.cache.cas_multi({self.key: (self.encode(state), token)})[self.key]
            if applied:
                return True
            outcome_unknown = applied is None
            self.pause_after_failed_cas(attempt)
        raise ContentionError(self.key, MAX_CAS_ATTEMPTS)
