"""Counting stays exact under redelivery (hypothesis state machine): batches of events
over hours and days are recorded again and again, with a message evicted or one added
between deliveries, commits failing before or after they apply; folds fail the same way,
fold part of a batch at a time, and split shards; the count store and the batches not yet
folded always hold each recorded message exactly once."""

from __future__ import annotations

import itertools
from collections import Counter

from google.appengine.api import apiproxy_stub_map
from google.appengine.ext import ndb
from google.appengine.ext import testbed as testbed_module
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from tests.support.processes import APP_ID, REPO_ROOT
from tests.support.rpc_faults import MemcacheRpcFaults
from clicks import counters, counting
from clicks.events import Event

START = 1_740_783_600  # 2025-02-28T23:00:00Z: the hours cross a day
HOURS = 27
ITEMS = tuple("abcdefgh")
NOW = START + HOURS * 3600
SMALL = counters.StoreLimits(shard_split_bytes=40, max_shards=4, max_shard_bytes=900_000, max_entities_per_fold=9)
"""Tiny shards and commits: folds split periods and take part of a batch at a time."""

events = st.builds(
    Event,
    type=st.sampled_from(("click", "view")),
    item=st.sampled_from(ITEMS),
    at=st.integers(0, HOURS * 3600 - 1).map(lambda offset: START + offset),
    bot=st.booleans(),
)
faults = st.none() | st.tuples(st.integers(0, 2), st.booleans())
"""None, or (which Commit fails, whether after it applied)."""


class CountingUnderRedelivery(RuleBasedStateMachine):
    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.bed = testbed_module.Testbed()
        self.bed.activate()
        self.bed.setup_env(app_id=APP_ID, overwrite=True)
        self.bed.init_datastore_v3_stub(require_indexes=True, root_path=str(REPO_ROOT))
        self.bed.init_memcache_stub()
        self.faults = MemcacheRpcFaults()
        apiproxy_stub_map.apiproxy.GetPreCallHooks().Append("counting-faults", self.faults.hook, "datastore_v3")
        self.ids = (f"slot-{n}" for n in itertools.count())
        self.pending: dict[str, Event] = {}
        """Messages written and not yet in a lease."""
        self.lease_messages: dict[str, dict[str, Event]] = {}
        """Each lease's messages, as its next delivery holds them."""
        self.events: dict[str, Event] = {}

    def teardown(self) -> None:
        apiproxy_stub_map.apiproxy.GetPreCallHooks().Clear()
        self.bed.deactivate()

    def attempt(self, fault, call) -> bool:
        """Run ``call`` with ``fault`` planned; False if the fault ended it."""
        if fault is not None:
            skip, after_applying = fault
            self.faults.fail_next("Commit", after_applying=after_applying, skip=skip)
        ndb.get_context().clear_cache()  # each call is a request of its own
        try:
            call()
        except Exception as error:
            assert "injected" in str(error), error
            return False
        finally:
            self.faults.planned.clear()  # a planned fault past this call's commits is not carried over
        return True

    @rule(written=st.lists(events, min_size=1, max_size=12))
    def write(self, written):
        for event in written:
            message_id = next(self.ids)
            self.pending[message_id] = event
            self.events[message_id] = event

    @precondition(lambda self: self.pending)
    @rule(target=leases, size=st.integers(1, 15))
    def lease(self, size):
        lease_id = f"lease-{len(self.lease_messages)}"
        taken = list(self.pending)[:size]
        self.lease_messages[lease_id] = {message_id: self.pending.pop(message_id) for message_id in taken}
        return lease_id

    @rule(lease_id=leases, fault=faults, evicted=st.none() | st.integers(0, 14), added=st.booleans())
    def deliver(self, lease_id, fault, evicted, added):
        """One delivery of a lease: maybe one message evicted since the last, maybe
        one added (a take of unknown outcome), maybe its commit failing."""
        messages = self.lease_messages[lease_id]
        if evicted is not None and messages:
            del messages[list(messages)[evicted % len(messages)]]
        if added and self.pending:
            message_id = next(iter(self.pending))
            messages[message_id] = self.pending.pop(message_id)
        if self.attempt(fault, lambda: counting.count_batch(lease_id, messages, NOW)):
            assert set(messages) <= set(self.recorded(lease_id)), "a delivery that succeeded left messages out"

    @rule(fault=faults)
    def fold(self, fault):
        self.attempt(fault, lambda: counting.fold(NOW, SMALL))

    @rule(lease_id=consumes(leases))
    def lease_is_done(self, lease_id):
        """Acked: it is not delivered again (its records stay)."""

    @staticmethod
    def records(lease_id: str) -> list[counting.CountedBatch]:
        return counting.CountedBatch.query(ancestor=ndb.Key(counting.CountedBatch, lease_id)).fetch()

    def recorded(self, lease_id: str) -> list[str]:
        return [message_id for record in self.records(lease_id) for message_id in record.message_ids]

    @invariant()
    def each_recorded_message_counts_once_in_the_store_or_in_its_batch(self):
        ndb.get_context().clear_cache()
        recorded = [message_id for lease_id in self.lease_messages for message_id in self.recorded(lease_id)]
        assert len(recorded) == len(set(recorded)), "a message recorded twice"
        waiting: counters.Tally = {}
        for lease_id in self.lease_messages:
            for record in self.records(lease_id):
                assert record.folded == (record.tally is None), "a batch's tally outlived its fold"
                if record.tally is not None:
                    counters.add_tally(waiting, counters.tally_from_json(record.tally))
        assert self.flat(counters.tally_events(self.events[message_id] for message_id in recorded)) == (
            self.stored() + self.flat(waiting)
        ), "the store and the batches waiting disagree with the messages recorded"

    @staticmethod
    def flat(tally: counters.Tally) -> Counter:
        flat: Counter = Counter()
        for (period, start), items in tally.items():
            for item, counts in items.items():
                for kind, count in zip(counters.COUNTS, counts, strict=True):
                    flat[period, start, item, kind] += count
                    flat[period, start, None, kind] += count
        return +flat

    @staticmethod
    def stored() -> Counter:
        stored: Counter = Counter()
        for item in (*ITEMS, None):
            counts = counters.item_counts(item) if item else counters.totals()
            for kind in counters.COUNTS:
                stored["all", 0, item, kind] += counts[kind]
            for bucket in counters.BUCKET_SECONDS:
                for point in counters.series(item, bucket, counters.bucket_start(START, bucket), NOW):
                    for kind in counters.COUNTS:
                        stored[bucket, point["start"], item, kind] += point[kind]
        return +stored


class TestCountingUnderRedelivery(CountingUnderRedelivery.TestCase):
    settings = settings(max_examples=40, stateful_step_count=25, deadline=None)
