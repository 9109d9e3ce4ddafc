"""The read state's rules, without a cache: claims, gaps, runs, leases, encoding."""

import json
import random

import pytest

from clickqueue import ContentionError, CorruptStateError, ShardMismatchError
from clickqueue.keys import QueueKeys
from clickqueue.state import (
    MAX_CAS_ATTEMPTS,
    MAX_STATE_BYTES,
    LeaseRecord,
    ReadState,
    SlotRange,
    StateStore,
    cas_pause_seconds,
)

KEY = "cq:q:state"


def state(claimed, gaps=(), seen=None):
    result = ReadState.starting_at(1, claimed, gaps)
    result.seen = list(seen or claimed)
    return result


# -- claims ------------------------------------------------------------------------------------


def test_claim_takes_at_most_max_items_below_the_counters():
    s = state([0])
    assert s.claim([10], max_items=4) == [SlotRange(0, 1, 4)]
    assert s.claim([10], max_items=100) == [SlotRange(0, 5, 10)]
    assert s.claim([10], max_items=100) == []
    assert s.claimed == [10]


def test_claim_records_the_highest_counter_it_saw():
    s = state([0, 0])
    s.claim([5, 3], max_items=1)
    assert s.seen == [5, 3]
    s.claim([4, 2], max_items=1)
    assert s.seen == [5, 3], "a counter read lower than before does not lower what was seen"


def test_claim_gives_every_shard_with_a_backlog_a_fair_share():
    s = state([0, 0, 0])
    ranges = s.claim([1000, 2, 10], max_items=30)
    assert sorted((r.shard, len(r)) for r in ranges) == [(0, 18), (1, 2), (2, 10)]


def test_claim_of_one_item_goes_to_the_fullest_shard():
    assert state([0, 0]).claim([3, 7], max_items=1) == [SlotRange(1, 1, 1)]


def test_plan_claim_names_the_last_slot_per_shard_and_changes_nothing():
    s = state([0, 5])
    assert s.plan_claim([10, 6], max_items=6) == {1: 6, 0: 5}
    assert (s.claimed, s.seen) == ([0, 5], [0, 5])


def test_claim_to_ends_cut_shorter_than_planned_claims_only_to_them_and_skips_a_shard_cut_to_nothing():
    s = state([0, 5], gaps=[SlotRange(0, 3, 9, in_gap=True)])
    assert s.claim([10, 8], max_items=8, ends={0: 4, 1: 5}) == [SlotRange(0, 1, 2), SlotRange(0, 3, 4, True)]
    assert (s.claimed, s.seen) == ([4, 5], [10, 8])
    assert s.gaps == [SlotRange(0, 3, 9, True)], "a gap the cut claim did not pass stays"


def test_in_gap_tells_the_slots_of_a_gap():
    s = state([0], gaps=[SlotRange(0, 3, 5, in_gap=True)])
    assert [s.in_gap(0, number) for number in (2, 3, 5, 6)] == [False, True, True, False]
    assert not state([0, 0], gaps=[SlotRange(0, 3, 5, in_gap=True)]).in_gap(1, 4)


def test_claim_splits_ranges_at_gaps_and_drops_gaps_claimed_past():
    s = state([0], gaps=[SlotRange(0, 3, 5, in_gap=True)])
    assert s.claim([8], max_items=8) == [SlotRange(0, 1, 2), SlotRange(0, 3, 5, True), SlotRange(0, 6, 8)]
    assert s.gaps == []


def test_claim_keeps_a_gap_not_yet_claimed_past():
    s = state([0], gaps=[SlotRange(0, 3, 5, in_gap=True)])
    assert s.claim([8], max_items=4) == [SlotRange(0, 1, 2), SlotRange(0, 3, 4, True)]
    assert s.gaps == [SlotRange(0, 3, 5, True)]


def test_claim_from_the_last_slot_of_a_gap_counts_that_slot_in_the_gap():
    s = state([4], gaps=[SlotRange(0, 3, 5, in_gap=True)])
    assert s.claim([8], max_items=8) == [SlotRange(0, 5, 5, True), SlotRange(0, 6, 8)]


def test_used_through_is_the_highest_of_claimed_seen_and_gap_ends():
    s = state([4, 0], gaps=[SlotRange(1, 1, 1000, in_gap=True)], seen=[9, 0])
    assert (s.used_through(0), s.used_through(1)) == (9, 1000)


def test_add_gap_starts_above_the_claims_and_refuses_overlaps_or_nothing_left():
    s = state([10])
    assert s.add_gap(SlotRange(0, 5, 20, in_gap=True)) is True
    assert s.gaps == [SlotRange(0, 11, 20, True)]
    assert s.add_gap(SlotRange(0, 15, 30, in_gap=True)) is False
    assert s.add_gap(SlotRange(0, 1, 10, in_gap=True)) is False


def test_unclaimed_gap_slots_count_only_what_lies_above_the_claims():
    s = state([12, 0], gaps=[SlotRange(0, 11, 20, True), SlotRange(1, 1, 5, True)])
    assert s.unclaimed_gap_slots() == 8 + 5


# -- runs settled in bulk ------------------------------------------------------------------------


def test_runs_to_settle_in_gaps_only_stop_at_the_gap_end():
    s = state([10, 0], gaps=[SlotRange(0, 11, 2000, True)])
    assert s.runs_to_settle([5000, 50], limit=1000, gaps_only=True) == [[SlotRange(0, 11, 1010, True)]]


def test_runs_to_settle_in_gaps_only_start_at_the_next_unclaimed_slot_even_a_gap_s_last():
    s = state([4], gaps=[SlotRange(0, 3, 5, True)])
    assert s.runs_to_settle([50], limit=1000, gaps_only=True) == [[SlotRange(0, 5, 5, True)]]


def test_runs_to_settle_in_gaps_only_take_no_slot_of_a_shard_outside_its_own_gaps():
    s = state([0, 0], gaps=[SlotRange(1, 1, 5, True)])
    assert s.runs_to_settle([50, 50], limit=1000, gaps_only=True) == [[SlotRange(1, 1, 5, True)]]


def test_runs_to_settle_leave_the_head_of_a_queue_to_its_writers():
    s = state([0, 0])
    assert s.runs_to_settle([500, 3000], limit=1000, gaps_only=False) == [[SlotRange(1, 1, 1000)]]


def test_runs_to_settle_share_the_limit_between_shards_and_split_at_gaps():
    s = state([0, 0], gaps=[SlotRange(0, 100, 120, True)])
    runs = s.runs_to_settle([5000, 5000], limit=400, gaps_only=False)
    assert runs == [[SlotRange(0, 1, 99), SlotRange(0, 100, 120, True), SlotRange(0, 121, 200)], [SlotRange(1, 1, 200)]]


def test_settle_run_claims_and_counts_skipped_and_gapped():
    s = state([0], gaps=[SlotRange(0, 1, 3, True)])
    s.settle_run(0, skipped=2, gapped=3)
    assert (s.claimed, s.counts.skipped, s.counts.gapped, s.gaps) == ([5], 2, 3, [])


# -- leases --------------------------------------------------------------------------------------


def lease(deadline, slots=1, attempt=1):
    return LeaseRecord([SlotRange(0, 1, slots)], deadline, attempt, (0, 0), "holder")


def test_first_expired_lease_is_the_longest_expired_that_fits():
    s = state([0])
    s.leases = {"a" * 32: lease(50), "b" * 32: lease(40, slots=10), "c" * 32: lease(45), "d" * 32: lease(99)}
    assert s.first_expired_lease(now=60, max_slots=5) == "c" * 32
    assert s.first_expired_lease(now=60, max_slots=10) == "b" * 32
    assert s.first_expired_lease(now=30, max_slots=10) is None


def test_leased_slots_sum_every_lease():
    s = state([0])
    s.leases = {"a" * 32: lease(1, slots=3), "b" * 32: LeaseRecord([SlotRange(0, 1, 2), SlotRange(1, 7, 7)], 1, 1, (0, 0), "h")}
    assert s.leased_slots() == 6


# -- encoding ------------------------------------------------------------------------------------


def test_state_round_trips_through_its_bytes():
    s = state([3, 4], gaps=[SlotRange(1, 9, 20, True)], seen=[5, 6])
    s.leases["e" * 32] = LeaseRecord([SlotRange(0, 1, 3), SlotRange(1, 5, 5, True)], 12.5, 2, (1, 1), "0123456789abcdef")
    s.counts.skipped, s.counts.resets = 7, 2
    assert ReadState.from_bytes(KEY, s.to_bytes(), shards=2) == s


def valid():
    return json.loads(state([0]).to_bytes())


CORRUPT = {
    "not json": b"not json",
    "pickle": b"\x80\x04\x95\x00",
    "nested 10,000 deep": b"[" * 10_000 + b"]" * 10_000,
    "a list": b"[]",
    "a missing field": json.dumps({k: v for k, v in valid().items() if k != "seen"}).encode(),
    "a float counter": json.dumps({**valid(), "claimed": [1.5]}).encode(),
    "a bool counter": json.dumps({**valid(), "claimed": [True]}).encode(),
    "no shards": json.dumps({**valid(), "claimed": [], "seen": [], "base": []}).encode(),
    "lengths that differ": json.dumps({**valid(), "seen": [0, 0]}).encode(),
    "a bad lease id": json.dumps({**valid(), "leases": {"x": [1, 1, [[0, 1, 1, 0]], [0, 0], "h"]}}).encode(),
    "a lease id of 32 characters not hex": json.dumps(
        {**valid(), "leases": {"X" * 32: [1, 1, [[0, 1, 1, 0]], [0, 0], "h"]}}
    ).encode(),
    "a short range": json.dumps({**valid(), "gaps": [[0, 1]]}).encode(),
    "a missing count": json.dumps({**valid(), "counts": {"skipped": 0}}).encode(),
}


@pytest.mark.parametrize("raw", list(CORRUPT.values()), ids=list(CORRUPT))
def test_a_value_this_module_did_not_write_is_corrupt(raw):
    with pytest.raises(CorruptStateError) as raised:
        ReadState.from_bytes(KEY, raw, shards=1)
    assert raised.value.key == KEY


def test_a_state_of_another_shard_count_is_a_mismatch_not_corruption():
    with pytest.raises(ShardMismatchError):
        ReadState.from_bytes(KEY, state([0, 0]).to_bytes(), shards=3)


# -- the store -----------------------------------------------------------------------------------


def test_encode_drops_the_oldest_gaps_when_the_state_would_outgrow_its_budget(testbed):
    store = StateStore(None, QueueKeys("q"), shards=1, check_budget=lambda: None, pause_after_failed_cas=lambda failed: None)
    s = state([0], gaps=[SlotRange(0, n * 10 + 1, n * 10 + 5, True) for n in range(30_000)])
    encoded = store.encode(s)
    assert len(encoded) <= MAX_STATE_BYTES
    assert s.gaps[-1] == SlotRange(0, 299_991, 299_995, True), "the newest gaps stay"


class ScriptedCas:
    """A cache whose state CAS answers from a script: True, False or None (unknown)."""

    def __init__(self, answers, raw=None):
        self.answers = list(answers)
        self.raw = raw if raw is not None else state([0]).to_bytes()
        self.cas_calls = 0

    def gets_multi(self, keys):
        return {KEY: (self.raw, "token")} if self.raw else {}

    def cas_multi(self, values, expire_seconds=0):
        self.cas_calls += 1
        answer = self.answers.pop(0)
        if answer:
            self.raw = values[KEY][0]
        return {KEY: answer}


def bump(s):
    s.counts.requeued += 1
    return True


def store_on(cache):
    return StateStore(cache, QueueKeys("q"), shards=1, check_budget=lambda: None, pause_after_failed_cas=lambda failed: None)


def test_change_retries_a_lost_cas_until_it_lands():
    cache = ScriptedCas([False, False, True])
    assert store_on(cache).change(bump) is True
    assert cache.cas_calls == 3
    assert ReadState.from_bytes(KEY, cache.raw, 1).counts.requeued == 1


def test_change_gives_up_with_contention_error_after_its_attempts():
    cache = ScriptedCas([False] * MAX_CAS_ATTEMPTS)
    with pytest.raises(ContentionError) as raised:
        store_on(cache).change(bump)
    assert cache.cas_calls == MAX_CAS_ATTEMPTS
    assert (raised.value.key, raised.value.attempts) == (KEY, MAX_CAS_ATTEMPTS)


def test_change_pauses_after_each_failed_compare_and_set_counting_them():
    pauses = []
    store = StateStore(
        ScriptedCas([False, None, False, True]), QueueKeys("q"), shards=1, check_budget=lambda: None,
        pause_after_failed_cas=pauses.append,
    )
    assert store.change(bump) is True
    assert pauses == [1, 2, 3]


class Bounds:
    """An rng whose ``uniform`` returns the interval it was asked for."""

    def uniform(self, low, high):
        return (low, high)


@pytest.mark.parametrize(
    "failed_attempts, bound_seconds",
    [(1, 0.001), (2, 0.002), (3, 0.004), (5, 0.016), (6, 0.02), (MAX_CAS_ATTEMPTS, 0.02)],
)
def test_the_pause_after_a_failed_cas_is_random_up_to_a_bound_that_doubles_to_its_cap(failed_attempts, bound_seconds):
    assert cas_pause_seconds(failed_attempts, Bounds()) == (0, bound_seconds)


class Highest:
    """An rng whose ``uniform`` returns the top of the interval."""

    def uniform(self, low, high):
        return high


def test_the_pauses_of_a_call_that_loses_every_cas_add_up_to_at_most_1_931_seconds():
    assert sum(cas_pause_seconds(n, Highest()) for n in range(1, MAX_CAS_ATTEMPTS + 1)) == pytest.approx(1.931)


def test_the_pause_after_a_failed_cas_is_drawn_from_the_rng():
    draws = {cas_pause_seconds(4, random.Random(seed)) for seed in range(50)}
    assert len(draws) == 50 and all(0 <= draw <= 0.008 for draw in draws)


def test_change_without_a_landed_check_tries_an_unanswered_cas_again():
    cache = ScriptedCas([None, True])
    assert store_on(cache).change(bump) is True
    assert cache.cas_calls == 2


def test_change_asks_landed_after_an_unanswered_cas_and_stops_if_it_did():
    cache = ScriptedCas([None, True])
    asked = []
    assert store_on(cache).change(bump, landed=lambda s: asked.append(s) or True) is True
    assert cache.cas_calls == 1
    assert [type(s) for s in asked] == [ReadState], "landed judges the state read after the unanswered CAS"


@pytest.mark.parametrize("raw", [b"", b"not a state"], ids=["no state", "corrupt state"])
def test_change_reports_false_when_there_is_no_state_to_change(raw):
    cache = ScriptedCas([], raw=raw)
    assert store_on(cache).change(bump) is False
    assert cache.cas_calls == 0


def test_change_that_declines_writes_nothing():
    cache = ScriptedCas([])
    assert store_on(cache).change(lambda s: False) is False
    assert cache.cas_calls == 0


def test_a_gap_of_one_slot_is_recorded():
    state = ReadState.starting_at(1, [0])
    assert state.add_gap(SlotRange(0, 5, 5)) is True
    assert state.gaps == [SlotRange(0, 5, 5, in_gap=True)]


def test_a_gap_that_starts_on_the_last_slot_of_a_recorded_gap_is_refused():
    state = ReadState.starting_at(1, [0])
    state.add_gap(SlotRange(0, 3, 5))
    assert state.add_gap(SlotRange(0, 5, 8)) is False
    assert state.gaps == [SlotRange(0, 3, 5, in_gap=True)]
