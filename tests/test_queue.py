"""Queue behaviour, one behaviour per test, on every backend (see ``cache_client``)."""

import json
import pickle

import pytest
from tests.support.seams import CacheWrapper, PauseAfterIncr, RecordReads, drain

from clickqueue import (
    MAX_BATCH_MESSAGES,
    MAX_CLAIM_ITEMS,
    MAX_MESSAGE_BYTES,
    BatchTooLargeError,
    CacheUnavailableError,
    ContentionError,
    CorruptStateError,
    GroupWriteError,
    InvalidArgumentError,
    MessageEncodingError,
    MessageTooLargeError,
    Queue,
    QueueKeys,
    ShardMismatchError,
    TooManyLeasesError,
    WriteFailedError,
    WriteIncompleteError,
)
from clickqueue.codec import FRAME_MESSAGES, FRAME_PREFIX, LEASE_PREFIX, MAX_MESSAGE_DEPTH, TAKEN, TOMBSTONE, frame_payload, taken_value
from clickqueue.claiming import MIN_READ_AHEAD_PER_SHARD
from clickqueue.leases import MAX_LEASE_SECONDS


# -- writing and reading ---------------------------------------------------------------------


def test_read_of_an_empty_queue_is_none(make_queue):
    assert make_queue().read() is None
    assert make_queue().read_multi() == []


def test_written_message_is_read_once(make_queue):
    queue = make_queue()
    queue.write({"id": 1})
    assert queue.read() == {"id": 1}
    assert queue.read() is None


def test_read_takes_one_message_and_leaves_the_next(make_queue):
    queue = make_queue()
    queue.write_multi(["first", "second"])
    assert queue.read() == "first"
    assert queue.read() == "second"
    assert queue.stats().lost == 0


def test_single_shard_reads_in_write_order(make_queue):
    queue = make_queue()
    for n in range(5):
        queue.write(n)
    queue.write_multi([5, 6, 7])
    assert queue.read_multi(100) == [0, 1, 2, 3, 4, 5, 6, 7]


def test_read_multi_returns_at_most_max_items(make_queue):
    queue = make_queue()
    queue.write_multi(list(range(25)))
    assert queue.read_multi(10) == list(range(10))
    assert queue.read_multi(10) == list(range(10, 20))
    assert queue.read_multi(10) == list(range(20, 25))


@pytest.mark.parametrize(
    "message",
    [None, True, 0, -7, 2.5, "", "clicks ✓ ünïcode", [], [1, [2, {"a": None}]], {"type": "click", "item": "x"}],
)
def test_json_values_round_trip(make_queue, message):
    queue = make_queue()
    queue.write(message)
    assert queue.read_multi() == [message]


def test_queues_with_different_names_are_separate(make_queue):
    clicks, views = make_queue("clicks"), make_queue("views")
    clicks.write("c")
    views.write("v")
    assert views.read_multi() == ["v"]
    assert clicks.read_multi() == ["c"]


def test_sharded_queue_spreads_writes_and_reads_every_shard(make_queue, cache):
    queue = make_queue(shards=4)
    for n in range(8):
        queue.write(n)
    counters = cache.get_multi([queue.keys.write_counter(shard) for shard in range(4)])
    assert sorted(int(value) for value in counters.values()) == [2, 2, 2, 2]
    assert sorted(queue.read_multi(100)) == list(range(8))


def test_messages_within_one_shard_keep_their_order(make_queue):
    queue = make_queue(shards=3)
    queue.write_multi(list(range(50)))
    assert queue.read_multi(100) == list(range(50))


def test_requeued_messages_come_back_and_are_counted(make_queue):
    queue = make_queue()
    queue.write_multi(["a", "b"])
    taken = queue.read_multi()
    queue.requeue(taken)
    assert queue.read_multi() == ["a", "b"]
    assert queue.stats().requeued == 2


def test_each_requeue_adds_to_the_requeued_count(make_queue):
    queue = make_queue()
    queue.write_multi(["a", "b", "c"])
    queue.requeue(queue.read_multi(2))
    queue.requeue(queue.read_multi(1))
    assert queue.stats().requeued == 3


def test_read_multi_leaves_expiring_taken_marks_not_messages(make_queue, cache):
    queue = make_queue()
    queue.write("a")
    queue.write_multi(["b", "c"])  # a frame in slot 2, spanning slot 3
    assert queue.read_multi() == ["a", "b", "c"]
    assert cache.get_multi(queue.keys.slots(0, [1, 2, 3])) == {queue.keys.slot(0, 1): TAKEN, queue.keys.slot(0, 2): taken_value(2)}


def test_write_multi_stores_its_messages_as_frames_in_the_first_slot_of_each(make_queue, cache):
    queue = make_queue()
    queue.write_multi(list(range(FRAME_MESSAGES + 1)))
    slots = queue.keys.slots(0, range(1, FRAME_MESSAGES + 3))
    stored = cache.get_multi(slots)
    assert stored == {
        queue.keys.slot(0, 1): frame_payload(list(range(FRAME_MESSAGES))),
        queue.keys.slot(0, FRAME_MESSAGES + 1): b"%d" % FRAME_MESSAGES,
    }
    assert queue.stats().depth == FRAME_MESSAGES + 1


# -- bad input -------------------------------------------------------------------------------

DEEP = [[[[]]]]
for _ in range(70):
    DEEP = [DEEP]


DEEPER_THAN_THE_ENCODER_GOES = []
for _ in range(10_000):
    DEEPER_THAN_THE_ENCODER_GOES = [DEEPER_THAN_THE_ENCODER_GOES]


@pytest.mark.parametrize(
    ("message", "error", "says"),
    [
        (object(), MessageEncodingError, "Object of type object is not JSON serializable"),
        ({1, 2}, MessageEncodingError, "Object of type set is not JSON serializable"),
        (b"bytes", MessageEncodingError, "Object of type bytes is not JSON serializable"),
        (float("nan"), MessageEncodingError, "Out of range float values are not JSON compliant"),
        ({"x": float("inf")}, MessageEncodingError, "Out of range float values are not JSON compliant"),
        (DEEP, MessageEncodingError, f"nested deeper than {MAX_MESSAGE_DEPTH} levels"),
        (DEEPER_THAN_THE_ENCODER_GOES, MessageEncodingError, f"nested deeper than {MAX_MESSAGE_DEPTH} levels"),
        ("a lone surrogate \ud800", MessageEncodingError, "surrogates not allowed"),
        ("x" * (MAX_MESSAGE_BYTES + 1), MessageTooLargeError, f"is {MAX_MESSAGE_BYTES + 3} bytes encoded; the limit is {MAX_MESSAGE_BYTES}"),
        (["é" * (MAX_MESSAGE_BYTES // 2)], MessageTooLargeError, f"is {MAX_MESSAGE_BYTES // 2 * 2 + 4} bytes encoded; the limit is {MAX_MESSAGE_BYTES}"),
    ],
    ids=["object", "set", "bytes", "nan", "infinity", "too-deep", "deeper-than-the-encoder-goes", "lone-surrogate",
         "too-large", "too-large-in-utf-8"],
)
def test_bad_message_is_refused_and_nothing_is_written(make_queue, cache, message, error, says):
    queue = make_queue()
    with pytest.raises(error) as raised:
        queue.write_multi(["good", message])
    assert says in str(raised.value)
    if error is MessageEncodingError:
        assert raised.value.message is message, "the error names the message it refused"
    assert isinstance(raised.value, ValueError)
    assert cache.calls == {}
    assert queue.read() is None


def test_message_of_exactly_the_limit_is_accepted(make_queue):
    queue = make_queue()
    message = "x" * (MAX_MESSAGE_BYTES - 2)  # two quote characters make the limit
    queue.write(message)
    assert queue.read() == message


def nested(levels: int) -> object:
    """Lists and objects alternating, ``levels`` deep, beside a scalar at every level."""
    message: object = []
    for level in range(levels - 1):
        message = {"inner": message, "n": level} if level % 2 else [1, message]
    return message


@pytest.mark.parametrize("depth", [1, 2, MAX_MESSAGE_DEPTH], ids=["1", "2", "the-limit"])
def test_message_nested_up_to_the_depth_limit_is_accepted(make_queue, depth):
    queue = make_queue()
    queue.write(nested(depth))
    assert queue.read() == json.loads(json.dumps(nested(depth)))


@pytest.mark.parametrize("alone", [True, False], ids=["alone", "in-a-frame"])
@pytest.mark.parametrize("shape", ["list", "object"])
def test_message_nested_one_level_past_the_limit_is_refused(make_queue, cache, shape, alone):
    queue = make_queue()
    message = nested(MAX_MESSAGE_DEPTH)
    message = [message] if shape == "list" else {"deeper": message}
    with pytest.raises(MessageEncodingError, match=f"nested deeper than {MAX_MESSAGE_DEPTH} levels") as raised:
        queue.write_multi([message] if alone else ["first", message, "last"])
    assert raised.value.message is message
    assert cache.calls == {}


@pytest.mark.parametrize(
    "message",
    [
        pytest.param([[] for _ in range(2 * MAX_MESSAGE_DEPTH)], id="many-containers-side-by-side"),
        pytest.param([nested(MAX_MESSAGE_DEPTH - 1), *[[]] * MAX_MESSAGE_DEPTH], id="at-the-limit-beside-others"),
    ],
)
def test_message_with_more_brackets_than_the_depth_limit_but_no_deeper_is_accepted(make_queue, message):
    queue = make_queue()
    queue.write_multi([message, message])  # alone and in a frame
    assert queue.read_multi() == [json.loads(json.dumps(message))] * 2


@pytest.mark.parametrize(
    ("batch", "what"),
    [
        (list(range(MAX_BATCH_MESSAGES + 1)), "messages"),
        (["x" * 900_000] * 34, "bytes"),  # 30.6 MB: over what one App Engine call carries
    ],
)
def test_batch_over_one_call_is_refused_before_anything_is_written(make_queue, cache, batch, what):
    queue = make_queue()
    with pytest.raises(BatchTooLargeError, match=what):
        queue.write_multi(batch)
    assert cache.calls == {}
    assert queue.stats().written == 0


NAME_RULE = "use 1-100 characters of [A-Za-z0-9._:-]"


@pytest.mark.parametrize(
    ("options", "argument", "message"),
    [
        ({"name": ""}, "queue name", f"invalid queue name '': {NAME_RULE}"),
        ({"name": "has space"}, "queue name", f"invalid queue name 'has space': {NAME_RULE}"),
        ({"name": "x" * 101}, "queue name", f"invalid queue name '{'x' * 79}...: {NAME_RULE}"),
        ({"name": "new\nline"}, "queue name", f"invalid queue name 'new\\nline': {NAME_RULE}"),
        ({"shards": 0}, "shards", "invalid shards 0: use 1 to 64"),
        ({"shards": 65}, "shards", "invalid shards 65: use 1 to 64"),
        ({"max_write_seconds": 0}, "max_write_seconds", "invalid max_write_seconds 0: use more than 0 and less than tombstone_seconds (3600)"),
        (
            {"max_write_seconds": 10, "tombstone_seconds": 10},
            "max_write_seconds",
            "invalid max_write_seconds 10: use more than 0 and less than tombstone_seconds (10)",
        ),
        ({"tombstone_seconds": 30 * 86400 + 1}, "tombstone_seconds", "invalid tombstone_seconds 2592001: use at most 30 days (2592000)"),
    ],
    ids=["empty-name", "space-in-name", "long-name", "newline-in-name", "0-shards", "65-shards",
         "0-max-write-seconds", "max-write-seconds-not-below-tombstone-seconds", "tombstone-seconds-over-30-days"],
)
def test_invalid_queue_options_are_refused(cache, options, argument, message):
    options = {"name": "q", **options}
    with pytest.raises(InvalidArgumentError) as raised:
        Queue(options.pop("name"), cache, **options)
    assert (raised.value.argument, str(raised.value)) == (argument, message)


def test_defaults_keep_tombstones_an_hour_and_give_a_write_a_minute_per_slot(cache):
    queue = Queue("q", cache)
    assert (queue.tombstone_seconds, queue.max_write_seconds) == (3600, 60)


def test_the_widest_options_are_accepted(cache):
    queue = Queue("q", cache, shards=64, tombstone_seconds=30 * 86400, max_write_seconds=0.5)
    assert (queue.shards, queue.tombstone_seconds, queue.max_write_seconds) == (64, 30 * 86400, 0.5)


@pytest.mark.parametrize(
    ("call", "argument", "message"),
    [
        (lambda queue: queue.read_multi(0), "max_items", "invalid max_items 0: use 1 to 1000"),
        (lambda queue: queue.read_multi(MAX_CLAIM_ITEMS + 1), "max_items", "invalid max_items 1001: use 1 to 1000"),
        (lambda queue: queue.lease(0), "max_items", "invalid max_items 0: use 1 to 1000"),
        (lambda queue: queue.lease(10, seconds=0), "seconds", "invalid seconds 0: use more than 0 and at most 86400"),
        (lambda queue: queue.lease(10, seconds=86401), "seconds", "invalid seconds 86401: use more than 0 and at most 86400"),
    ],
    ids=["read-0", "read-1001", "lease-0", "lease-for-0-seconds", "lease-for-86401-seconds"],
)
def test_invalid_read_arguments_are_refused(make_queue, call, argument, message):
    queue = make_queue()
    queue.write("kept")
    with pytest.raises(InvalidArgumentError) as raised:
        call(queue)
    assert (raised.value.argument, str(raised.value)) == (argument, message)
    assert queue.read() == "kept"


def test_error_for_a_huge_bad_argument_quotes_only_a_prefix(cache):
    with pytest.raises(InvalidArgumentError) as raised:
        Queue("x" * 1_000_000, cache)
    assert len(str(raised.value)) < 200


# -- foreign values --------------------------------------------------------------------------


class Exploit:
    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


FOREIGN_VALUES = {
    "pickle": None,  # filled per test: a pickle whose loading would create a file
    "garbage bytes": b"\xff\xfe\x00garbage",
    "starts with NUL": b"\x00something else",
    "JSON nested 10,000 deep": b"[" * 10_000 + b"]" * 10_000,
    "a lease mark that is not ours": LEASE_PREFIX + b"0" * 32 + b":1",
}


@pytest.mark.parametrize("kind", list(FOREIGN_VALUES))
def test_foreign_value_in_a_slot_is_skipped_counted_once_and_never_unpickled(make_queue, cache, tmp_path, kind):
    Exploit.marker = tmp_path / "pwned"
    value = pickle.dumps(Exploit()) if kind == "pickle" else FOREIGN_VALUES[kind]
    queue = make_queue()
    for message in ["before", "placeholder", "after"]:
        queue.write(message)
    slot = queue.keys.slot(0, 2)
    cache.delete_multi([slot])
    cache.add_multi({slot: value})
    assert queue.read_multi() == ["before", "after"]
    assert not Exploit.marker.exists()
    stats = queue.stats()
    assert (stats.skipped, stats.lost, stats.read, stats.written) == (1, 1, 2, 3)


@pytest.mark.parametrize("kind", ["garbage bytes", "a lease mark that is not ours"])
def test_foreign_value_in_place_of_a_frame_counts_every_message_of_the_frame_lost(make_queue, cache, kind):
    queue = make_queue()
    queue.write("before")
    queue.write_multi(["f1", "f2", "f3"])  # slots 2 to 4
    queue.write("after")
    cache.delete_multi([queue.keys.slot(0, 2)])
    cache.add_multi({queue.keys.slot(0, 2): FOREIGN_VALUES[kind]})
    assert queue.read_multi() == ["before", "after"]
    stats = queue.stats()
    assert (stats.skipped, stats.lost, stats.read, stats.written) == (3, 3, 2, 5)


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(FRAME_PREFIX + b"3\n[1,2]", id="an-array-shorter-than-its-count"),
        pytest.param(FRAME_PREFIX + b'2\n{"a":1,"b":2}', id="not-an-array"),
        pytest.param(FRAME_PREFIX + b"1\n[1]", id="a-count-of-one"),
        pytest.param(FRAME_PREFIX + b"%d\n[" % (FRAME_MESSAGES + 1) + b",".join([b"1"] * (FRAME_MESSAGES + 1)) + b"]", id="over-the-most"),
        pytest.param(FRAME_PREFIX + b"2\n[1,2", id="not-json"),
        pytest.param(FRAME_PREFIX + b"2\n[\xff,1]", id="not-utf-8"),
        pytest.param(FRAME_PREFIX + b"x2\n[1,2]", id="a-count-that-is-not-a-number"),
        pytest.param(FRAME_PREFIX + b"x\n[1]", id="a-count-that-is-not-a-number-of-one-message"),
        pytest.param(FRAME_PREFIX + b"0\n[]", id="a-count-of-zero-and-no-messages"),
    ],
)
def test_malformed_frame_is_foreign_skipped_and_counted_once(make_queue, cache, frame):
    queue = make_queue()
    for message in ["a", "placeholder", "b"]:
        queue.write(message)
    cache.delete_multi([queue.keys.slot(0, 2)])
    cache.add_multi({queue.keys.slot(0, 2): frame})
    assert queue.read_multi() == ["a", "b"]
    assert (queue.stats().skipped, queue.stats().lost) == (1, 1)


def test_foreign_value_in_a_leased_batch_is_counted_once_across_redeliveries(make_queue, cache, clock):
    queue = make_queue()
    for message in ["a", "b", "c"]:
        queue.write(message)
    slot = queue.keys.slot(0, 2)
    cache.delete_multi([slot])
    cache.add_multi({slot: b"\xff not json"})
    first = queue.lease(10, seconds=30)
    clock.advance(31)
    second = queue.lease(10, seconds=30)
    assert first.messages == second.messages == ["a", "c"]
    assert second.ack() is True
    stats = queue.stats()
    assert (stats.skipped, stats.lost, stats.read, stats.leased) == (1, 1, 2, 0)


def test_a_planted_pickle_never_runs_through_the_app_engine_api(testbed, tmp_path):
    from google.appengine.api import memcache

    Exploit.marker = tmp_path / "pwned"
    queue = Queue("q")
    for message in ["before", "placeholder", "after"]:
        queue.write(message)
    memcache.set(queue.keys.slot(0, 2), Exploit())  # the API pickles it, with the pickle flag
    assert queue.read_multi() == ["before", "after"]
    assert not Exploit.marker.exists()


def test_corrupt_state_is_replaced_and_counted_as_a_reset(make_queue, cache):
    queue = make_queue()
    queue.write_multi(["x", "y"])
    cache.delete_multi([queue.keys.state])
    cache.add_multi({queue.keys.state: b'{"not": "a state"}'})
    assert queue.read_multi() == ["x", "y"]  # the new state starts below the counter
    assert queue.stats().resets == 1


def test_queues_must_agree_on_the_shard_count(make_queue):
    make_queue(shards=2).write("x")
    with pytest.raises(ShardMismatchError) as raised:
        make_queue(shards=3).read()
    assert (raised.value.stored_shards, raised.value.shards) == (2, 3)


def test_keys_are_prefixed_by_the_queue_name():
    keys = QueueKeys("clicks")
    assert [keys.state, keys.write_counter(1), keys.slot(1, 7), keys.generation_markers[0]] == [
        "cq:clicks:state",
        "cq:clicks:w:1",
        "cq:clicks:m:1:7",
        "cq:clicks:gen:0",
    ]


# -- leases ----------------------------------------------------------------------------------


def test_leased_messages_are_not_read_again_while_the_lease_holds(make_queue):
    queue = make_queue()
    queue.write_multi([1, 2, 3])
    lease = queue.lease(10, seconds=30)
    assert lease.messages == [1, 2, 3]
    assert queue.lease(10, seconds=30).messages == []
    assert queue.read_multi() == []


def test_leased_messages_stay_stored_marked_with_the_lease_until_ack(make_queue, cache):
    queue = make_queue()
    queue.write_multi([1, 2])
    lease = queue.lease(10, seconds=30)
    stored = cache.get_multi(lease.message_keys)
    assert list(stored.values()) == [LEASE_PREFIX + lease.lease_id.encode() + b":" + frame_payload([1, 2])]
    assert lease.ack() is True
    assert cache.get_multi(lease.message_keys) == {}
    assert queue.stats().leased == 0


def test_expired_lease_is_delivered_again_with_the_same_id(make_queue, clock):
    queue = make_queue()
    queue.write_multi(["a", "b"])
    first = queue.lease(10, seconds=30)
    clock.advance(31)
    second = queue.lease(10, seconds=30)
    assert (second.lease_id, second.attempt, second.messages) == (first.lease_id, 2, ["a", "b"])


def test_expired_lease_goes_out_whole_only_to_a_lease_call_it_fits(make_queue, clock):
    queue = make_queue()
    queue.write_multi(["a", "b", "c"])
    first = queue.lease(10, seconds=30)
    queue.write("d")
    clock.advance(31)
    small = queue.lease(1, seconds=30)
    assert small.messages == ["d"] and small.lease_id != first.lease_id
    again = queue.lease(3, seconds=30)
    assert (again.lease_id, again.messages) == (first.lease_id, ["a", "b", "c"])


def test_lease_is_not_delivered_again_before_its_deadline(make_queue, clock):
    queue = make_queue()
    queue.write("a")
    queue.lease(10, seconds=30)
    clock.advance(29)
    assert not queue.lease(10, seconds=30)


def test_lease_is_delivered_again_at_its_deadline(make_queue, clock):
    queue = make_queue()
    queue.write("a")
    first = queue.lease(10, seconds=30)
    clock.advance(30)
    assert queue.lease(10, seconds=30).lease_id == first.lease_id


def test_expired_leases_go_out_before_new_messages(make_queue, clock):
    queue = make_queue()
    queue.write("old")
    first = queue.lease(10, seconds=30)
    queue.write("new")
    clock.advance(31)
    assert queue.lease(10, seconds=30).lease_id == first.lease_id
    assert queue.lease(10, seconds=30).messages == ["new"]


def test_released_lease_is_delivered_again_at_once(make_queue):
    queue = make_queue()
    queue.write_multi(["a", "b"])
    lease = queue.lease(10, seconds=30)
    assert lease.release() is True
    again = queue.lease(10, seconds=30)
    assert (again.lease_id, again.attempt, again.messages) == (lease.lease_id, 2, ["a", "b"])
    assert queue.stats().requeued == 2


def test_ack_by_either_holder_settles_a_lease_once(make_queue, clock):
    """After a takeover both holders processed the batch under the same id: the
    first ack settles it (True, slots deleted), the other learns it was settled."""
    queue = make_queue()
    queue.write("a")
    slow = queue.lease(10, seconds=30)
    clock.advance(31)
    fast = queue.lease(10, seconds=30)
    assert fast.lease_id == slow.lease_id
    assert slow.ack() is True
    assert fast.ack() is False
    stats = queue.stats()
    assert (stats.leased, stats.read, stats.lost) == (0, 1, 0)


def test_release_by_a_holder_whose_lease_was_taken_over_does_nothing(make_queue, clock):
    queue = make_queue()
    queue.write("a")
    slow = queue.lease(10, seconds=30)
    clock.advance(31)
    queue.lease(10, seconds=30)
    assert slow.release() is False
    assert not queue.lease(10, seconds=30)


def test_with_block_acks_on_success(make_queue):
    queue = make_queue()
    queue.write_multi([1, 2])
    with queue.lease(10, seconds=30) as batch:
        assert list(batch) == [1, 2]
    assert queue.stats().leased == 0
    assert not queue.lease(10, seconds=30)


def test_with_block_releases_on_exception_and_reraises(make_queue):
    queue = make_queue()
    queue.write_multi([1, 2])
    with pytest.raises(RuntimeError, match="processing failed"), queue.lease(10, seconds=30) as batch:
        lease_id = batch.lease_id
        raise RuntimeError("processing failed")
    again = queue.lease(10, seconds=30)
    assert (again.lease_id, again.messages) == (lease_id, [1, 2])


def test_empty_lease_carries_no_id_attempt_or_holder(make_queue):
    lease = make_queue().lease(10, seconds=30)
    assert (lease.lease_id, lease.attempt, lease.holder, repr(lease)) == (None, 0, "", "Lease(None, attempt=0, messages=0)")


@pytest.mark.parametrize("seconds", [0.5, 1, MAX_LEASE_SECONDS], ids=["half-a-second", "1-second", "a-day"])
def test_a_lease_may_last_any_time_above_0_up_to_a_day(make_queue, seconds):
    queue = make_queue()
    queue.write("m")
    assert queue.lease(10, seconds=seconds).messages == ["m"]


def test_empty_lease_is_falsy_and_its_ack_does_nothing(make_queue, cache):
    lease = make_queue().lease(10, seconds=30)
    assert not lease and lease.lease_id is None and len(lease) == 0
    cache.calls.clear()
    assert lease.ack() is False
    assert lease.release() is False
    assert cache.calls == {}


def test_ack_of_a_lease_the_queue_forgot_returns_false_and_clears_only_its_own_marks(make_queue, cache):
    queue = make_queue()
    queue.write_multi(["a", "b"])
    lease = queue.lease(10, seconds=30)
    cache.delete_multi([queue.keys.state])  # the state is lost: the lease is forgotten
    queue.write("written after the loss")
    assert lease.ack() is False
    assert cache.get_multi(lease.message_keys) == dict.fromkeys(lease.message_keys, taken_value(2))
    assert drain(queue) == ["written after the loss"]


# -- stats -----------------------------------------------------------------------------------


def test_stats_count_written_read_depth_and_leased(make_queue):
    queue = make_queue(shards=2)
    queue.write_multi(list(range(10)))
    queue.write("one more")
    queue.read_multi(4)
    queue.lease(3, seconds=30)
    assert queue.stats().as_dict() == {
        "depth": 4,
        "written": 11,
        "read": 4,
        "requeued": 0,
        "skipped": 0,
        "gapped": 0,
        "lost": 0,
        "retried": 0,
        "collided": 0,
        "leased": 3,
        "resets": 0,
    }


def test_stats_count_nothing_on_shards_never_written(make_queue):
    queue = make_queue(shards=4)
    queue.write_multi(["a", "b"])  # one frame, on one shard: the other counters do not exist yet
    queue.read_multi(1)
    stats = queue.stats()
    assert (stats.depth, stats.written, stats.read) == (1, 2, 1)


def test_stats_are_zero_before_the_queue_exists(make_queue):
    assert set(make_queue().stats().as_dict().values()) == {0}


def test_written_equals_read_plus_lost_plus_depth_plus_leased(make_queue, cache, clock):
    queue = make_queue(shards=2)
    for first in range(0, 30, 10):
        queue.write_multi(list(range(first, first + 10)))  # frames in slots 1, 11, 21 of one shard
        queue.write_multi(list(range(30 + first // 2, 35 + first // 2)))  # and in 1, 6, 11 of the other
    for shard in (0, 1):  # the second frame of each is evicted: 15 messages
        stored = cache.get_multi(queue.keys.slots(shard, range(1, 31)))
        cache.delete_multi([sorted(stored, key=lambda key: int(key.rsplit(":", 1)[1]))[1]])
    held = queue.lease(7, seconds=30)
    queue.read_multi(9)
    stats = queue.stats()
    assert stats.written == stats.read + stats.lost + stats.depth + stats.leased == 45
    assert stats.leased == 7 and held.ack()
    stats = queue.stats()
    assert stats.written == stats.read + stats.lost + stats.depth + stats.leased == 45
    drain(queue, 1000)
    stats = queue.stats()
    assert (stats.read, stats.lost, stats.depth, stats.leased) == (30, 15, 0, 0)


# -- in-flight writes (a reader reaches a slot before its writer stores it) --------------------


def test_writer_whose_slot_was_tombstoned_retries_and_nothing_is_lost(make_queue, cache, clock):
    reader = make_queue()
    reader.write("first")
    seen_by_reader_meanwhile = []
    writer = Queue("q", PauseAfterIncr(cache, lambda: seen_by_reader_meanwhile.append(reader.read_multi())), clock=clock)
    writer.write("in flight")
    assert seen_by_reader_meanwhile == [["first"]]
    assert cache.get_multi([reader.keys.slot(0, 2)]) == {reader.keys.slot(0, 2): TOMBSTONE}
    assert reader.read_multi() == ["in flight"]
    stats = reader.stats()
    assert (stats.skipped, stats.retried, stats.lost, stats.written, stats.read) == (1, 1, 0, 2, 2)


def test_writer_stalled_past_max_write_seconds_takes_a_fresh_slot(make_queue, cache, clock):
    reader = make_queue()
    reader.write("first")
    writer = Queue("q", PauseAfterIncr(cache, lambda: clock.advance(61)), clock=clock, max_write_seconds=60)
    writer.write("late")
    assert reader.read_multi() == ["first", "late"]
    stats = reader.stats()
    assert (stats.skipped, stats.retried, stats.lost) == (1, 1, 0)


class StoreBeforeTombstone(CacheWrapper):
    """A writer between ``incr`` and ``add``: the slot the last write stored is emptied,
    and its value stored again just before a reader's tombstone ``add`` for it."""

    def __init__(self, inner, slot: str) -> None:
        super().__init__(inner)
        self.slot = slot
        self.value = inner.get_multi([slot])[slot]
        inner.delete_multi([slot])

    def add_multi(self, values, expire_seconds=0):
        if self.slot in values:
            self.inner.add_multi({self.slot: self.value})
        return self.inner.add_multi(values, expire_seconds)


@pytest.mark.parametrize("read_ahead", [False, True], ids=["slots read on their own", "slots read ahead"])
def test_message_stored_after_the_reader_got_an_empty_slot_wins_the_add_race(make_queue, cache, read_ahead):
    """The reader sees slot 2 empty (read ahead with the state, after a claim of slot 1,
    or on its own), the writer stores, then the reader's tombstone add loses."""
    queue = make_queue()
    queue.write("first")
    queue.write("placeholder")
    reader = Queue("q", StoreBeforeTombstone(cache, queue.keys.slot(0, 2)))
    if read_ahead:
        assert reader.read_multi(1) == ["first"]
    read = []
    calls = calls_of(cache, lambda: read.extend(reader.read_multi()))
    assert read == ["placeholder"] if read_ahead else ["first", "placeholder"]
    # claim (+ its slots), take, the tombstone (and the message before it), the slot read again, counts corrected
    assert calls == {"gets_multi": 3 if read_ahead else 4, "cas_multi": 3, "add_multi": 2}
    stats = reader.stats()
    assert (stats.skipped, stats.read, stats.lost) == (0, 2, 0)


def test_a_message_read_ahead_but_taken_by_another_party_first_is_not_delivered(make_queue, cache):
    """The take's compare-and-set uses the token read ahead: a slot changed since refuses it."""
    queue = make_queue()
    queue.write("first")
    queue.write("second")
    slot = queue.keys.slot(0, 2)

    class TakenAfterTheClaim(CacheWrapper):
        def cas_multi(self, values, expire_seconds=0):
            applied = self.inner.cas_multi(values, expire_seconds)
            if queue.keys.state in values:
                token = self.inner.gets_multi([slot])[slot][1]
                self.inner.cas_multi({slot: (TAKEN, token)}, 1)  # as a reader of a state claimed twice would
            return applied

    reader = Queue("q", TakenAfterTheClaim(cache))
    assert reader.read_multi(1) == ["first"]
    assert reader.read_multi(1) == []
    stats = reader.stats()
    assert (stats.skipped, stats.read, stats.lost) == (1, 1, 1)


# -- round trips -----------------------------------------------------------------------------


def calls_of(cache, operation):
    cache.clear()
    operation()
    return dict(cache.calls)


def test_single_write_takes_two_cache_calls(make_queue, cache):
    queue = make_queue()
    queue.write("warm up")
    assert calls_of(cache, lambda: queue.write("x")) == {"incr": 1, "add_multi": 1}


def test_write_multi_of_a_hundred_takes_two_cache_calls(make_queue, cache):
    queue = make_queue(shards=4)
    queue.write("warm up")
    assert calls_of(cache, lambda: queue.write_multi(range(100))) == {"incr": 1, "add_multi": 1}


def claim_a_hundred(queue: Queue) -> None:
    """Make the queue object's last claim one of 100 slots, 25 in each of up to 4 shards:
    the next claim's first read reads ahead twice that."""
    for quarter in range(4):
        queue.write_multi(range(quarter * 25, quarter * 25 + 25))
    assert sorted(queue.read_multi(100)) == list(range(100))


def test_a_claim_reads_ahead_twice_what_the_last_claim_took_shared_over_the_shards(cache, clock):
    reads = RecordReads(cache)
    queue = Queue("q", reads, clock=clock, shards=4)
    claim_a_hundred(queue)
    reads.keys.clear()
    queue.read_multi(100)
    assert slot_keys(reads.keys[0], queue) == 4 * 50


def test_a_poll_after_an_empty_claim_reads_ahead_only_a_few_slots_per_shard(cache, clock):
    reads = RecordReads(cache)
    queue = Queue("q", reads, clock=clock, shards=4)
    claim_a_hundred(queue)
    assert queue.read_multi(500) == []  # the empty claim
    reads.keys.clear()
    queue.read_multi(500)
    assert slot_keys(reads.keys[0], queue) == 4 * MIN_READ_AHEAD_PER_SHARD


def slot_keys(keys: list[str], queue: Queue) -> int:
    not_slots = {queue.keys.state, *(queue.keys.write_counter(shard) for shard in range(4))}
    return sum(1 for key in keys if key not in not_slots)


def test_read_multi_takes_two_cache_calls_when_its_slots_were_read_ahead(make_queue, cache):
    queue = make_queue(shards=4)
    claim_a_hundred(queue)
    for quarter in range(4):  # 25 in each shard, in turn: the claim takes all
        queue.write_multi(range(quarter * 25, quarter * 25 + 25))
    assert calls_of(cache, lambda: queue.read_multi(100)) == {"gets_multi": 1, "cas_multi": 1}


def test_first_read_multi_of_a_queue_object_reads_its_slots_on_their_own(make_queue, cache):
    queue = make_queue(shards=4)
    queue.write_multi(range(400))
    assert calls_of(cache, lambda: queue.read_multi(100)) == {"gets_multi": 2, "cas_multi": 1}


def test_read_multi_after_another_reader_claimed_reads_its_slots_on_their_own(make_queue, cache):
    queue, other = make_queue(), make_queue()
    for fifty in range(5):  # frames end every 50 slots: no claim below cuts one
        queue.write_multi(range(fifty * 50, fifty * 50 + 50))
    assert queue.read_multi(100) == list(range(100))
    assert other.read_multi(50) == list(range(100, 150))
    read = []
    assert calls_of(cache, lambda: read.extend(queue.read_multi(100))) == {"gets_multi": 2, "cas_multi": 1}
    assert read == list(range(150, 250))  # read ahead: 101 to 200


@pytest.mark.parametrize("shards", [1, 2])
def test_a_claim_of_one_shard_is_read_ahead_whole_on_up_to_two_shards(make_queue, cache, shards):
    queue = make_queue(shards=shards)
    queue.write_multi(["warm up"] * 100)  # a claim of 100, all in one shard
    queue.read_multi(100)
    queue.write_multi(range(100))  # in the next shard
    read = []
    assert calls_of(cache, lambda: read.extend(queue.read_multi(100))) == {"gets_multi": 1, "cas_multi": 1}
    assert read == list(range(100))


def test_a_claim_of_one_shard_of_four_reads_past_what_was_read_ahead_on_its_own(make_queue, cache):
    queue = make_queue(shards=4)
    claim_a_hundred(queue)
    queue.write_multi(range(100))  # all in one shard: read ahead, 50 per shard
    read = []
    assert calls_of(cache, lambda: read.extend(queue.read_multi(100))) == {"gets_multi": 2, "cas_multi": 1}
    assert read == list(range(100))


def test_read_of_an_empty_queue_takes_one_cache_call(make_queue, cache):
    queue = make_queue()
    queue.write("x")
    queue.read()
    assert calls_of(cache, queue.read_multi) == {"gets_multi": 1}


def test_write_and_read_cycle_of_a_hundred_takes_four_cache_calls(make_queue, cache):
    queue = make_queue()
    claim_a_hundred(queue)
    cache.clear()
    queue.write_multi(range(100))
    assert queue.read_multi(100) == list(range(100))
    assert cache.total() == 4


def test_lease_takes_three_cache_calls_and_ack_three(make_queue, cache):
    queue = make_queue()
    claim_a_hundred(queue)
    queue.write_multi(range(100))
    leases = []
    assert calls_of(cache, lambda: leases.append(queue.lease(100, seconds=30))) == {"gets_multi": 1, "cas_multi": 2}
    assert calls_of(cache, leases[0].ack) == {"gets_multi": 1, "cas_multi": 1, "delete_multi": 1}


def test_first_lease_of_a_queue_object_takes_four_cache_calls(make_queue, cache):
    queue = make_queue()
    queue.write_multi(range(100))
    assert calls_of(cache, lambda: queue.lease(100, seconds=30)) == {"gets_multi": 2, "cas_multi": 2}


def test_takeover_of_an_expired_lease_takes_three_cache_calls(make_queue, cache, clock):
    queue = make_queue()
    queue.write_multi(range(100))
    queue.lease(100, seconds=30)
    clock.advance(31)
    assert calls_of(cache, lambda: queue.lease(100, seconds=30)) == {"gets_multi": 2, "cas_multi": 1}


def test_release_takes_two_cache_calls(make_queue, cache):
    queue = make_queue()
    queue.write_multi(range(10))
    lease = queue.lease(100, seconds=30)
    assert calls_of(cache, lease.release) == {"gets_multi": 1, "cas_multi": 1}


def test_requeue_takes_four_cache_calls(make_queue, cache):
    queue = make_queue()
    queue.write("warm up")
    assert calls_of(cache, lambda: queue.requeue(["a", "b"])) == {
        "incr": 1,
        "add_multi": 1,
        "gets_multi": 1,
        "cas_multi": 1,
    }


def test_stats_take_one_cache_call(make_queue, cache):
    queue = make_queue(shards=4)
    queue.write("x")
    assert calls_of(cache, queue.stats) == {"get_multi": 1}


ONE_SERVER = pytest.mark.parametrize("cache_client", ["appengine", "memcached"], indirect=True)
"""Backends where every key lives on one server, so round trips per operation are fixed
(through a ``HashClient`` a call makes one per server its keys map to)."""


def round_trips_of(cache, operation) -> int:
    cache.clear()
    operation()
    return cache.round_trips


@ONE_SERVER
def test_write_takes_two_round_trips(make_queue, cache):
    queue = make_queue(shards=4)
    queue.write("warm up")
    assert round_trips_of(cache, lambda: queue.write("x")) == 2
    assert round_trips_of(cache, lambda: queue.write_multi(range(100))) == 2


@ONE_SERVER
def test_read_multi_of_a_hundred_takes_two_round_trips(make_queue, cache):
    queue = make_queue(shards=4)
    claim_a_hundred(queue)
    for quarter in range(4):
        queue.write_multi(range(quarter * 25, quarter * 25 + 25))
    assert round_trips_of(cache, lambda: queue.read_multi(100)) == 2


@ONE_SERVER
def test_cycle_of_a_hundred_takes_four_round_trips(make_queue, cache):
    queue = make_queue()
    claim_a_hundred(queue)
    assert round_trips_of(cache, lambda: (queue.write_multi(range(100)), queue.read_multi(100))) == 4


@ONE_SERVER
def test_lease_of_a_hundred_takes_three_round_trips_and_ack_three(make_queue, cache):
    queue = make_queue()
    claim_a_hundred(queue)
    queue.write_multi(range(100))
    leases = []
    assert round_trips_of(cache, lambda: leases.append(queue.lease(100, seconds=30))) == 3
    assert round_trips_of(cache, leases[0].ack) == 3


# -- errors: each says what went wrong and carries the key, slot or value involved --
# Each is made inside the test: an error made when the module is imported is made
# before mutmut switches a mutant on, so a mutant of its message would go unseen.

CAUSE = CacheUnavailableError("cq:q:m:0:7", "add_multi")

ERRORS = {
    "invalid-argument": (
        lambda: InvalidArgumentError("shards", 65, "use 1 to 64"),
        "invalid shards 65: use 1 to 64",
        {"argument": "shards", "value": 65},
    ),
    "invalid-argument-80-characters-shown-whole": (
        lambda: InvalidArgumentError("name", "n" * 78, "shorter"),
        f"invalid name '{'n' * 78}': shorter",
        {"value": "n" * 78},
    ),
    "invalid-argument-cut-after-80-characters": (
        lambda: InvalidArgumentError("name", "n" * 79, "shorter"),
        f"invalid name '{'n' * 79}...: shorter",
        {"value": "n" * 79},
    ),
    "message-encoding": (
        lambda: MessageEncodingError({1}, "set is not JSON"),
        "message is not storable JSON: set is not JSON",
        {"message": {1}},
    ),
    "message-too-large": (
        lambda: MessageTooLargeError(2_000_000, 998_976),
        "message is 2000000 bytes encoded; the limit is 998976",
        {"size_bytes": 2_000_000, "limit_bytes": 998_976},
    ),
    "batch-too-large": (
        lambda: BatchTooLargeError("messages", 10_001, 10_000),
        "batch has 10001 messages; one write_multi takes at most 10000: split it",
        {"size": 10_001, "limit": 10_000},
    ),
    "cache-unavailable": (lambda: CacheUnavailableError("cq:q:m:0:7", "add_multi"), "cache add_multi of 'cq:q:m:0:7' failed", {"key": "cq:q:m:0:7", "operation": "add_multi"}),
    "write-incomplete": (
        lambda: WriteIncompleteError("cq:q:m:0:9", [0], [1], 3),
        "write_multi stored 1 of 3 messages (1 unknown): the cache failed mid-batch; last key 'cq:q:m:0:9'",
        {"key": "cq:q:m:0:9", "stored": [0], "unknown": [1], "total": 3},
    ),
    "write-failed": (
        lambda: WriteFailedError("cq:q:m:0:9", 100, [0], 2),
        "write_multi stored 1 of 2 messages (0 unknown): gave up after 100 attempts found their slots taken; "
        "last key 'cq:q:m:0:9'",
        {"key": "cq:q:m:0:9", "attempts": 100, "stored": [0], "unknown": [], "total": 2},
    ),
    "shard-mismatch": (
        lambda: ShardMismatchError("cq:q:state", 4, 2),
        "'cq:q:state' holds a queue of 4 shards; this Queue has 2",
        {"key": "cq:q:state", "stored_shards": 4, "shards": 2},
    ),
    "corrupt-state": (lambda: CorruptStateError("cq:q:state"), "'cq:q:state' does not hold a clickqueue state", {"key": "cq:q:state"}),
    "too-many-leases": (
        lambda: TooManyLeasesError("cq:q:state", 1000),
        "'cq:q:state' holds 1000 outstanding leases, as many as it can carry; ack or release some",
        {"key": "cq:q:state", "limit": 1000},
    ),
    "contention": (
        lambda: ContentionError("cq:q:state", 100),
        "gave up on 'cq:q:state' after 100 attempts: it kept changing under this call",
        {"key": "cq:q:state", "attempts": 100},
    ),
    "group-write": (
        lambda: GroupWriteError(CAUSE, [], [0, 1], 2, 3),
        "write_multi stored 0 of 2 messages (2 unknown): its write_multi, for 3 callers, raised "
        "CacheUnavailableError(\"cache add_multi of 'cq:q:m:0:7' failed\"); last key 'cq:q:m:0:7'",
        {"key": "cq:q:m:0:7", "stored": [], "unknown": [0, 1], "total": 2, "cause": CAUSE, "callers": 3},
    ),
    "group-write-of-an-error-without-a-key": (
        lambda: GroupWriteError(RuntimeError("bug"), [], [0], 1, 1),
        "write_multi stored 0 of 1 messages (1 unknown): its write_multi, for 1 callers, raised "
        "RuntimeError('bug'); last key ''",
        {"key": ""},
    ),
}


@pytest.mark.parametrize(("make_error", "message", "attributes"), ERRORS.values(), ids=ERRORS.keys())
def test_an_error_says_what_went_wrong_and_carries_what_was_involved(make_error, message, attributes):
    error = make_error()
    assert str(error) == message
    assert {name: getattr(error, name) for name in attributes} == attributes
