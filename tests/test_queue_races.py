"""Races in the windows between a call's cache calls, one at a time, on the App Engine
stub: what each party ends up with, the counts it leaves (``skipped``, ``retried``,
``gapped``, ``collided``), and the cache calls the slow paths cost."""

import copy
import logging
import random
import threading

import pytest

from tests.support.seams import BeforeCas, CacheWrapper, PauseAfterIncr, RefusesTakesOnce, drain
from tests.support.threads import THREAD_DEADLINE_SECONDS, InThread
from test_queue_faults import expiry_seconds

from clickqueue import (
    CacheUnavailableError,
    ContentionError,
    CountingCache,
    Queue,
    QueueKeys,
    TooManyLeasesError,
    WriteFailedError,
    WriteIncompleteError,
    wrap_client,
)
from clickqueue.codec import FRAME_BYTES, GAP_TOMBSTONE, TAKEN, TOMBSTONE, encode_message
from clickqueue.recovery import REPAIR_MARGIN
from clickqueue.state import MAX_CAS_ATTEMPTS, MAX_LEASES, MAX_STATE_BYTES, ReadState, SlotRange
from clickqueue.taking import TAKEN_SECONDS
from clickqueue.writing import MAX_WRITE_ATTEMPTS


@pytest.fixture
def cache(testbed):
    return CountingCache(wrap_client(None))


def stats_of(queue, *names):
    stats = queue.stats()
    return tuple(getattr(stats, name) for name in names)


def assert_identity(queue):
    stats = queue.stats()
    assert stats.written == stats.read + stats.lost + stats.depth + stats.leased


class StoreBeforeTheTombstone(CacheWrapper):
    """A writer stores ``message`` into ``key`` just before a reader's tombstone add reaches it."""

    def __init__(self, inner, key, message, meanwhile=lambda: None):
        super().__init__(inner)
        self.key, self.message, self.meanwhile = key, message, meanwhile

    def add_multi(self, values, expire_seconds=0):
        if self.key in values and values[self.key] in (TOMBSTONE, GAP_TOMBSTONE):
            self.inner.add_multi({self.key: encode_message(self.message)})
            self.meanwhile()
        return self.inner.add_multi(values, expire_seconds)


class CollideTimes(CacheWrapper):
    """The next ``times`` slots writers take already hold another party's value."""

    def __init__(self, inner, times):
        super().__init__(inner)
        self.times = times
        self.refused: set[str] = set()

    def add_multi(self, values, expire_seconds=0):
        slots = [key for key in values if ":m:" in key]
        if slots and self.times and all(values[key] not in (TOMBSTONE, GAP_TOMBSTONE) for key in slots):
            self.times -= 1
            self.refused |= set(slots)
            return dict.fromkeys(values, False)
        return self.inner.add_multi(values, expire_seconds)

    def get_multi(self, keys):
        return self.inner.get_multi(keys) | {key: b'"someone else\'s"' for key in keys if key in self.refused}


def queue_with_a_gap(cache, clock):
    """A queue whose counter was lost and repaired: slot 1 holds "a", slots 2-1001
    are the repair's gap, "b" went to slot 1002."""
    queue = Queue("q", cache, clock=clock)
    queue.write("a")
    cache.delete_multi([queue.keys.write_counter(0)])
    queue.write("b")
    assert queue.stats().gapped == 0 and queue.stats().resets == 1
    return queue


# -- claims ---------------------------------------------------------------------------------------


class StateGoneBeforeTheCheck(CacheWrapper):
    """The claim's state CAS is applied and its reply lost; then the state is
    ``replaced_by`` (deleted when None) before the claim can look."""

    def __init__(self, inner, state_key, replaced_by):
        super().__init__(inner)
        self.state_key, self.replaced_by, self.done = state_key, replaced_by, False

    def cas_multi(self, values, expire_seconds=0):
        applied = self.inner.cas_multi(values, expire_seconds)
        if self.state_key in values and not self.done:
            self.done = True
            if self.replaced_by is None:
                self.inner.delete_multi([self.state_key])
            else:
                token = self.inner.gets_multi([self.state_key])[self.state_key][1]
                self.inner.cas_multi({self.state_key: (self.replaced_by, token)})
            return {key: None for key in applied}
        return applied


@pytest.mark.parametrize("replaced_by", [None, b"not a state"], ids=["deleted", "foreign"])
def test_a_lease_whose_claim_went_unanswered_and_whose_state_is_gone_is_made_again(cache, clock, replaced_by):
    queue = Queue("q", cache, clock=clock)
    queue.write_multi(["a", "b"])
    lease = Queue("q", StateGoneBeforeTheCheck(cache, queue.keys.state, replaced_by), clock=clock).lease(10)
    assert lease.messages == ["a", "b"]
    assert lease.ack() is True, "the lease is one the current state holds"


def test_a_lease_counts_the_empty_slots_it_claims_at_once_so_lost_is_never_negative(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("first")
    leases = []
    Queue("q", PauseAfterIncr(cache, lambda: leases.append(queue.lease(10))), clock=clock).write("late")
    assert leases[0].messages == ["first"], "the late writer's slot was empty, then tombstoned"
    assert stats_of(queue, "skipped", "retried", "lost", "leased") == (1, 1, 0, 2)
    assert leases[0].ack() and drain(queue) == ["late"]
    assert stats_of(queue, "skipped", "retried", "lost") == (1, 1, 0)


def test_a_read_that_only_settles_a_gap_reads_no_slots_for_its_empty_claim(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("a")
    assert queue.read() == "a"
    cache.delete_multi([queue.keys.write_counter(0)])
    cache.calls.clear()
    assert queue.read_multi(10) == []  # the counter's repair, then claims of its empty gap
    assert cache.calls == {"gets_multi": 6, "get_multi": 2, "add_multi": 2, "cas_multi": 3}
    assert cache.get_multi([queue.keys.slot(0, 2)]) == {queue.keys.slot(0, 2): GAP_TOMBSTONE}


def test_a_new_lease_is_attempt_one_and_its_takeover_attempt_two_held_by_the_new_holder(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("a")
    first = queue.lease(10, seconds=30)
    clock.advance(31)
    second = queue.lease(10, seconds=30)
    assert (first.attempt, second.attempt, second.lease_id) == (1, 2, first.lease_id)
    assert first.release() is False, "no longer its holder"
    assert second.release() is True
    assert queue.lease(10, seconds=30).attempt == 3


def test_exactly_max_leases_can_be_outstanding(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write_multi(["a", "b", "c"])
    first = queue.lease(1, seconds=300)
    raw, token = cache.gets_multi([queue.keys.state])[queue.keys.state]
    state = ReadState.from_bytes(queue.keys.state, raw, 1)
    for n in range(MAX_LEASES - 2):  # copies of the first lease's record, as if held by others
        state.leases[f"{n:032x}"] = copy.deepcopy(state.leases[first.lease_id])
    assert cache.cas_multi({queue.keys.state: (state.to_bytes(), token)})[queue.keys.state]
    assert queue.lease(1, seconds=300).messages == ["b"], "the last one that fits"
    with pytest.raises(TooManyLeasesError) as raised:
        queue.lease(1, seconds=300)
    assert (raised.value.key, raised.value.limit) == (queue.keys.state, MAX_LEASES)
    assert first.ack() and queue.lease(1, seconds=300).messages == ["c"]


def test_a_lease_that_would_grow_the_state_past_its_limit_is_refused_and_reads_go_on(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write_multi(["a", "b", "c"])
    first = queue.lease(1, seconds=300)
    raw, token = cache.gets_multi([queue.keys.state])[queue.keys.state]
    state = ReadState.from_bytes(queue.keys.state, raw, 1)
    fragmented = copy.deepcopy(state.leases[first.lease_id])
    fragmented.ranges = [SlotRange(0, slot, slot) for slot in range(10_000, 10_100, 2)]
    for n in range(MAX_STATE_BYTES // 1000 - 1):  # other holders' leases
        state.leases[f"{n:032x}"] = copy.deepcopy(fragmented)
    while len(state.to_bytes()) <= MAX_STATE_BYTES:  # and one-slot ones, until one more does not fit
        n += 1
        state.leases[f"{n:032x}"] = copy.deepcopy(state.leases[first.lease_id])
    del state.leases[f"{n:032x}"]
    assert MAX_STATE_BYTES - 100 < len(state.to_bytes()) <= MAX_STATE_BYTES, "not one more lease of one slot fits"
    assert cache.cas_multi({queue.keys.state: (state.to_bytes(), token)})[queue.keys.state]
    with pytest.raises(TooManyLeasesError) as raised:
        queue.lease(1, seconds=300)
    assert (raised.value.key, raised.value.limit) == (queue.keys.state, len(state.leases) + 1)
    assert queue.read_multi(1) == ["b"], "a read adds no lease"


def test_a_lease_that_brings_the_state_to_exactly_its_limit_is_taken_and_one_byte_more_is_refused(cache, clock):
    def lease_with_a_first_lease_padded_by(name, padding):
        """Lease "b" after a first lease whose holder was padded: the outcome, and the state's size."""
        queue = Queue(name, cache, clock=clock, rng=random.Random(7))  # the same lease ids every time
        queue.write_multi(["a", "b"])
        first = queue.lease(1, seconds=300)
        raw, token = cache.gets_multi([queue.keys.state])[queue.keys.state]
        state = ReadState.from_bytes(queue.keys.state, raw, 1)
        state.leases[first.lease_id].holder += "x" * padding
        assert cache.cas_multi({queue.keys.state: (state.to_bytes(), token)})[queue.keys.state]
        try:
            outcome = queue.lease(1, seconds=300).messages
        except TooManyLeasesError as error:
            outcome = error
        return outcome, len(cache.get_multi([queue.keys.state])[queue.keys.state])

    _, unpadded = lease_with_a_first_lease_padded_by("q1", 0)
    assert lease_with_a_first_lease_padded_by("q2", MAX_STATE_BYTES - unpadded) == (["b"], MAX_STATE_BYTES)
    refused, _ = lease_with_a_first_lease_padded_by("q3", MAX_STATE_BYTES - unpadded + 1)
    assert isinstance(refused, TooManyLeasesError)


class EveryStateCasLost(CacheWrapper):
    def cas_multi(self, values, expire_seconds=0):
        return {key: False for key in values} if any(key.endswith(":state") for key in values) else self.inner.cas_multi(values, expire_seconds)


def test_a_claim_that_loses_every_compare_and_set_gives_up_naming_the_state(cache, clock):
    Queue("q", cache, clock=clock).write("a")
    pauses = []
    queue = Queue("q", EveryStateCasLost(cache), clock=clock, sleep=pauses.append)
    with pytest.raises(ContentionError) as raised:
        queue.read()
    assert (raised.value.key, raised.value.attempts) == (queue.keys.state, MAX_CAS_ATTEMPTS)
    assert len(pauses) == MAX_CAS_ATTEMPTS


class FirstStateCasesLost(CacheWrapper):
    def __init__(self, inner, lost):
        super().__init__(inner)
        self.lost = lost

    def cas_multi(self, values, expire_seconds=0):
        if self.lost and any(key.endswith(":state") for key in values):
            self.lost -= 1
            return dict.fromkeys(values, False)
        return self.inner.cas_multi(values, expire_seconds)


def test_a_claim_that_loses_a_compare_and_set_pauses_a_random_growing_time_before_it_tries_again(cache, clock):
    """Two readers that meet in step would stay in step without it, and one could lose every attempt."""
    Queue("q", cache, clock=clock).write("a")
    pauses = []
    queue = Queue("q", FirstStateCasesLost(cache, lost=3), clock=clock, sleep=pauses.append, rng=random.Random(7))
    assert queue.read() == "a"
    assert len(pauses) == 3
    assert [0 <= pause <= bound for pause, bound in zip(pauses, [0.001, 0.002, 0.004])] == [True] * 3
    assert len(set(pauses)) == 3


def test_a_corrupt_state_is_replaced_with_a_warning(cache, clock, caplog):
    queue = Queue("q", cache, clock=clock)
    queue.write("a")
    token = cache.gets_multi([queue.keys.state])[queue.keys.state][1]
    cache.cas_multi({queue.keys.state: (b"not a state", token)})
    queue.read()
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "queue q: replacing a state it did not write"
    ]


def writers_paused_on_two_slots_then(cache, clock, then):
    """Writers take slots 2 and 3 and pause; a third stores "c" in slot 4, then ``then``
    runs; then the paused writers go on (slot 3's first)."""
    first_paused = PauseAfterIncr(cache, lambda: second_paused_writer.write("from 3"))
    second_paused_writer = Queue(
        "q", PauseAfterIncr(cache, lambda: (Queue("q", cache, clock=clock).write("c"), then())), clock=clock
    )
    Queue("q", first_paused, clock=clock).write("from 2")


def test_a_run_of_empty_slots_is_settled_in_bulk_only_after_a_round_that_found_only_empty_slots(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("first")
    assert queue.read() == "first"
    reading = CountingCache(wrap_client(None))
    got = []
    writers_paused_on_two_slots_then(cache, clock, lambda: got.extend(Queue("q", reading, clock=clock).read_multi(1)))
    assert got == ["c"]
    # rounds after the first read ahead; the last one's take of "c" goes with its claim
    assert reading.calls == {"gets_multi": 4, "cas_multi": 3, "add_multi": 2}


def test_writers_turned_away_by_a_settled_run_count_retried_as_its_reader_counted_skipped(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("first")
    assert queue.read() == "first"
    writers_paused_on_two_slots_then(cache, clock, lambda: queue.read_multi(1))
    assert sorted(drain(queue)) == ["from 2", "from 3"]
    assert stats_of(queue, "skipped", "retried", "lost") == (2, 2, 0)
    assert_identity(queue)


def queue_past_slots_of_dead_writers(cache, clock):
    """Slot 1 read; slots 2 to 1501 handed to writers that died after their incr; "m" in 1502."""
    queue = Queue("q", cache, clock=clock, tombstone_seconds=600)
    queue.write("first")
    assert queue.read() == "first"
    cache.incr(queue.keys.write_counter(0), 1500)
    queue.write("m")
    return queue


def test_a_run_of_empty_slots_far_below_the_counter_is_settled_in_bulk_after_an_empty_round(cache, clock):
    queue = queue_past_slots_of_dead_writers(cache, clock)
    cache.calls.clear()
    assert queue.read_multi(1) == []
    assert queue.stats().skipped == 504, "4 rounds: slot 2; 3-502 (1,000 below the counter) in bulk, and 503; 504; 505"
    assert set(cache.get_multi(queue.keys.slots(0, [2, 3, 502])).values()) == {TOMBSTONE}
    assert 590 < expiry_seconds(queue.keys.slot(0, 3)) <= 600
    assert [message for _read in range(5) for message in queue.read_multi(100)] == ["m"]
    assert stats_of(queue, "skipped", "retried", "lost", "depth") == (1500, 0, 1500, 0)


def test_a_lease_settles_a_run_of_empty_slots_in_bulk_only_after_an_empty_round(cache, clock):
    queue = queue_past_slots_of_dead_writers(cache, clock)
    assert not queue.lease(1, seconds=30)
    assert queue.stats().skipped == 504, "4 rounds: slot 2; 3-502 (1,000 below the counter) in bulk, and 503; 504; 505"
    assert [message for _lease in range(5) for message in queue.lease(100, seconds=30).messages] == ["m"]


def test_a_run_settled_in_bulk_tombstones_no_slot_past_its_first_message(cache, clock):
    """What lies past the run's first message is not claimed: a tombstone there would
    turn a writer away from a slot nobody counts yet."""
    queue = Queue("q", cache, clock=clock)
    queue.write("first")
    assert queue.read() == "first"
    cache.incr(queue.keys.write_counter(0), 1500)  # writers that died after their incr
    cache.add_multi({queue.keys.slot(0, 300): encode_message("stored late")})
    assert queue.read_multi(1) == ["stored late"]
    assert cache.get_multi(queue.keys.slots(0, range(301, 503))) == {}
    assert set(cache.get_multi(queue.keys.slots(0, range(2, 300))).values()) == {TOMBSTONE}
    assert stats_of(queue, "skipped", "lost") == (298, 298)


def test_a_run_already_tombstoned_is_settled_in_bulk_without_a_tombstone_call(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("first")
    assert queue.read() == "first"
    cache.incr(queue.keys.write_counter(0), 1500)  # writers that abandoned their slots
    cache.add_multi(dict.fromkeys(queue.keys.slots(0, range(2, 1502)), TOMBSTONE), 600)
    queue.write("m")
    cache.calls.clear()
    assert queue.read_multi(1) == []
    assert queue.stats().skipped == 504, "4 rounds: slot 2; 3-502 in bulk, and 503; 504; 505"
    assert cache.calls == {"gets_multi": 5, "get_multi": 2, "cas_multi": 4}  # rounds after the first read ahead


# -- takes ----------------------------------------------------------------------------------------


def test_a_lease_whose_take_reply_was_lost_reads_its_marks_back_and_keeps_them(cache, clock, memcache_rpc_faults):
    queue = Queue("q", cache, clock=clock)
    queue.write_multi(["a", "b"])
    memcache_rpc_faults.fail_next("Set", key=queue.keys.slot(0, 1), after_applying=True)
    lease = queue.lease(10)
    assert (memcache_rpc_faults.failed, lease.messages) == (["Set"], ["a", "b"])
    assert lease.ack() and queue.read() is None


class TakeFailsBeforeApplying(CacheWrapper):
    """The slot take (compare-and-set) of ``fail_take_of`` fails before it applies; the rest go through."""

    def __init__(self, inner, fail_take_of):
        super().__init__(inner)
        self.fail_take_of = fail_take_of

    def cas_multi(self, values, expire_seconds=0):
        applied = self.inner.cas_multi({key: value for key, value in values.items() if key != self.fail_take_of}, expire_seconds)
        return applied | ({self.fail_take_of: None} if self.fail_take_of in values else {})


def test_a_takeover_keeps_the_slots_its_lease_marked_and_takes_those_it_missed(cache, clock, memcache_rpc_faults):
    queue = Queue("q", cache, clock=clock)
    queue.write("a")
    queue.write("b")  # two RPCs of their own, so a failed take can miss one
    taker = Queue("q", TakeFailsBeforeApplying(cache, fail_take_of=queue.keys.slot(0, 2)), clock=clock)
    first = taker.lease(10, seconds=30)
    assert first.messages == ["a"], "b's take failed before it applied: it is still a message"
    clock.advance(31)
    again = queue.lease(10, seconds=30)
    assert (again.lease_id, again.attempt, again.messages) == (first.lease_id, 2, ["a", "b"])


def test_a_holder_whose_lease_was_taken_over_mid_read_keeps_what_is_marked_for_its_lease(cache, clock):
    """A claims lease L over "first" and an empty slot; before A's tombstone, the late
    writer stores there, L expires and B takes it over (attempt 2), marking both for L.
    A's tombstone is refused; it reads the slot back and finds it marked for L: its own
    lease id, so it keeps it (a repeat under one lease id, as G1 allows)."""
    queue = Queue("q", cache, clock=clock)
    queue.write("first")
    late_slot = queue.keys.slot(0, 2)
    taken_over = []

    def expire_and_take_over():
        clock.advance(31)
        taken_over.append(Queue("q", cache, clock=clock).lease(10, seconds=30))

    def lease_as_the_writer_stores():
        holder = Queue("q", StoreBeforeTheTombstone(cache, late_slot, "late", expire_and_take_over), clock=clock)
        taken_over.insert(0, holder.lease(10, seconds=30))

    Queue("q", PauseAfterIncr(cache, lease_as_the_writer_stores), clock=clock).write("late")
    first_holder, second_holder = taken_over
    assert (second_holder.attempt, second_holder.messages) == (2, ["first", "late"])
    assert (first_holder.lease_id, first_holder.attempt, first_holder.messages) == (second_holder.lease_id, 1, ["late"])


# -- tombstones -----------------------------------------------------------------------------------


def test_a_reader_tombstones_an_empty_slot_in_one_call(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("first")

    reading = CountingCache(wrap_client(None))
    Queue("q", PauseAfterIncr(cache, lambda: Queue("q", reading, clock=clock).read_multi(10)), clock=clock).write("late")
    assert reading.calls == {"gets_multi": 2, "cas_multi": 2, "add_multi": 1}


def test_a_tombstone_add_left_unanswered_is_tried_once_more_then_left(cache, clock, memcache_rpc_faults):
    queue = Queue("q", cache, clock=clock)
    queue.write("first")

    def read_while_tombstones_fail():
        slot = queue.keys.slot(0, 2)
        memcache_rpc_faults.fail_next("Set", key=slot)
        memcache_rpc_faults.fail_next("Set", key=slot)
        assert Queue("q", reading, clock=clock).read_multi(10) == ["first"]

    reading = CountingCache(wrap_client(None))
    Queue("q", PauseAfterIncr(cache, read_while_tombstones_fail), clock=clock).write("late")
    assert (memcache_rpc_faults.failed, reading.calls["add_multi"]) == (["Set", "Set"], 2)
    assert drain(queue) == [], "the late writer stored into a slot already claimed"
    assert queue.stats().lost == 1, "and its loss is counted"


def test_a_writer_turned_away_by_a_gap_tombstone_is_not_counted_retried(cache, clock):
    """Its slot came from the counter before the repair, so it lies in the repair's
    gap, and the reader counted it gapped, not skipped."""
    queue = Queue("q", cache, clock=clock)
    queue.write("a")

    def counter_repaired_and_gap_settled():
        cache.delete_multi([queue.keys.write_counter(0)])
        assert drain(queue) == ["a"]

    Queue("q", PauseAfterIncr(cache, counter_repaired_and_gap_settled), clock=clock).write("stalled")
    assert drain(queue) == ["stalled"]
    assert stats_of(queue, "skipped", "retried", "lost") == (0, 0, 0)
    assert_identity(queue)


# -- counts a read corrects -----------------------------------------------------------------------


def test_slots_of_a_gap_no_reader_has_passed_count_neither_as_written_nor_as_waiting(cache, clock):
    queue = queue_with_a_gap(cache, clock)
    assert stats_of(queue, "written", "depth", "read", "gapped", "lost") == (2, 2, 0, 0, 0)
    assert drain(queue) == ["a", "b"]
    assert stats_of(queue, "written", "depth", "read", "gapped", "lost") == (2, 0, 2, 1000, 0)


def test_a_gap_slot_filled_just_before_its_tombstone_is_delivered_and_not_counted_gapped(cache, clock):
    queue = queue_with_a_gap(cache, clock)
    cache.add_multi({queue.keys.slot(0, 2): encode_message("late 1")})  # writers holding old slots
    racing = Queue("q", StoreBeforeTheTombstone(cache, queue.keys.slot(0, 3), "late 2"), clock=clock)
    assert racing.read_multi(3) == ["a", "late 1", "late 2"]
    assert drain(queue) == ["b"]
    assert stats_of(queue, "gapped", "skipped", "lost") == (998, 0, 0)
    assert_identity(queue)


def test_a_read_whose_count_correction_fails_keeps_its_messages_and_says_so(cache, clock, memcache_rpc_faults, caplog):
    queue = Queue("q", cache, clock=clock)
    queue.write("first")
    slot = queue.keys.slot(0, 2)

    def state_reads_fail():
        memcache_rpc_faults.fail_next("Get", key=queue.keys.state)

    def read_as_the_writer_stores():
        racing = Queue("q", StoreBeforeTheTombstone(cache, slot, "late", state_reads_fail), clock=clock)
        assert racing.read_multi(10) == ["first", "late"]

    Queue("q", PauseAfterIncr(cache, read_as_the_writer_stores), clock=clock).write("never stored")
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == ["queue q: could not correct counts after a read: cache gets of 'cq:q:state' failed"]


# -- counts a write records ------------------------------------------------------------------------


def test_requeued_counts_are_recorded_once_when_the_reply_is_lost(cache, clock, memcache_rpc_faults):
    queue = Queue("q", cache, clock=clock)
    memcache_rpc_faults.fail_next("Set", key=queue.keys.state, after_applying=True, skip=1)  # the creation's add
    queue.requeue(["again"])
    assert memcache_rpc_faults.failed == ["Set"]
    assert (queue.stats().requeued, drain(queue)) == (1, ["again"])


def test_counts_a_write_could_not_record_are_logged_and_its_messages_kept(cache, clock, memcache_rpc_faults, caplog):
    queue = Queue("q", cache, clock=clock)
    queue.write("creates the queue")
    memcache_rpc_faults.fail_next("Get", key=queue.keys.state)
    queue.requeue(["again"])
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == [
        "queue q: could not record counts {'requeued': 1}: cache gets of 'cq:q:state' failed"
    ]
    assert drain(queue) == ["creates the queue", "again"]


# -- writes ---------------------------------------------------------------------------------------


class FirstAddRefusedWithNothingThere(CacheWrapper):
    """The first message add is refused, yet the slot reads back empty (what held it
    vanished in between: evicted, expired)."""

    refused = False

    def add_multi(self, values, expire_seconds=0):
        if not self.refused and any(":m:" in key for key in values) and TOMBSTONE not in values.values():
            self.refused = True
            return dict.fromkeys(values, False)
        return self.inner.add_multi(values, expire_seconds)


def test_a_refused_add_whose_slot_reads_back_empty_is_tombstoned_and_its_message_written_elsewhere(cache, clock):
    Queue("q", cache, clock=clock).write("creates the queue")
    writer = Queue("q", FirstAddRefusedWithNothingThere(cache), clock=clock)
    writer.write("elsewhere")
    assert cache.get_multi([writer.keys.slot(0, 2)]) == {writer.keys.slot(0, 2): TOMBSTONE}
    queue = Queue("q", cache, clock=clock)
    assert drain(queue) == ["creates the queue", "elsewhere"]
    assert stats_of(queue, "written", "skipped", "retried", "lost") == (2, 1, 1, 0)


def test_a_refused_add_whose_read_back_fails_stored_nothing(cache, clock, memcache_rpc_faults):
    queue = Queue("q", cache, clock=clock)
    queue.write("first")
    slot = queue.keys.slot(0, 2)

    def reader_tombstones_it_then_reads_fail():
        assert queue.read_multi(10) == ["first"]
        for _read_and_its_half in range(2):
            memcache_rpc_faults.fail_next("Get", key=slot)

    writer = Queue("q", PauseAfterIncr(cache, reader_tombstones_it_then_reads_fail), clock=clock)
    with pytest.raises(CacheUnavailableError) as raised:
        writer.write("refused")
    assert not isinstance(raised.value, WriteIncompleteError), "a refused add stored nothing"
    assert queue.read() is None


def test_a_slot_handed_out_again_holding_a_taken_mark_is_a_collision_not_an_unknown_outcome(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("first")
    assert queue.read() == "first"
    cache.add_multi({queue.keys.slot(0, 2): TAKEN})  # left by a reader of a counter's other version
    queue.write("second")
    assert drain(queue) == ["second"]
    assert queue.stats().collided == 1


def test_an_identical_message_in_a_slot_handed_out_twice_is_another_writers_and_both_are_kept(cache, clock):
    """Clicks are often byte for byte the same: a refused add that reads back its own
    bytes found someone else's message, not its own lost reply."""
    queue = Queue("q", cache, clock=clock)
    queue.write({"type": "click", "item": "a"})
    counter = queue.keys.write_counter(0)
    token = cache.gets_multi([counter])[counter][1]
    cache.cas_multi({counter: (b"0", token)})  # went back: slot 1 is handed out again
    queue.write({"type": "click", "item": "a"})
    assert drain(queue) == [{"type": "click", "item": "a"}] * 2
    assert queue.stats().collided == 1


def test_a_write_counts_every_collision_it_met(cache, clock):
    Queue("q", cache, clock=clock).write("creates the queue")
    queue = Queue("q", CollideTimes(cache, 2), clock=clock)
    queue.write("third time lucky")
    assert queue.stats().collided == 2
    assert drain(queue) == ["creates the queue", "third time lucky"]


def test_a_frame_moved_out_of_an_overlap_leaves_a_taken_mark_that_expires(cache, clock):
    """A counter that went back: the frame at slot 2 spans slot 4, where an older message
    sat. The older one is taken (a TAKEN mark, gone within TAKEN_SECONDS) and written again."""
    queue = Queue("q", cache, clock=clock)
    queue.write("a")
    overlapped = queue.keys.slot(0, 4)
    cache.add_multi({overlapped: encode_message("older")})
    queue.write_multi(["b", "c", "d", "e", "f"])
    assert queue.read_multi(6) == ["a", "b", "c", "d", "e", "f"]
    assert cache.get_multi([overlapped])[overlapped].startswith(TAKEN)
    assert 0 < expiry_seconds(overlapped) <= TAKEN_SECONDS
    assert drain(queue) == ["older"]


def test_collisions_of_separate_writes_add_up(cache, clock):
    Queue("q", cache, clock=clock).write("creates the queue")
    Queue("q", CollideTimes(cache, 1), clock=clock).write("first")
    Queue("q", CollideTimes(cache, 2), clock=clock).write("second")
    assert Queue("q", cache, clock=clock).stats().collided == 3


class StateNeverChanges(CacheWrapper):
    def cas_multi(self, values, expire_seconds=0):
        if any(key.endswith(":state") for key in values):
            return dict.fromkeys(values, False)
        return self.inner.cas_multi(values, expire_seconds)


def test_a_write_whose_counts_cannot_be_recorded_says_which_counts_it_lost(cache, clock, caplog):
    Queue("q", cache, clock=clock).write("creates the queue")
    writer = Queue("q", StateNeverChanges(CollideTimes(cache, 1)), clock=clock, sleep=lambda seconds: None)
    with caplog.at_level(logging.WARNING, logger="clickqueue"):
        writer.write("stored all the same")
    assert [record.getMessage() for record in caplog.records] == [
        "queue q: could not record a write's counts (retried 0, collided 1): "
        f"gave up on {writer.keys.state!r} after {MAX_CAS_ATTEMPTS} attempts: it kept changing under this call"
    ]
    assert drain(Queue("q", cache, clock=clock)) == ["creates the queue", "stored all the same"]


def alone(name: str) -> str:
    """A message too large to share a frame: one per slot, so outcomes are per message."""
    return name * (FRAME_BYTES // 2 + 1)


class RepliesLostAndOldestTaken(CacheWrapper):
    """Every reply of the write's ``add_multi`` is lost after it was applied, and
    meanwhile ``reader`` takes the ``taken`` oldest messages."""

    def __init__(self, inner, reader: Queue, taken: int) -> None:
        super().__init__(inner)
        self.reader, self.taken, self.took = reader, taken, []

    def add_multi(self, values, expire_seconds=0):
        applied = self.inner.add_multi(values, expire_seconds)
        if any(":m:" in key for key in values):
            self.took = self.reader.read_multi(self.taken)
            return dict.fromkeys(applied)
        return applied


def test_a_lost_reply_reports_stored_what_it_finds_stored_and_unknown_what_was_taken(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("warm up")
    assert queue.read() == "warm up"
    x, y = alone("x"), alone("y")
    lossy = RepliesLostAndOldestTaken(cache, queue, 1)

    with pytest.raises(WriteIncompleteError) as raised:
        Queue("q", lossy, clock=clock).write_multi([x, y])

    assert lossy.took == [x]
    assert (raised.value.stored, raised.value.unknown) == ([1], [0])
    assert (raised.value.key, raised.value.total) == (queue.keys.slot(0, 2), 2)
    assert drain(queue) == [y]


def test_a_lost_reply_over_many_messages_reports_each_stored_and_each_taken(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("warm up")
    assert queue.read() == "warm up"
    messages = [alone(name) for name in "wxyz"]
    lossy = RepliesLostAndOldestTaken(cache, queue, 2)

    with pytest.raises(WriteIncompleteError) as raised:
        Queue("q", lossy, clock=clock).write_multi(messages)

    assert lossy.took == messages[:2]
    assert (raised.value.stored, raised.value.unknown) == ([2, 3], [0, 1])


def test_a_frame_whose_reply_was_lost_and_whose_first_part_was_taken_is_unknown_whole(cache, clock):
    queue = Queue("q", cache, clock=clock)

    class ReplyLostAndFirstPartTaken(CacheWrapper):
        def add_multi(self, values, expire_seconds=0):
            applied = self.inner.add_multi(values, expire_seconds)
            if any(":m:" in key for key in values):
                assert queue.read_multi(1) == ["x"]
                return dict.fromkeys(applied)
            return applied

    with pytest.raises(WriteIncompleteError) as raised:
        Queue("q", ReplyLostAndFirstPartTaken(cache), clock=clock).write_multi(["x", "y"])
    assert (raised.value.stored, raised.value.unknown) == ([], [0, 1])
    assert drain(queue) == ["y"], "the rest of the frame was stored again after the part taken"


def test_a_write_keeps_what_it_stored_and_an_unknown_outcome_while_it_retries_the_rest(cache, clock):
    """x's add is applied, its reply lost, and x is read at once (so it cannot be told
    apart); y's slot was tombstoned first; z is stored. y is written again: z and y are
    stored, x stays unknown."""
    queue = Queue("q", cache, clock=clock)
    queue.write("warm up")
    assert queue.read() == "warm up"
    x, y, z = alone("x"), alone("y"), alone("z")
    x_slot, y_slot, z_slot = queue.keys.slots(0, [2, 3, 4])

    class Racing(CacheWrapper):
        def add_multi(self, values, expire_seconds=0):
            if x_slot in values:
                self.inner.add_multi({y_slot: TOMBSTONE})
                applied = self.inner.add_multi(values, expire_seconds)
                assert queue.read_multi(1) == [x]
                return applied | {x_slot: None}
            return self.inner.add_multi(values, expire_seconds)

    with pytest.raises(WriteIncompleteError) as raised:
        Queue("q", Racing(cache), clock=clock).write_multi([x, y, z])
    assert (raised.value.stored, raised.value.unknown, raised.value.total) == ([1, 2], [0], 3)
    assert drain(queue) == [z, y]


class TombstoneEachSlotFirst(CacheWrapper):
    """``times`` times, a reader reaches the slot a writer just took and tombstones it."""

    def __init__(self, inner, reader, times):
        super().__init__(inner)
        self.reader, self.times = reader, times

    def incr(self, key, delta):
        value = self.inner.incr(key, delta)
        if value is not None and self.times:
            self.times -= 1
            self.reader.read_multi(100)
        return value


def test_a_message_tombstoned_twice_counts_retried_twice(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("creates the queue")
    assert queue.read() == "creates the queue"
    Queue("q", TombstoneEachSlotFirst(cache, queue, 2), clock=clock).write("persistent")
    assert drain(queue) == ["persistent"]
    assert stats_of(queue, "skipped", "retried", "lost") == (2, 2, 0)


class StallPastMaxWriteSeconds(CacheWrapper):
    """``times`` times, the writer's clock jumps past max_write_seconds between its incr and add."""

    def __init__(self, inner, clock, times):
        super().__init__(inner)
        self.clock, self.times = clock, times

    def incr(self, key, delta):
        value = self.inner.incr(key, delta)
        if value is not None and self.times:
            self.times -= 1
            self.clock.advance(61)
        return value


def test_a_message_that_abandoned_two_slots_counts_retried_twice(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("creates the queue")
    Queue("q", StallPastMaxWriteSeconds(cache, clock, 2), clock=clock, max_write_seconds=60).write("slow")
    assert drain(queue) == ["creates the queue", "slow"]
    assert stats_of(queue, "skipped", "retried", "lost") == (2, 2, 0)


def test_an_abandoned_slots_tombstone_expires_after_tombstone_seconds(cache, clock):
    Queue("q", cache, clock=clock).write("creates the queue")
    writer = Queue(
        "q", StallPastMaxWriteSeconds(cache, clock, 1), clock=clock, tombstone_seconds=600, max_write_seconds=60
    )
    writer.write("slow")
    assert 590 < expiry_seconds(writer.keys.slot(0, 2)) <= 600


def test_a_counter_lost_before_any_write_gets_exactly_its_margin(cache, clock):
    queue = Queue("q", cache, clock=clock)
    assert queue.read() is None  # creates the queue
    cache.delete_multi([queue.keys.write_counter(0)])
    queue.write("x")
    assert cache.get_multi([queue.keys.slot(0, REPAIR_MARGIN + 1)]) == {queue.keys.slot(0, REPAIR_MARGIN + 1): b'"x"'}
    assert [message for _read in range(3) for message in queue.read_multi(100)] == ["x"]
    assert stats_of(queue, "gapped", "resets", "lost") == (REPAIR_MARGIN, 1, 0)


def test_a_process_that_only_wrote_counts_a_flush_as_a_reset(cache, clock):
    from google.appengine.api import memcache

    writer = Queue("q", cache, clock=clock)
    writer.write("before")
    memcache.flush_all()
    writer.write("after")
    assert writer.stats().resets == 2, "the state, and the write counter"


class EverySlotTombstonedFirst(CacheWrapper):
    """A reader always reaches the slot a writer took before it can store."""

    def add_multi(self, values, expire_seconds=0):
        if any(":m:" in key for key in values) and TOMBSTONE not in values.values():
            self.inner.add_multi(dict.fromkeys(values, TOMBSTONE))
        return self.inner.add_multi(values, expire_seconds)


def test_a_write_turned_away_from_every_slot_gives_up_after_max_write_attempts_naming_its_last_slot(cache, clock):
    Queue("q", cache, clock=clock).write("creates the queue")
    with pytest.raises(WriteFailedError) as raised:
        Queue("q", EverySlotTombstonedFirst(cache), clock=clock).write("never")
    last_slot = Queue("q", cache).keys.slot(0, 1 + MAX_WRITE_ATTEMPTS)
    assert (raised.value.key, raised.value.attempts, raised.value.stored, raised.value.total) == (last_slot, 100, [], 1)
    assert str(raised.value) == (
        f"write_multi stored 0 of 1 messages (0 unknown): gave up after 100 attempts found their slots taken; "
        f"last key {last_slot!r}"
    )


class AReaderClaimsEverySlotFirst(CacheWrapper):
    """A reader's claim always reaches the slots a writer took before it can store:
    it counts them skipped and tombstones them."""

    def __init__(self, inner, clock):
        super().__init__(inner)
        self.reader = Queue("q", inner, clock=clock)

    def add_multi(self, values, expire_seconds=0):
        if any(":m:" in key for key in values) and TOMBSTONE not in values.values():
            self.reader.read_multi(100)
        return self.inner.add_multi(values, expire_seconds)


@pytest.mark.parametrize("messages", [["never stored"], ["a", "b", "c"]], ids=["one message", "one frame of three"])
def test_a_write_that_gives_up_counts_the_slots_it_left_as_retried_not_lost(cache, clock, messages):
    """Its error tells the caller nothing was stored: those messages were never
    written, so the tombstoned slots they left are no loss."""
    Queue("q", cache, clock=clock).write("first")
    with pytest.raises(WriteFailedError) as raised:
        Queue("q", AReaderClaimsEverySlotFirst(cache, clock), clock=clock).write_multi(messages)
    assert raised.value.stored == []
    queue = Queue("q", cache, clock=clock)
    left = MAX_WRITE_ATTEMPTS * len(messages)
    assert stats_of(queue, "written", "read", "skipped", "retried", "lost") == (1, 1, left, left, 0)
    assert_identity(queue)


def test_a_writer_that_stalls_exactly_max_write_seconds_keeps_its_slot(cache, clock):
    Queue("q", cache, clock=clock).write("creates the queue")

    class StallExactly(CacheWrapper):
        def incr(self, key, delta):
            value = self.inner.incr(key, delta)
            clock.advance(60)
            return value

    queue = Queue("q", StallExactly(cache), clock=clock, max_write_seconds=60)
    queue.write("on time")
    assert cache.get_multi([queue.keys.slot(0, 2)]) == {queue.keys.slot(0, 2): b'"on time"'}


# -- acks of a lease the queue forgot -------------------------------------------------------------


def test_an_ack_of_a_forgotten_lease_turns_its_marks_into_expiring_taken_marks(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write("held")
    lease = queue.lease(10, seconds=300)
    cache.delete_multi([queue.keys.state])
    assert lease.ack() is False
    assert cache.get_multi(lease.message_keys) == {lease.message_keys[0]: TAKEN}
    assert 0 < expiry_seconds(lease.message_keys[0]) <= TAKEN_SECONDS


def test_another_leases_marks_survive_a_forgotten_ack_and_go_out_again_on_expiry(cache, clock):
    first_process = Queue("q", cache, clock=clock)
    first_process.write("before the flush")
    forgotten = first_process.lease(10, seconds=300)
    cache.delete_multi([first_process.keys.state, first_process.keys.write_counter(0), *first_process.keys.generation_markers])
    second_process = Queue("q", cache, clock=clock)
    cache.delete_multi(forgotten.message_keys)
    second_process.write("after the flush")
    current = second_process.lease(10, seconds=300)
    assert forgotten.message_keys == current.message_keys
    assert forgotten.ack() is False
    clock.advance(301)
    again = second_process.lease(10, seconds=300)
    assert (again.lease_id, again.attempt, again.messages) == (current.lease_id, 2, ["after the flush"])


# -- acks and releases of a lease -----------------------------------------------------------------


def leased_pair(cache, clock):
    """A queue holding one lease of two messages."""
    queue = Queue("q", cache, clock=clock)
    queue.write_multi(["a", "b"])
    return queue, queue.lease(10, seconds=60)


def test_a_lease_released_twice_is_given_back_and_counted_once(cache, clock):
    queue, lease = leased_pair(cache, clock)
    assert (lease.release(), lease.release()) == (True, False)
    assert queue.stats().requeued == 2


def test_each_release_adds_to_the_requeued_count(cache, clock):
    queue = Queue("q", cache, clock=clock)
    queue.write_multi(["a", "b", "c"])
    first, second = queue.lease(2), queue.lease(1)
    assert (first.release(), second.release()) == (True, True)
    assert queue.stats().requeued == 3


UNANSWERED = pytest.mark.parametrize("after_applying", [True, False], ids=["reply-lost", "failed-before-applying"])


def ended_with_an_unanswered_cas(cache, clock, faults, after_applying, end: str):
    """A lease of two messages, ended by ``end`` ("ack", "release") whose state CAS
    goes unanswered: the end still reports that it took effect."""
    queue, lease = leased_pair(cache, clock)
    faults.fail_next("Set", key=queue.keys.state, after_applying=after_applying)
    assert getattr(lease, end)() is True
    assert faults.failed == ["Set"]
    return queue, lease


@UNANSWERED
def test_a_release_whose_compare_and_set_went_unanswered_gives_the_lease_back_once(
    cache, clock, memcache_rpc_faults, after_applying
):
    queue, lease = ended_with_an_unanswered_cas(cache, clock, memcache_rpc_faults, after_applying, "release")

    assert queue.stats().requeued == 2
    again = queue.lease(10)
    assert (again.lease_id, again.attempt, again.messages) == (lease.lease_id, 2, ["a", "b"])


@UNANSWERED
def test_an_ack_whose_compare_and_set_went_unanswered_settles_the_lease_once(
    cache, clock, memcache_rpc_faults, after_applying
):
    queue, lease = ended_with_an_unanswered_cas(cache, clock, memcache_rpc_faults, after_applying, "ack")

    assert stats_of(queue, "read", "leased", "depth") == (2, 0, 0)
    assert cache.get_multi(lease.message_keys) == {}


def test_an_ack_whose_slots_cannot_be_deleted_is_settled_and_says_so(cache, clock, memcache_rpc_faults, caplog):
    queue, lease = leased_pair(cache, clock)
    memcache_rpc_faults.fail_next("Delete")

    assert lease.ack() is True

    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert warnings == [
        f"queue q: lease {lease.lease_id} acked, its slots not deleted: cache delete of '{lease.message_keys[0]}' failed"
    ]
    assert stats_of(queue, "read", "leased") == (2, 0)


def test_a_leased_gap_slot_filled_just_before_its_tombstone_is_uncounted_from_gapped_at_ack(cache, clock):
    queue = queue_with_a_gap(cache, clock)
    racing = Queue("q", StoreBeforeTheTombstone(cache, queue.keys.slot(0, 2), "late"), clock=clock)
    lease = racing.lease(2)
    assert lease.messages == ["a", "late"]

    assert lease.ack() is True

    assert drain(queue) == ["b"]
    assert stats_of(queue, "gapped", "skipped", "lost") == (999, 0, 0)
    assert_identity(queue)


# -- a read_multi whose claim lost while the takes sent with it won ---------------------


def losing_to_a_read_of_one(cache, clock, other: list) -> Queue:
    """A reader of one shard whose claim's compare-and-set loses: just before it, another
    reader reads one message (into ``other``)."""
    return Queue(
        "q",
        BeforeCas(cache, QueueKeys("q").state, lambda: other.extend(Queue("q", cache, clock=clock, shards=1).read_multi(1))),
        clock=clock,
        shards=1,
    )


def test_a_read_whose_claim_lost_delivers_what_its_takes_won_and_claims_those_slots(cache, clock):
    queue = Queue("q", cache, clock=clock, shards=1)
    for message in ["a", "b", "c"]:
        queue.write(message)
    other = []
    loser = losing_to_a_read_of_one(cache, clock, other)
    assert loser.read_multi(3) == ["b", "c"]
    assert other == ["a"]
    assert stats_of(queue, "read", "lost", "skipped", "depth") == (3, 0, 0, 0)
    assert queue.read_multi(10) == []
    assert_identity(queue)


def test_a_read_whose_takes_won_inside_a_claim_that_landed_takes_them_off_what_that_claim_skips(cache, clock):
    queue = Queue("q", cache, clock=clock, shards=1)
    for message in ["a", "b", "c"]:
        queue.write(message)
    claim_landed, go_on = threading.Event(), threading.Event()

    def hold_the_takes():
        claim_landed.set()
        assert go_on.wait(THREAD_DEADLINE_SECONDS)

    leasing = Queue("q", BeforeCas(cache, queue.keys.state, hold_the_takes, with_key=False), clock=clock, shards=1)
    lease_thread = InThread(lambda: leasing.lease(3, seconds=30))

    def lease_claims_first():
        lease_thread.start()
        assert claim_landed.wait(THREAD_DEADLINE_SECONDS)

    reader = Queue("q", BeforeCas(cache, queue.keys.state, lease_claims_first), clock=clock, shards=1)
    assert reader.read_multi(3) == ["a", "b", "c"]
    go_on.set()
    lease = lease_thread.outcome()
    assert lease.messages == []
    lease.ack()
    assert stats_of(queue, "read", "lost", "skipped", "depth", "leased") == (3, 0, 0, 0, 0)
    assert_identity(queue)


def test_a_read_whose_claim_lost_does_not_claim_past_the_rest_of_a_frame_another_reader_cut(cache, clock):
    queue = Queue("q", cache, clock=clock, shards=1)
    queue.write_multi(["a", "b", "c"])  # one frame, slots 1 to 3
    queue.write("d")  # slot 4
    other = []
    loser = losing_to_a_read_of_one(cache, clock, other)
    assert loser.read_multi(4) == ["d"]
    assert other == ["a"]  # and "b", "c" stored again in slot 2
    assert queue.read_multi(10) == ["b", "c"]
    assert stats_of(queue, "read", "lost", "skipped", "depth") == (4, 0, 0, 0)
    assert_identity(queue)


# -- a take refused though its slot did not change (memcached gave the item a new CAS id) --


def test_a_read_whose_takes_were_refused_on_unchanged_slots_takes_them_again(cache, clock):
    queue = Queue("q", cache, clock=clock, shards=1)
    queue.write_multi(["a", "b"])
    queue.write("c")
    refusing = RefusesTakesOnce(cache, queue.keys.state)
    assert Queue("q", refusing, clock=clock, shards=1).read_multi(10) == ["a", "b", "c"]
    assert refusing.refused == [queue.keys.slot(0, 1), queue.keys.slot(0, 3)]
    assert stats_of(queue, "read", "lost", "skipped", "depth") == (3, 0, 0, 0)


def test_a_lease_whose_takes_were_refused_on_unchanged_slots_takes_them_again(cache, clock):
    queue = Queue("q", cache, clock=clock, shards=1)
    queue.write_multi(["a", "b"])
    queue.write("c")
    refusing = RefusesTakesOnce(cache, queue.keys.state)
    lease = Queue("q", refusing, clock=clock, shards=1).lease(10, seconds=30)
    assert lease.messages == ["a", "b", "c"]
    assert refusing.refused == [queue.keys.slot(0, 1), queue.keys.slot(0, 3)]
    assert lease.ack()
    assert stats_of(queue, "read", "lost", "skipped", "depth") == (3, 0, 0, 0)
