"""Each recovery path on its own, on the App Engine memcache stub."""

import pytest

from tests.support.seams import CacheWrapper

from clickqueue import CountingCache, wrap_client
from clickqueue.keys import QueueKeys
from clickqueue.recovery import (
    GALLOP_STEPS,
    RECOVERY_SLOTS,
    REPAIR_MARGIN,
    Recovery,
    decimal,
)
from clickqueue.state import ReadState, SlotRange, StateStore

KEYS = QueueKeys("q")


@pytest.fixture
def cache(testbed):
    return CountingCache(wrap_client(None))


def recovery(cache, shards=1, seen_before=False):
    store = StateStore(cache, KEYS, shards, check_budget=lambda: None, pause_after_failed_cas=lambda failed: None)
    return Recovery(cache, KEYS, store, seen_before=lambda: seen_before, check_budget=lambda: None)


def stored_state(cache, shards=1):
    return ReadState.from_bytes(KEYS.state, cache.get_multi([KEYS.state])[KEYS.state], shards)


def store_slots(cache, numbers, shard=0):
    cache.add_multi({key: b'"m"' for key in KEYS.slots(shard, numbers)})


def claim_read(cache, shards=1):
    return cache.gets_multi([KEYS.state, *(KEYS.write_counter(s) for s in range(shards))])


@pytest.mark.parametrize(
    ("raw", "value"), [(None, None), (b"0", 0), (b"42", 42), (b"-1", None), (b"4 2", None), (b"", None), (b"9" * 21, None)]
)
def test_decimal_reads_only_plain_counters(raw, value):
    assert decimal(raw) == value


# -- a missing state -----------------------------------------------------------------------------


def test_a_brand_new_queue_gets_its_counters_and_marker_after_its_state_and_no_reset(cache):
    recovery(cache, shards=2).recreate_state(claim_read(cache, 2))
    state = stored_state(cache, 2)
    assert (state.claimed, state.gaps, state.counts.resets, state.generation) == ([0, 0], [], 0, 1)
    assert cache.get_multi([KEYS.write_counter(0), KEYS.write_counter(1)]) == {
        KEYS.write_counter(0): b"0",
        KEYS.write_counter(1): b"0",
    }
    assert set(cache.get_multi(KEYS.generation_markers).values()) == {b"1"}


def test_a_lost_state_restarts_below_the_counter_as_a_gap_and_is_a_reset(cache):
    cache.add_multi({KEYS.write_counter(0): str(RECOVERY_SLOTS + 50).encode()})
    recovery(cache).recreate_state(claim_read(cache))
    state = stored_state(cache)
    assert state.claimed == [50]
    assert state.gaps == [SlotRange(0, 51, RECOVERY_SLOTS + 50, in_gap=True)]
    assert state.counts.resets == 1


def test_a_lost_state_with_its_counter_gone_too_starts_below_the_last_stored_slot(cache):
    cache.add_multi({marker: b"3" for marker in KEYS.generation_markers[:1]})
    store_slots(cache, range(1000, 5100))  # a backlog: slots below 1000 were read
    recovery(cache).recreate_state(claim_read(cache))
    state = stored_state(cache)
    assert (state.claimed, state.generation, state.counts.resets) == ([5099 - RECOVERY_SLOTS], 4, 3)
    assert state.gaps == [SlotRange(0, 5100 - RECOVERY_SLOTS, 5099, in_gap=True)]
    assert set(cache.get_multi(KEYS.generation_markers).values()) == {b"4"}, "every marker copy is brought up to date"


def test_a_process_that_used_the_queue_counts_a_flush_as_a_reset(cache):
    recovery(cache, seen_before=True).recreate_state(claim_read(cache))
    assert stored_state(cache).counts.resets == 1
    assert cache.get_multi([KEYS.write_counter(0)]) == {}, "its counter is repaired with a margin, not recreated at 0"


def test_recreating_leaves_a_state_created_meanwhile_alone(cache):
    found = claim_read(cache)
    cache.add_multi({KEYS.state: ReadState.starting_at(7, [3]).to_bytes()})
    recovery(cache).recreate_state(found)
    assert stored_state(cache).generation == 7


def test_a_corrupt_state_is_replaced_by_compare_and_set_and_is_a_reset(cache):
    cache.add_multi({KEYS.state: b"garbage", KEYS.write_counter(0): b"10"})
    found = claim_read(cache)
    recovery(cache).replace_corrupt_state(found[KEYS.state][1], found)
    state = stored_state(cache)
    assert (state.claimed, state.counts.resets) == ([0], 1)


def test_a_corrupt_state_alone_is_a_reset_even_in_a_process_that_never_saw_the_queue(cache):
    """Its counter and markers gone too, the foreign state still shows a queue was there."""
    cache.add_multi({KEYS.state: b"garbage"})
    found = claim_read(cache)
    recovery(cache, seen_before=False).replace_corrupt_state(found[KEYS.state][1], found)
    assert stored_state(cache).counts.resets == 1


def test_a_replaced_corrupt_state_marks_its_generation_in_every_marker(cache):
    cache.add_multi({KEYS.state: b"garbage", KEYS.generation_markers[0]: b"4"})
    found = claim_read(cache)
    recovery(cache).replace_corrupt_state(found[KEYS.state][1], found)
    assert stored_state(cache).generation == 5
    assert cache.get_multi(KEYS.generation_markers) == dict.fromkeys(KEYS.generation_markers, b"5")


def test_a_corrupt_state_changed_meanwhile_is_not_replaced(cache):
    cache.add_multi({KEYS.state: b"garbage"})
    found = claim_read(cache)
    token = cache.gets_multi([KEYS.state])[KEYS.state][1]
    cache.cas_multi({KEYS.state: (ReadState.starting_at(9, [0]).to_bytes(), token)})
    recovery(cache).replace_corrupt_state(found[KEYS.state][1], found)
    assert stored_state(cache).generation == 9


# -- write counters ------------------------------------------------------------------------------


def new_queue(cache, shards=1):
    recovery(cache, shards).recreate_state(claim_read(cache, shards))


def counter(cache, shard=0):
    return decimal(cache.get_multi([KEYS.write_counter(shard)]).get(KEYS.write_counter(shard)))


def test_a_missing_counter_goes_above_the_last_stored_slot_plus_the_margin_recorded_as_a_gap(cache):
    new_queue(cache)
    store_slots(cache, range(1, 41))
    cache.delete_multi([KEYS.write_counter(0)])
    recovery(cache).repair_counters({0: 0})
    assert counter(cache) == 40 + REPAIR_MARGIN
    state = stored_state(cache)
    assert (state.gaps, state.counts.resets) == ([SlotRange(0, 41, 40 + REPAIR_MARGIN, True)], 1)


def test_a_counter_not_made_yet_by_a_queue_still_being_created_starts_at_zero(cache):
    """The creator adds the state, then counters, then the generation marker: seen in
    between, a missing counter of a shard with nothing claimed or stored is new, not lost."""
    cache.add_multi({KEYS.state: ReadState.starting_at(1, [0]).to_bytes()})
    recovery(cache).repair_counters({0: 0})
    assert counter(cache) == 0
    state = stored_state(cache)
    assert (state.gaps, state.counts.resets) == ([], 0)


def test_a_counter_lost_once_the_queue_was_created_gets_its_margin_even_when_nothing_is_stored(cache):
    new_queue(cache)
    cache.delete_multi([KEYS.write_counter(0)])
    recovery(cache).repair_counters({0: 0})
    assert counter(cache) == REPAIR_MARGIN
    assert stored_state(cache).counts.resets == 1


def test_a_counter_in_place_is_left_alone(cache):
    new_queue(cache)
    store_slots(cache, range(1, 6))
    cache.incr(KEYS.write_counter(0), 5)
    recovery(cache).repair_counters({0: 0})
    assert (counter(cache), stored_state(cache).counts.resets) == (5, 0)


@pytest.mark.parametrize("value", [b"garbage", b"-5", b"\x80\x04pickle"])
def test_a_foreign_counter_is_replaced_by_compare_and_set(cache, value):
    new_queue(cache)
    token = cache.gets_multi([KEYS.write_counter(0)])[KEYS.write_counter(0)][1]
    cache.cas_multi({KEYS.write_counter(0): (value, token)})
    recovery(cache).repair_counters({0: 0})
    assert counter(cache) == REPAIR_MARGIN
    assert stored_state(cache).counts.resets == 1


class WriterDuringTheProbe(CacheWrapper):
    """Another writer takes slot 1 and stores it while the repair probes the slots."""

    def get_multi(self, keys):
        if KEYS.slots(0, [1])[0] in keys and self.inner.incr(KEYS.write_counter(0), 1) == 1:
            store_slots(self.inner, [1])
        return self.inner.get_multi(keys)


def test_a_counter_that_moved_on_while_the_repair_probed_is_left_alone(cache):
    """Read before the other writer's incr, the counter looks behind the slot it
    stored; on the stub incr keeps the CAS id, so only the read after the probe
    tells that nothing went back."""
    new_queue(cache)
    recovery(WriterDuringTheProbe(cache)).repair_counters({0: 0})
    assert (counter(cache), stored_state(cache).counts.resets, stored_state(cache).gaps) == (1, 0, [])


def test_a_counter_behind_the_claims_goes_above_them(cache):
    new_queue(cache)
    token = cache.gets_multi([KEYS.state])[KEYS.state][1]
    claimed = ReadState.starting_at(1, [500])
    cache.cas_multi({KEYS.state: (claimed.to_bytes(), token)})
    recovery(cache).repair_counters({0: 0})
    assert counter(cache) == 500 + REPAIR_MARGIN


def test_a_slot_found_taken_lifts_the_counter_above_the_stored_run_it_is_in(cache):
    new_queue(cache)
    cache.incr(KEYS.write_counter(0), 10)
    store_slots(cache, range(11, 300))  # written under a counter that went back
    recovery(cache).repair_counters({0: 11})
    assert counter(cache) == 299 + REPAIR_MARGIN


def test_repair_without_a_state_recreates_the_state_first(cache):
    cache.add_multi({KEYS.write_counter(0): b"7"})
    recovery(cache).repair_counters({0: 0})
    assert stored_state(cache).claimed == [0]


def test_repair_with_a_corrupt_state_replaces_the_state_first(cache):
    cache.add_multi({KEYS.state: b"garbage", KEYS.write_counter(0): b"7"})
    recovery(cache).repair_counters({0: 0})
    assert stored_state(cache).counts.resets == 1


# -- finding the last stored slot ---------------------------------------------------------------


@pytest.mark.parametrize("top", [1, 15, 16, 17, 100, 1000, 12_345, 1_000_000, 10_000_000])
def test_last_stored_slot_is_found_in_a_few_calls(cache, top):
    first = max(1, top - 40)
    store_slots(cache, range(first, top + 1))
    cache.calls.clear()
    assert recovery(cache).last_stored_slots({0: first - 1}) == {0: top}
    assert cache.total() <= 12


def test_last_stored_slot_steps_over_holes_shorter_than_a_window(cache):
    store_slots(cache, [n for n in range(1, 200) if n % 10])
    assert recovery(cache).last_stored_slots({0: 0}) == {0: 199}


def test_last_stored_slot_may_miss_a_short_run_far_above_the_start(cache):
    """A probe, not a scan: a run of 100 slots 5,000 above the start falls between
    windows. Missing it costs collisions later (the counter is lifted then), never safety."""
    store_slots(cache, range(5000, 5100))
    assert recovery(cache).last_stored_slots({0: 0}) == {0: 0}


def test_last_stored_slot_is_the_start_when_nothing_is_stored_above_it(cache):
    store_slots(cache, range(1, 10))
    cache.calls.clear()
    assert recovery(cache).last_stored_slots({0: 20}) == {0: 20}
    assert cache.calls == {"get_multi": 1}


def test_counters_of_every_shard_are_repaired_together_in_a_few_calls(cache):
    new_queue(cache, shards=64)
    for shard in range(64):
        store_slots(cache, range(1, shard + 2), shard=shard)
    cache.delete_multi([KEYS.write_counter(shard) for shard in range(64)])
    cache.calls.clear()
    recovery(cache, shards=64).repair_counters(dict.fromkeys(range(64), 0))
    calls = cache.total()
    assert [counter(cache, shard) for shard in range(64)] == [shard + 1 + REPAIR_MARGIN for shard in range(64)]
    assert stored_state(cache, shards=64).counts.resets == 64
    assert calls <= 8


def test_the_gallop_reaches_far(cache):
    assert 16 * (2 ** (GALLOP_STEPS - 1)) > 10**10
