"""Frames: the messages one write stores side by side share one value, in the first of
their slots, and span the rest (docs/protocol.md). Every backend."""

import logging

import pytest
from tests.support.seams import BeforeCas, CacheWrapper, PauseAfterIncr, drain

from clickqueue import CacheUnavailableError, Queue
from clickqueue.codec import (
    FRAME_BYTES,
    FRAME_MESSAGES,
    LEASE_PREFIX,
    TAKEN,
    TOMBSTONE,
    encode_message,
    frame_payload,
    leased_value,
)
from clickqueue.recovery import REPAIR_MARGIN
from clickqueue.state import ReadState
from clickqueue.writing import MAX_WRITE_ATTEMPTS, holds


def frame_of(*messages) -> bytes:
    return frame_payload(messages)


def stored_slots(cache, queue, numbers) -> dict[int, bytes]:
    keys = queue.keys.slots(0, numbers)
    found = cache.get_multi(keys)
    return {number: found[key] for key, number in zip(keys, numbers) if key in found}


# -- writing -----------------------------------------------------------------------------------


def test_a_write_cuts_its_batch_into_frames_of_at_most_frame_messages(make_queue, cache):
    queue = make_queue()
    queue.write_multi(list(range(2 * FRAME_MESSAGES + 3)))
    assert stored_slots(cache, queue, range(1, 2 * FRAME_MESSAGES + 5)) == {
        1: frame_of(*range(FRAME_MESSAGES)),
        FRAME_MESSAGES + 1: frame_of(*range(FRAME_MESSAGES, 2 * FRAME_MESSAGES)),
        2 * FRAME_MESSAGES + 1: frame_of(*range(2 * FRAME_MESSAGES, 2 * FRAME_MESSAGES + 3)),
    }


def test_a_message_too_large_to_share_a_frame_is_stored_alone(make_queue, cache):
    queue = make_queue()
    large = "x" * (FRAME_BYTES // 2 + 1)
    queue.write_multi(["a", large, large, "b"])
    assert stored_slots(cache, queue, range(1, 6)) == {
        1: frame_of("a", large),
        3: frame_of(large, "b"),
    }
    assert drain(queue) == ["a", large, large, "b"]


def test_a_write_multi_is_two_cache_calls_whatever_its_frames(make_queue, cache):
    queue = make_queue()
    queue.write("creates the queue")
    cache.calls.clear()
    queue.write_multi(list(range(5 * FRAME_MESSAGES)))
    assert cache.calls == {"incr": 1, "add_multi": 1}


# -- claims end where frames do ----------------------------------------------------------------


@pytest.mark.parametrize("max_items", [15, 19], ids=["by-5-slots", "by-1-slot"])
def test_a_claim_ends_before_a_frame_that_runs_past_it(make_queue, max_items):
    queue = make_queue()
    queue.write_multi(list(range(10)))
    queue.write_multi(list(range(10, 20)))  # slots 11 to 20
    assert queue.read_multi(max_items) == list(range(10))
    assert queue.read_multi(max_items) == list(range(10, 20))


def test_a_read_of_fewer_messages_than_a_frame_takes_its_first_part_and_stores_the_rest_in_the_next_slot(
    make_queue, cache
):
    queue = make_queue()
    queue.write_multi(list(range(5)))
    assert queue.read_multi(2) == [0, 1]
    assert stored_slots(cache, queue, range(3, 6)) == {3: frame_of(2, 3, 4)}
    assert queue.read_multi(2) == [2, 3]
    assert queue.read() == 4
    stats = queue.stats()
    assert (stats.written, stats.read, stats.lost, stats.skipped, stats.depth) == (5, 5, 0, 0, 0)


def test_a_lease_of_a_frames_first_part_holds_that_part_and_is_delivered_again_whole(make_queue, cache, clock):
    queue = make_queue()
    queue.write_multi(list(range(5)))
    lease = queue.lease(2, seconds=30)
    assert lease.messages == [0, 1]
    assert cache.get_multi(lease.message_keys) == {
        queue.keys.slot(0, 1): LEASE_PREFIX + lease.lease_id.encode() + b":" + frame_of(0, 1)
    }
    clock.advance(31)
    again = queue.lease(2, seconds=30)
    assert (again.lease_id, again.attempt, again.messages) == (lease.lease_id, 2, [0, 1])
    assert again.ack() and drain(queue) == [2, 3, 4]
    assert queue.stats().lost == 0


class RacesForTheNextSlot(CacheWrapper):
    """Another reader claims the slot after a frame's first part (and tombstones it)
    just before the first reader stores the frame's rest there."""

    def __init__(self, inner, other_reader, rest_slot):
        super().__init__(inner)
        self.other_reader, self.rest_slot, self.seen = other_reader, rest_slot, []

    def add_multi(self, values, expire_seconds=0):
        if self.rest_slot in values and not self.seen:
            self.seen += self.other_reader.read_multi(10)
        return self.inner.add_multi(values, expire_seconds)


def test_the_rest_of_a_frame_turned_away_from_the_next_slot_is_written_again_and_counted(make_queue, cache, clock):
    queue = make_queue()
    queue.write_multi(list(range(5)))
    racing = RacesForTheNextSlot(cache, queue, queue.keys.slot(0, 3))
    assert Queue("q", racing, clock=clock).read_multi(2) == [0, 1]
    assert racing.seen == [], "the other reader found the next slots empty"
    assert drain(queue) == [2, 3, 4]
    stats = queue.stats()
    assert (stats.written, stats.read, stats.lost, stats.skipped, stats.retried) == (5, 5, 0, 3, 3)


def test_the_rest_of_a_frame_goes_to_fresh_slots_once_max_write_seconds_passed_since_its_claim(make_queue, cache, clock):
    queue = make_queue(max_write_seconds=5)
    queue.write_multi(list(range(5)))
    slow = BeforeCas(cache, queue.keys.state, lambda: clock.advance(6), with_key=False)  # before the take
    assert Queue("q", slow, clock=clock, max_write_seconds=5).read_multi(2) == [0, 1]
    assert stored_slots(cache, queue, [3]) == {3: TOMBSTONE}, "the next slot, abandoned: readers could pass it"
    assert drain(queue) == [2, 3, 4]
    stats = queue.stats()
    assert (stats.written, stats.read, stats.lost) == (5, 5, 0)


class RestNeverStored(CacheWrapper):
    def __init__(self, inner, rest_slot):
        super().__init__(inner)
        self.rest_slot = rest_slot

    def add_multi(self, values, expire_seconds=0):
        if self.rest_slot in values:
            raise CacheUnavailableError(self.rest_slot, "add")
        return self.inner.add_multi(values, expire_seconds)


def test_the_rest_of_a_frame_that_cannot_be_stored_again_is_counted_lost(make_queue, cache, clock, caplog):
    queue = make_queue()
    queue.write_multi(list(range(5)))
    with caplog.at_level(logging.WARNING, logger="clickqueue"):
        assert Queue("q", RestNeverStored(cache, queue.keys.slot(0, 3)), clock=clock).read_multi(2) == [0, 1]
    rest_slot = queue.keys.slot(0, 3)
    assert [record.getMessage() for record in caplog.records] == [
        f"queue q: could not store 3 messages again: {CacheUnavailableError(rest_slot, 'add')}"
    ]
    assert drain(queue) == []
    stats = queue.stats()
    assert (stats.written, stats.read, stats.lost) == (5, 2, 3)


class AnotherReaderTombstonesEveryRest(CacheWrapper):
    """Another reader's claim reaches each slot the rest of a frame is stored into first."""

    def __init__(self, inner, clock):
        super().__init__(inner)
        self.other_reader = Queue("q", inner, clock=clock)

    def add_multi(self, values, expire_seconds=0):
        if TOMBSTONE not in values.values():
            self.other_reader.read_multi(100)
        return self.inner.add_multi(values, expire_seconds)


def test_the_rest_of_a_frame_turned_away_until_its_reader_gives_up_is_counted_lost(make_queue, cache, clock, caplog):
    """No caller learns of these messages, unlike a write that gives up: of the slots each
    was turned away from, one stays its loss and the others count retried."""
    queue = make_queue()
    queue.write_multi(list(range(5)))
    reader = Queue("q", AnotherReaderTombstonesEveryRest(cache, clock), clock=clock, sleep=lambda seconds: None)
    with caplog.at_level(logging.WARNING, logger="clickqueue"):
        assert reader.read_multi(2) == [0, 1]
    assert "could not store 3 messages again" in caplog.text
    assert drain(queue) == []
    stats = queue.stats()
    assert (stats.written, stats.read, stats.retried, stats.lost) == (5, 2, (MAX_WRITE_ATTEMPTS - 1) * 3, 3)


# -- slots a frame spans ---------------------------------------------------------------------


def test_slots_a_frame_spans_are_neither_tombstoned_nor_counted(make_queue, cache):
    queue = make_queue()
    queue.write_multi(list(range(4)))
    assert queue.read_multi() == [0, 1, 2, 3]
    assert stored_slots(cache, queue, range(2, 5)) == {}
    assert (queue.stats().skipped, queue.stats().lost) == (0, 0)


def test_a_frame_turned_away_by_a_reader_that_claimed_part_of_its_slots_settles_the_rest(make_queue, cache, clock):
    """The reader reaches the writer's first two slots before the frame is stored: it
    tombstones them; the writer's count claims the other three (next in line, empty)
    and counts all five as retried once its messages are stored elsewhere."""
    reader = make_queue()
    reader.write("first")
    seen = []
    writer = Queue("q", PauseAfterIncr(cache, lambda: seen.append(reader.read_multi(3))), clock=clock)
    writer.write_multi(list(range(5)))  # slots 2 to 6, turned away from 2 and 3
    assert seen == [["first"]]
    assert stored_slots(cache, reader, range(2, 4)) == {2: TOMBSTONE, 3: TOMBSTONE}
    stats = reader.stats()
    assert (stats.skipped, stats.retried, stats.lost, stats.depth) == (5, 5, 0, 5)
    assert drain(reader) == list(range(5))
    assert reader.stats().lost == 0


def test_a_counter_repaired_after_frames_goes_above_the_last_slot_a_frame_spans(make_queue, cache):
    queue = make_queue()
    queue.write_multi(list(range(3 * FRAME_MESSAGES)))  # frames in slots 1, 33 and 65, spanning to 96
    cache.delete_multi([queue.keys.write_counter(0)])
    queue.write("after the repair")
    assert cache.get_multi([queue.keys.slot(0, 3 * FRAME_MESSAGES + REPAIR_MARGIN + 1)]) == {
        queue.keys.slot(0, 3 * FRAME_MESSAGES + REPAIR_MARGIN + 1): encode_message("after the repair")
    }
    assert drain(queue) == [*range(3 * FRAME_MESSAGES), "after the repair"]


# -- frames that overlap (a counter that went back) ------------------------------------------


@pytest.mark.parametrize("call", ["read_multi", "lease"])
def test_a_frame_overlapping_an_older_message_is_read_and_the_one_that_does_not_fit_is_moved(make_queue, cache, call):
    queue = make_queue()
    queue.write("a")
    cache.add_multi({queue.keys.slot(0, 4): encode_message("older")})  # left from before the counter went back
    queue.write_multi(["b", "c", "d", "e", "f"])  # slots 2 to 6: its frame's add checks slot 2 only
    first = queue.read_multi(6) if call == "read_multi" else queue.lease(6, seconds=30).messages
    assert first == ["a", "b", "c", "d", "e", "f"]
    assert drain(queue) == ["older"]


def test_lost_reads_below_zero_while_slots_of_a_turned_away_frame_wait_to_be_claimed(make_queue, cache, clock):
    """A documented limit: a reader claimed slot 2 (and tombstoned it) while the writer
    of slots 2 to 6 paused; a tombstone also sits in slot 4, which nobody claimed. The
    writer counts all five retried at once; slot 3 it settles itself, 4 to 6 are counted
    skipped only by the claim that reaches them."""
    queue = make_queue()
    queue.write("first")
    assert queue.read() == "first"

    def a_reader_claims_slot_2_and_slot_4_is_tombstoned():
        raw, token = cache.gets_multi([queue.keys.state])[queue.keys.state]
        state = ReadState.from_bytes(queue.keys.state, raw, 1)
        state.claim([6], max_items=1)
        state.counts.add(skipped=1)
        assert cache.cas_multi({queue.keys.state: (state.to_bytes(), token)})[queue.keys.state]
        cache.add_multi({queue.keys.slot(0, 2): TOMBSTONE, queue.keys.slot(0, 4): TOMBSTONE})

    Queue("q", PauseAfterIncr(cache, a_reader_claims_slot_2_and_slot_4_is_tombstoned), clock=clock).write_multi(
        list(range(5))
    )
    stats = queue.stats()
    assert (stats.skipped, stats.retried, stats.lost) == (2, 5, -3)
    assert drain(queue) == list(range(5))
    stats = queue.stats()
    assert (stats.skipped, stats.retried, stats.lost, stats.read, stats.written) == (5, 5, 0, 6, 6)


def test_a_leases_message_ids_name_each_messages_own_slot_and_stay_when_it_is_delivered_again(make_queue, clock):
    queue = make_queue()
    queue.write("a")
    queue.write_multi(["b", "c", "d"])  # one frame, in slot 2
    first = queue.lease(10, seconds=30)
    assert first.message_ids == queue.keys.slots(0, [1, 2, 3, 4])
    assert first.message_keys == queue.keys.slots(0, [1, 2]), "the slots holding them"
    clock.advance(31)
    assert queue.lease(10, seconds=30).message_ids == first.message_ids


LEASE_ID = "0" * 32
OURS = frame_of("a", "b", "c")
READ_BACK = {
    "nothing": (None, False),
    "our-frame": (OURS, True),
    "our-frame-leased": (leased_value(LEASE_ID, OURS), True),
    "its-first-message-leased": (leased_value(LEASE_ID, frame_of("a")), True),
    "its-first-two-messages-leased": (leased_value(LEASE_ID, frame_of("a", "b")), True),
    "another-frame-as-short-leased": (leased_value(LEASE_ID, frame_of("x", "y")), False),
    "a-longer-frame-that-starts-as-ours-leased": (leased_value(LEASE_ID, frame_of("a", "b", "c", "d")), False),
    "an-empty-frame-leased": (leased_value(LEASE_ID, frame_of()), False),
    "a-taken-mark": (TAKEN, False),
}


@pytest.mark.parametrize(("value", "ours"), READ_BACK.values(), ids=READ_BACK.keys())
def test_a_slot_read_back_after_a_lost_reply_holds_our_frame_only_as_written_or_leased_from_its_start(value, ours):
    """What a writer whose ``add`` went unanswered counts as stored: its frame, or a
    lease's mark of it or of its first part (a reader took that part)."""
    assert holds(value, OURS) is ours
