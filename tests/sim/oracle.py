"""The oracle: its own log of what happened, and the queue's guarantees checked against it.

It never asks the queue what was lost or delivered; it keeps a ground-truth
log (Jepsen style) and compares: every write with its outcome (ok, raised
with nothing stored, unknown: raised where the cache may have applied it, or
the writer died mid-call), every delivery (party, ``read_multi`` call or
lease id and attempt, message ids, the deliverer's clock during the call),
every release and ack, every message a call deleted. The parties report to
it as their calls return, while they hold the baton, so the log is in step
order. ``stats()`` is only ever compared with this log (``check_stats``).

Checks, by the name a violation carries:

* G1: no message delivered twice, except the same lease id with a higher
  attempt after the earlier attempt expired (by the later deliverer's clock)
  or was released; nothing delivered that was never written, or whose every
  write raised an error saying nothing was stored; a call that returned
  normally deleted no message it did not deliver.
* G2: every queue call makes at most ``MAX_CACHE_CALLS_PER_QUEUE_CALL`` cache
  calls; after the faults stop, every message is delivered within a bounded
  number of steps and no call fails.
* G3: while no key ``stats()`` counts from was lost or overwritten, the counts
  add up and cover every undelivered message (``check_stats``).
* G4: no error other than the documented ones (a foreign value never crashes a call);
  ``lease(k)``/``read_multi(k)`` return at most k messages.
* G5: ``Lease.ack`` returns what its docstring says: False once the batch
  was delivered again or acked elsewhere.
"""

from __future__ import annotations

import enum
import reprlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clickqueue import QueueError, WriteIncompleteError
from clickqueue.context import MAX_CACHE_CALLS_PER_CALL

G1 = "G1 no duplicates"
G2_BOUND = "G2 bounded calls"
G2_LIVENESS = "G2 liveness"
G3_IDENTITY = "G3 stats identity"
G3_LOST = "G3 loss counted"
G3_NO_FAULT = "G3 no reset without a fault"
G3_NO_LOSS = "G3 nothing lost without a fault that loses"
G4 = "G4 safety"
G5_ACK = "G5 ack contract"

CALLS_BETWEEN_BUDGET_CHECKS = 32
"""The most cache calls a queue call makes between two checks of its budget."""

MAX_CACHE_CALLS_PER_QUEUE_CALL = MAX_CACHE_CALLS_PER_CALL + CALLS_BETWEEN_BUDGET_CHECKS
"""The bound G2 puts on the cache calls of any one queue call, whatever the cache holds:
the library's own budget, which it checks only where stopping leaves nothing half-done."""

RUNAWAY_CACHE_CALLS = 10_000
"""Where a queue call is stopped when G2's bound is not checked (a preset looking past it)."""

_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 3, 60, 60


class Phase(enum.Enum):
    CHAOS = "chaos"
    LIVENESS = "liveness"


class WriteOutcome(enum.Enum):
    IN_FLIGHT = "in flight"
    OK = "ok"
    NOT_STORED = "raised: nothing stored"
    UNKNOWN = "unknown"


def write_error_outcomes(error: BaseException, count: int) -> list[WriteOutcome]:
    """What a write that raised ``error`` tells its caller about each of its ``count`` messages.

    ``WriteIncompleteError`` names the messages stored for sure and those that may
    have been; any other error from a write means nothing was stored (the
    library documents ``CacheUnavailableError``, ``ContentionError`` and its
    refusals of bad input that way), so a caller may write them again.
    """
    if isinstance(error, WriteIncompleteError):
        stored, unknown = set(error.stored), set(error.unknown)
        return [
            WriteOutcome.OK
            if index in stored
            else WriteOutcome.UNKNOWN
            if index in unknown
            else WriteOutcome.NOT_STORED
            for index in range(count)
        ]
    return [WriteOutcome.NOT_STORED] * count


def is_documented_error(error: BaseException) -> bool:
    """Errors a queue call may raise: ``QueueError``s (a write also refuses bad input with them)."""
    return isinstance(error, QueueError)


def describe_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {_short.repr(str(error))}"


def describe_value(value: Any) -> str:
    return _short.repr(value)


@dataclass(frozen=True)
class Violation:
    check: str
    step: int
    party: str
    message: str
    subjects: tuple[str, ...] = ()
    """The message and lease ids it is about (the report follows them in the trace)."""

    def __str__(self) -> str:
        return f"{self.check} at step {self.step} ({self.party}): {self.message}"


@dataclass
class WriteAttempt:
    party: str
    step: int
    outcome: WriteOutcome = WriteOutcome.IN_FLIGHT
    error: str = ""


@dataclass(frozen=True)
class Delivery:
    """One message handed to a caller: by which call, when, and the deliverer's clock meanwhile."""

    party: str
    via: str
    started_step: int
    step: int
    clock_low: float
    clock_high: float
    lease_id: str | None = None
    attempt: int = 0
    seconds: float = 0.0


@dataclass
class MessageTruth:
    body: dict
    phase: Phase
    attempts: list[WriteAttempt] = field(default_factory=list)
    deliveries: list[Delivery] = field(default_factory=list)

    def may_exist(self) -> bool:
        return any(attempt.outcome is not WriteOutcome.NOT_STORED for attempt in self.attempts)

    def written(self) -> bool:
        return any(attempt.outcome is WriteOutcome.OK for attempt in self.attempts)


@dataclass
class LeaseTruth:
    deliveries: list[Delivery] = field(default_factory=list)
    message_ids: set[str] = field(default_factory=set)
    released_at: dict[int, int] = field(default_factory=dict)
    """Attempt -> the step its first release call started."""
    first_true_ack_step: int | None = None


def check_stats(
    stats: Any, undelivered: int, taken_unreturned: int, exact: bool, unclaimed_gap: int = 0
) -> list[tuple[str, str]]:
    """G3 on ``stats()`` read at a quiescent point while the state was never lost.

    ``written == read + lost + depth + leased`` (checked when ``exact``: no
    count correction failed), and every written message never delivered is
    counted: in ``lost``, or still queued (``depth``) or held (``leased``), or,
    as docs/protocol.md documents, in ``gapped`` when it was lost together
    with its write counter (the true loss lies between ``lost`` and
    ``lost + gapped``). ``taken_unreturned`` allows for the documented limit that
    a ``read_multi`` ending mid-call (killed, or raising) may have claimed up to
    its ``max_items`` messages it never returned: counted as read, not lost.
    ``unclaimed_gap`` (the state's gap slots not yet claimed) allows for messages
    lost with their counter: ``gapped`` counts them once readers claim the gap.
    """
    problems = []
    total = stats.read + stats.lost + stats.depth + stats.leased
    if exact and stats.written != total:
        problems.append(
            (
                G3_IDENTITY,
                f"written {stats.written} != read {stats.read} + lost {stats.lost} + depth {stats.depth}"
                f" + leased {stats.leased} = {total}",
            )
        )
    if stats.lost + stats.gapped + stats.depth + stats.leased + taken_unreturned + unclaimed_gap < undelivered:
        slack = f" + {taken_unreturned} claimed by reads that ended mid-call" if taken_unreturned else ""
        slack += f" + {unclaimed_gap} gap slots not yet claimed" if unclaimed_gap else ""
        problems.append(
            (
                G3_LOST,
                f"{undelivered} messages written and never delivered, but lost {stats.lost} + gapped {stats.gapped}"
                f" + depth {stats.depth} + leased {stats.leased}{slack} is less",
            )
        )
    return problems


class Oracle:
    def __init__(self, skip_checks: Iterable[str] = ()) -> None:
        self.skip_checks = frozenset(skip_checks)
        self.violations: list[Violation] = []
        self.messages: dict[str, MessageTruth] = {}
        self.leases: dict[str, LeaseTruth] = {}
        self.accounting_disturbance: str | None = None
        """Why ``stats()`` can no longer be trusted at all (first reason), or None."""
        self.taken_unreturned = 0
        """Messages ``read_multi`` calls that ended mid-call may have claimed (their max_items)."""
        self.liveness_exempt: str | None = None
        """Why G2's liveness is not checked in this run (a documented limit was hit), or None."""
        self.inexact: str | None = None
        """Why the counts may be off by a correction a failed call did not apply (G3's identity is
        then not checked), or None."""
        self.delivery_count = 0

    def violate(self, check: str, step: int, party: str, message: str, subjects: Sequence[str] = ()) -> None:
        if check not in self.skip_checks:
            self.violations.append(Violation(check, step, party, message, tuple(subjects)))

    # -- writes -------------------------------------------------------------------------

    def new_message(self, body: dict, phase: Phase) -> None:
        self.messages[body["id"]] = MessageTruth(body, phase)

    def write_started(self, party: str, ids: Sequence[str], step: int) -> list[WriteAttempt]:
        attempts = []
        for message_id in ids:
            attempt = WriteAttempt(party, step)
            self.messages[message_id].attempts.append(attempt)
            attempts.append(attempt)
        return attempts

    def write_finished(
        self,
        party: str,
        ids: Sequence[str],
        attempts: Sequence[WriteAttempt],
        outcome: WriteOutcome,
        error: str,
        step: int,
    ) -> None:
        for attempt in attempts:
            attempt.outcome, attempt.error = outcome, error
        if outcome is not WriteOutcome.NOT_STORED:
            return
        delivered = [mid for mid in ids if self.messages[mid].deliveries and not self.messages[mid].may_exist()]
        if delivered:
            self.violate(
                G1,
                step,
                party,
                f"write raised {error} (nothing stored), yet {len(delivered)} of its messages"
                f" were delivered: {', '.join(delivered[:5])}",
                delivered,
            )

    # -- deliveries -----------------------------------------------------------------------

    def delivered(self, delivery: Delivery, messages: Sequence[Any], max_items: int) -> list[str]:
        """Check and log one call's messages; returns their ids (those the oracle knows)."""
        step, party = delivery.step, delivery.party
        if len(messages) > max_items:
            self.violate(G4, step, party, f"{delivery.via} asked for at most {max_items} messages, got {len(messages)}")
        lease = self.leases.setdefault(delivery.lease_id, LeaseTruth()) if delivery.lease_id else None
        if lease is not None:
            lease.deliveries.append(delivery)
        self.delivery_count += len(messages)
        ids: list[str] = []
        for value in messages:
            message_id = value.get("id") if isinstance(value, dict) else None
            truth = self.messages.get(message_id) if isinstance(message_id, str) else None
            if truth is None:
                self.violate(G1, step, party, f"{delivery.via} delivered a value nobody wrote: {describe_value(value)}")
                continue
            if message_id in ids:
                self.violate(G1, step, party, f"{delivery.via} delivered {message_id} twice in one call", [message_id])
            ids.append(message_id)
            self._check_delivery(message_id, truth, value, delivery, lease)
        return ids

    def _check_delivery(
        self, message_id: str, truth: MessageTruth, value: dict, delivery: Delivery, lease: LeaseTruth | None
    ) -> None:
        step, party = delivery.step, delivery.party
        if not truth.may_exist():
            errors = "; ".join(attempt.error for attempt in truth.attempts)
            self.violate(
                G1,
                step,
                party,
                f"{delivery.via} delivered {message_id}, whose write raised {errors} (nothing stored)",
                [message_id],
            )
        if "deep" not in truth.body and value != truth.body:
            self.violate(
                G1, step, party, f"{delivery.via} delivered {message_id} altered: {describe_value(value)}", [message_id]
            )
        for earlier in self._neighbours(truth, delivery):
            if not self._repeat_allowed(earlier, delivery):
                self.violate(
                    G1,
                    step,
                    party,
                    f"{message_id} delivered by {earlier.via} ({earlier.party}, step {earlier.step}) and again by"
                    f" {delivery.via}",
                    [message_id, *filter(None, [earlier.lease_id, delivery.lease_id])],
                )
                break
        truth.deliveries.append(delivery)
        if lease is not None:
            lease.message_ids.add(message_id)

    @staticmethod
    def _neighbours(truth: MessageTruth, delivery: Delivery) -> list[Delivery]:
        """The earlier deliveries a new one must be compared with: all of them, unless every one
        was by the same lease (then the attempts just below and above, a chain checked link by link)."""
        if delivery.lease_id is None or any(d.lease_id != delivery.lease_id for d in truth.deliveries[-1:]):
            return truth.deliveries
        below = [d for d in truth.deliveries if d.attempt <= delivery.attempt]
        above = [d for d in truth.deliveries if d.attempt > delivery.attempt]
        return [*below[-1:], *above[:1]]

    def _repeat_allowed(self, one: Delivery, other: Delivery) -> bool:
        """The same lease, two attempts, the later one after the earlier expired or was released.

        Attempts are ordered by number, not by when their calls returned: a
        holder's ``lease()`` can return after its lease was already taken over.
        """
        if one.lease_id is None or one.lease_id != other.lease_id or one.attempt == other.attempt:
            return False
        earlier, later = sorted((one, other), key=lambda delivery: delivery.attempt)
        expired = later.clock_high >= earlier.clock_low + earlier.seconds
        released = self.leases[earlier.lease_id].released_at.get(earlier.attempt)
        return expired or (released is not None and released < later.step)

    def release_started(self, lease_id: str, attempt: int, step: int) -> None:
        self.leases[lease_id].released_at.setdefault(attempt, step)

    def ack_returned(self, party: str, lease_id: str, attempt: int, result: bool, started_step: int, step: int) -> None:
        """G5: ``Lease.ack`` is True for the ack that settles the lease id (whichever
        attempt's holder makes it), False for any ack after that one."""
        lease = self.leases[lease_id]
        if result and lease.first_true_ack_step is not None and lease.first_true_ack_step < started_step:
            self.violate(
                G5_ACK,
                step,
                party,
                f"Lease.ack of lease {lease_id} attempt {attempt} returned True after it was acked"
                f" at step {lease.first_true_ack_step}",
                [lease_id],
            )
        if result and lease.first_true_ack_step is None:
            lease.first_true_ack_step = step

    def deleted_unseen(
        self, party: str, call: str, deleted: Iterable[str], allowed: set[str], step: int, subjects: Sequence[str]
    ) -> None:
        """G1: a call that returned normally deleted only messages it (or its lease) delivered."""
        unseen = [mid for mid in deleted if mid in self.messages and mid not in allowed]
        if unseen:
            self.violate(
                G1,
                step,
                party,
                f"{call} returned normally but deleted {len(unseen)} message(s) it never delivered: "
                f"{', '.join(unseen[:5])} (silent loss)",
                [*unseen, *subjects],
            )

    def lease_messages(self, lease_id: str) -> set[str]:
        return self.leases[lease_id].message_ids

    # -- errors and bounds ---------------------------------------------------------------------

    def raised(self, party: str, call: str, error: BaseException, phase: Phase, documented: bool, step: int) -> None:
        if phase is Phase.LIVENESS and self.liveness_exempt is None:
            self.violate(G2_LIVENESS, step, party, f"{call} raised {describe_error(error)} after the faults stopped")
        elif not documented:
            self.violate(G4, step, party, f"{call} crashed with {describe_error(error)}")

    def call_budget(self) -> int:
        return RUNAWAY_CACHE_CALLS if G2_BOUND in self.skip_checks else MAX_CACHE_CALLS_PER_QUEUE_CALL

    def budget_exceeded(self, party: str, call: str, step: int) -> None:
        """Reported even when G2's bound is not checked: a runaway call is stopped, and that must show."""
        budget = self.call_budget()
        self.violations.append(Violation(G2_BOUND, step, party, f"{call} made more than {budget} cache calls"))

    def disturb_accounting(self, reason: str) -> None:
        if self.accounting_disturbance is None:
            self.accounting_disturbance = reason

    def read_ended_mid_call(self, max_items: int) -> None:
        self.taken_unreturned += max_items

    def counts_inexact(self, reason: str) -> None:
        if self.inexact is None:
            self.inexact = reason

    # -- the whole log -------------------------------------------------------------------------

    def undelivered_written(self) -> list[str]:
        """Messages some write stored for sure, never delivered."""
        return [mid for mid, truth in self.messages.items() if truth.written() and not truth.deliveries]

    def undelivered_liveness(self) -> list[str]:
        return [
            mid
            for mid, truth in self.messages.items()
            if truth.phase is Phase.LIVENESS and truth.written() and not truth.deliveries
        ]

    def stats_checked(
        self,
        stats: Any,
        step: int,
        fault_free: bool,
        stranded: Callable[[list[str]], list[str]] = lambda ids: [],
        unclaimed_gap: int = 0,
        lossless: bool = False,
    ) -> None:
        """G3 on ``stats()`` (with ``lossless``, drained after only faults that lose nothing:
        every message written must have been delivered); ``stranded(ids)`` names those of the undelivered messages the
        documented limit covers (stored above a write counter that went back after it was
        pushed far ahead): they are left out of the loss check."""
        if self.accounting_disturbance is not None:
            return
        if lossless and not self.taken_unreturned and (never := self.undelivered_written()):
            self.violate(
                G3_NO_LOSS,
                step,
                "stats",
                f"{len(never)} messages never delivered in a run whose faults lose nothing: {', '.join(never[:8])}",
                never[:20],
            )
        if fault_free and (stats.resets, stats.gapped) != (0, 0):
            self.violate(
                G3_NO_FAULT, step, "stats", f"resets {stats.resets}, gapped {stats.gapped} in a run without faults"
            )
        undelivered = self.undelivered_written()
        if undelivered and (left_out := set(stranded(undelivered))):
            undelivered = [message for message in undelivered if message not in left_out]
        for check, message in check_stats(
            stats, len(undelivered), self.taken_unreturned, exact=self.inexact is None, unclaimed_gap=unclaimed_gap
        ):
            if check == G3_LOST:
                message += f" (undelivered: {', '.join(undelivered[:8])})"
            self.violate(check, step, "stats", message, undelivered[:20])
