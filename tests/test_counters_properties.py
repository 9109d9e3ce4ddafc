"""Time buckets stay exact under redelivery (hypothesis state machine): batches of
events over hours and days are delivered, again and again, split into small
commits, failing before or after any commit, with a message evicted or one added
between deliveries; every counter always holds each counted message exactly once."""

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
from handlers import counters
from handlers.events import Event

START = 1_740_783_600  # 2025-02-28T23:00:00Z: the hours cross a day
HOURS = 27
ITEMS = ("a", "b", "c")
COMMIT_LIMIT = 14
"""Entities per commit here: small, so that batches split into several commits."""

events = st.builds(
    Event,
    type=st.sampled_from(("click", "view")),
    item=st.sampled_from(ITEMS),
    at=st.integers(0, HOURS * 3600 - 1).map(lambda offset: START + offset),
    bot=st.booleans(),
)


class BucketsUnderRedelivery(RuleBasedStateMachine):
    leases = Bundle("leases")

    def __init__(self) -> None:
        super().__init__()
        self.bed = testbed_module.Testbed()
        self.bed.activate()
        self.bed.setup_env(app_id=APP_ID, overwrite=True)
        self.bed.init_datastore_v3_stub(require_indexes=True, root_path=str(REPO_ROOT))
        self.bed.init_memcache_stub()
        self.faults = MemcacheRpcFaults()
        apiproxy_stub_map.apiproxy.GetPreCallHooks().Append("buckets-faults", self.faults.hook, "datastore_v3")
        self.ids = (f"slot-{n}" for n in itertools.count())
        self.pending: dict[str, Event] = {}
        """Messages written and not yet in a lease."""
        self.lease_messages: dict[str, dict[str, Event]] = {}
        """Each lease's messages, as its next delivery holds them."""
        self.events: dict[str, Event] = {}

    def teardown(self) -> None:
        apiproxy_stub_map.apiproxy.GetPreCallHooks().Clear()
        self.bed.deactivate()

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

    @rule(
        lease_id=leases,
        failing_commit=st.none() | st.integers(0, 4),
        after_applying=st.booleans(),
        evicted=st.none() | st.integers(0, 14),
        added=st.booleans(),
    )
    def deliver(self, lease_id, failing_commit, after_applying, evicted, added):
        """One delivery of a lease: maybe one message evicted since the last, maybe
        one added (a take of unknown outcome), maybe a commit failing."""
        messages = self.lease_messages[lease_id]
        if evicted is not None and messages:
            del messages[list(messages)[evicted % len(messages)]]
        if added and self.pending:
            message_id = next(iter(self.pending))
            messages[message_id] = self.pending.pop(message_id)
        if failing_commit is not None:
            self.faults.fail_next("Commit", after_applying=after_applying, skip=failing_commit)
        ndb.get_context().clear_cache()  # each delivery is a request of its own
        try:
            counters.apply_batch(lease_id, messages, max_entities=COMMIT_LIMIT)
        except Exception as error:
            assert "injected" in str(error), error
        else:
            assert set(messages) <= self.counted(lease_id), "a delivery that succeeded left messages uncounted"
        finally:
            self.faults.planned.clear()  # a planned fault past this delivery's commits is not carried over

    @rule(lease_id=consumes(leases))
    def lease_is_done(self, lease_id):
        """Acked: it is not delivered again (its marker stays)."""

    def counted(self, lease_id: str) -> set[str]:
        marker = ndb.Key(counters.AppliedBatch, lease_id, parent=ndb.Key(counters.EventTotals, "all")).get()
        if marker is None:
            return set()
        assert len(set(marker.message_ids)) == len(marker.message_ids), "a message marked twice"
        return set(marker.message_ids)

    @invariant()
    def counters_hold_each_counted_message_once(self):
        ndb.get_context().clear_cache()
        counted = [self.events[message_id] for lease_id in self.lease_messages for message_id in self.counted(lease_id)]
        expected = self.tally(counted)
        assert expected == self.stored(), "counters disagree with the messages counted"

    @staticmethod
    def tally(counted: list[Event]) -> Counter:
        tally: Counter = Counter()
        for event in counted:
            kind = "bots" if event.bot else event.type
            tally["total", kind] += 1
            tally["item", event.item, kind] += 1
            for bucket in counters.BUCKET_SECONDS:
                start = counters.bucket_start(event.at, bucket)
                tally[bucket, event.item, start, kind] += 1
                tally[bucket, None, start, kind] += 1
        return tally

    @staticmethod
    def stored() -> Counter:
        stored: Counter = Counter()
        for kind, count in counters.totals().items():
            if kind in counters.COUNTS:
                stored["total", kind] += count
        for item in ITEMS:
            for kind in counters.COUNTS:
                stored["item", item, kind] += counters.item_counts(item)[kind]
        for bucket in counters.BUCKET_SECONDS:
            start = counters.bucket_start(START, bucket)
            for item in (*ITEMS, None):
                for point in counters.series(item, bucket, start, START + HOURS * 3600):
                    for kind in counters.COUNTS:
                        stored[bucket, item, point["start"], kind] += point[kind]
        return +stored  # without zeros


class TestBucketsUnderRedelivery(BucketsUnderRedelivery.TestCase):
    settings = settings(max_examples=40, stateful_step_count=20, deadline=None)
