"""What the count store must hold, from the simulation's own log, and the checks against it.

The oracle knows every event and every delivery; it counts with its own
arithmetic (never ``counters.tally_events``) and reads the store only through
the app's public reads (``counters.totals``, ``item_counts``, ``top_items``,
``series``), on the main thread, outside the schedule and the faults.

Checks (violation names):

* ``exactly once``: after the faults stop and everything quiesces, every
  item's counts, in all time and in every hour and day, the totals and the
  top 100 equal the events delivered at least once: none counted twice, none lost.
* ``never ahead``: at any step, the totals and each ranked item's counts are at
  most what was delivered so far (a double count shows here before the end).
* ``recorded``: ``count_batch``'s answers (messages this call recorded), summed
  over the calls that returned, are at most the messages delivered.
* ``errors``: ``count_batch`` or ``fold`` raised something other than the
  Datastore errors of the fault model (Timeout, TransactionFailedError, InternalError).
* ``liveness``: after the faults stop, every lease is acked and a fold finds
  nothing more to fold, within ``LIVENESS_STEPS``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from google.appengine.api import datastore_errors

from clicks import counters
from clicks.events import Event
from tests.sim.oracle import Violation
from tests.sim_counting.leases import Delivery

EXACTLY_ONCE = "exactly once"
NEVER_AHEAD = "never ahead"
RECORDED = "recorded"
ERRORS = "errors"
LIVENESS = "liveness"

DATASTORE_ERRORS = (datastore_errors.Timeout, datastore_errors.TransactionFailedError, datastore_errors.InternalError)
"""What a Datastore failure of the fault model reaches the caller as."""

BUCKETS = {"hour": 3600, "day": 86400}
TOP = 100
SHOWN_MISMATCHES = 6


@dataclass
class Expected:
    """Counts ``[click, view, bots]`` as the store should hold them."""

    items: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0, 0]))
    buckets: dict[tuple[str | None, str, int], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0, 0])
    )
    """By (item, or None for all items; bucket; its start)."""
    totals: list[int] = field(default_factory=lambda: [0, 0, 0])

    def add(self, event: Event) -> None:
        assert event.at is not None
        column = 2 if event.bot else ("click", "view").index(event.type)
        self.items[event.item][column] += 1
        self.totals[column] += 1
        for bucket, seconds in BUCKETS.items():
            start = event.at - event.at % seconds
            self.buckets[(event.item, bucket, start)][column] += 1
            self.buckets[(None, bucket, start)][column] += 1

    def ranking(self) -> list[list]:
        """The top items by clicks and views, most first, ties by item (``counters.top_items``' order)."""
        ranked = sorted(self.items.items(), key=lambda entry: (-(entry[1][0] + entry[1][1]), entry[0]))
        return [[item, *counts] for item, counts in ranked[:TOP]]


def _counts(read: Mapping[str, object]) -> list[int]:
    return [read["click"], read["view"], read["bots"]]


class Oracle:
    def __init__(self, events: Mapping[str, Event]) -> None:
        self.events = events
        self.delivered: set[str] = set()
        self.expected = Expected()
        self.leases_by_item: dict[str, set[str]] = defaultdict(set)
        self.recorded_answers = 0
        self.violations: list[Violation] = []
        self.closed = False
        """The run is over: what the parties' threads do while they unwind is not checked."""

    def violate(self, check: str, step: int, party: str, message: str, subjects: Iterable[str] = ()) -> None:
        if not self.closed:
            self.violations.append(Violation(check, step, party, message, tuple(sorted(subjects))))

    def handed(self, delivery: Delivery) -> None:
        for message_id, event in delivery.events.items():
            self.leases_by_item[event.item].add(delivery.lease_id)
            if message_id not in self.delivered:
                self.delivered.add(message_id)
                self.expected.add(event)

    def answered(self, recorded: int, step: int, party: str, lease_id: str) -> None:
        self.recorded_answers += recorded
        if self.recorded_answers > len(self.delivered):
            self.violate(
                RECORDED,
                step,
                party,
                f"count_batch answered {self.recorded_answers} messages recorded in all, but only "
                f"{len(self.delivered)} were delivered",
                [lease_id],
            )

    def _leases_of(self, items: Iterable[str | None]) -> set[str]:
        return {lease for item in items if item is not None for lease in self.leases_by_item[item]}

    def check_never_ahead(self, step: int) -> None:
        """The totals and the ranked items' counts are at most what was delivered so far."""
        ahead: list[tuple[str | None, str]] = []
        stored_totals = _counts(counters.totals())
        if any(stored > expected for stored, expected in zip(stored_totals, self.expected.totals, strict=True)):
            ahead.append((None, f"totals {stored_totals} > delivered {self.expected.totals}"))
        for entry in counters.top_items():
            stored, expected = _counts(entry), self.expected.items.get(entry["item"], [0, 0, 0])
            if any(s > e for s, e in zip(stored, expected, strict=True)):
                ahead.append((entry["item"], f"{entry['item']} {stored} > delivered {expected}"))
        if ahead:
            shown = "; ".join(text for _, text in ahead[:SHOWN_MISMATCHES])
            leases = self._leases_of(item for item, _ in ahead)
            self.violate(NEVER_AHEAD, step, "oracle", f"counted ahead of the deliveries: {shown}", leases)

    def check_exactly_once(self, step: int, items: list[str], span: tuple[int, int]) -> None:
        """Every read the app offers equals the events delivered at least once."""
        mismatches: list[tuple[str | None, str]] = []
        expected = self.expected

        def compare(item: str | None, what: str, stored: list[int], wanted: list[int]) -> None:
            if stored != wanted:
                more = any(s > w for s, w in zip(stored, wanted, strict=True))
                fewer = any(s < w for s, w in zip(stored, wanted, strict=True))
                verdict = "counted twice and lost" if more and fewer else "counted twice" if more else "lost"
                mismatches.append((item, f"{what}: stored {stored}, delivered {wanted} ({verdict})"))

        compare(None, "totals", _counts(counters.totals()), expected.totals)
        for item in items:
            compare(item, f"{item} all time", _counts(counters.item_counts(item)), expected.items.get(item, [0, 0, 0]))
        stored_ranking = [[entry["item"], *_counts(entry)] for entry in counters.top_items()]
        wanted_ranking = expected.ranking()
        if stored_ranking != wanted_ranking:
            place = next(n for n in range(TOP) if stored_ranking[n : n + 1] != wanted_ranking[n : n + 1])
            stored, wanted = stored_ranking[place : place + 1], wanted_ranking[place : place + 1]
            mismatches.append((None, f"top items differ at place {place + 1}: stored {stored}, delivered {wanted}"))
        start, end = span
        for item in [None, *items]:
            for bucket, seconds in BUCKETS.items():
                first = start - start % seconds
                for row in counters.series(item, bucket, first, end):
                    wanted = expected.buckets.get((item, bucket, row["start"]), [0, 0, 0])
                    compare(item, f"{item or 'all items'} {bucket} {row['start']}", _counts(row), wanted)
        if mismatches:
            lines = [text for _, text in mismatches]
            self.violate(
                EXACTLY_ONCE,
                step,
                "oracle",
                f"{len(mismatches)} reads differ from the deliveries: " + "; ".join(lines[:SHOWN_MISMATCHES]),
                self._leases_of(item for item, _ in mismatches),
            )
