"""The queue as processors see it, reduced to clickqueue's lease contract.

Messages arrive over time (each at its own simulated time) and wait until a
processor leases up to ``batch_size`` of them under a new lease id. A lease
not acked by its deadline, or released after a failure, goes whole to the
next ``lease()`` under the same id with ``attempt + 1``; the first ack of a
lease id settles it, whichever attempt's holder makes it (docs/library.md, "Leases"). The queue itself is simulated elsewhere (tests/sim):
here it is only the source of deliveries and redeliveries.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from clicks.events import Event


@dataclass
class Lease:
    lease_id: str
    message_ids: list[str]
    deadline: float
    attempt: int = 1
    released: bool = False
    acked: bool = False


@dataclass(frozen=True)
class Delivery:
    """What one ``lease()`` handed a processor."""

    lease_id: str
    attempt: int
    events: Mapping[str, Event]


class LeaseBook:
    def __init__(self, events: Mapping[str, Event], arrivals: Mapping[str, float], lease_seconds: float) -> None:
        self.events = events
        self.lease_seconds = lease_seconds
        self.arriving = deque(sorted(events, key=lambda message_id: arrivals[message_id]))
        self.arrivals = arrivals
        self.waiting: deque[str] = deque()
        self.leases: dict[str, Lease] = {}

    def lease(self, now: float, max_items: int, grow: int = 0) -> Delivery | None:
        """Take over the oldest lease that expired or was released, else lease waiting
        messages; ``grow`` adds that many waiting messages to a lease taken over."""
        while self.arriving and self.arrivals[self.arriving[0]] <= now:
            self.waiting.append(self.arriving.popleft())
        for lease in self.leases.values():
            if not lease.acked and (lease.released or lease.deadline <= now) and len(lease.message_ids) <= max_items:
                room = min(grow, max_items - len(lease.message_ids), len(self.waiting))
                lease.message_ids += [self.waiting.popleft() for _ in range(room)]
                lease.attempt, lease.deadline, lease.released = lease.attempt + 1, now + self.lease_seconds, False
                return self._delivery(lease)
        if not self.waiting:
            return None
        taken = [self.waiting.popleft() for _ in range(min(max_items, len(self.waiting)))]
        lease = Lease(f"lease-{len(self.leases) + 1}", taken, now + self.lease_seconds)
        self.leases[lease.lease_id] = lease
        return self._delivery(lease)

    def _delivery(self, lease: Lease) -> Delivery:
        events = {message_id: self.events[message_id] for message_id in lease.message_ids}
        return Delivery(lease.lease_id, lease.attempt, events)

    def ack(self, lease_id: str) -> bool:
        """True for the first ack of ``lease_id``."""
        lease = self.leases[lease_id]
        first, lease.acked = not lease.acked, True
        return first

    def release(self, lease_id: str, attempt: int) -> bool:
        """Give the lease back for the next ``lease()``, if ``attempt`` still holds it."""
        lease = self.leases[lease_id]
        if lease.acked or lease.attempt != attempt:
            return False
        lease.released = True
        return True

    @property
    def settled(self) -> bool:
        """Every message arrived and leased, every lease acked."""
        return not self.arriving and not self.waiting and all(lease.acked for lease in self.leases.values())

    def unsettled(self) -> list[str]:
        return [lease.lease_id for lease in self.leases.values() if not lease.acked]
