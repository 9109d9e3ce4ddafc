"""The slot encoding's rules, without a cache: how a batch is cut into frames, and the
span every kind of value reads as (``clickqueue.codec``)."""

import json

import pytest

from clickqueue.codec import (
    FRAME_BYTES,
    FRAME_MESSAGES,
    FRAME_PREFIX,
    LEASE_PREFIX,
    TAKEN,
    TOMBSTONE,
    encode_frames,
    encode_message,
    frame_payload,
    SlotKind,
    leased_value,
    read_slot,
    slot_span,
    taken_value,
)


def string_of(encoded_bytes: int) -> str:
    """A message that encodes to exactly ``encoded_bytes`` (its two quotes included)."""
    return "x" * (encoded_bytes - 2)


def cuts(messages) -> list[range]:
    return [indices for indices, _payload in encode_frames(messages)]


def test_a_batch_is_cut_every_frame_messages():
    assert cuts(list(range(2 * FRAME_MESSAGES + 1))) == [
        range(0, FRAME_MESSAGES),
        range(FRAME_MESSAGES, 2 * FRAME_MESSAGES),
        range(2 * FRAME_MESSAGES, 2 * FRAME_MESSAGES + 1),
    ]


def test_messages_of_exactly_frame_bytes_share_a_frame_and_one_byte_more_does_not():
    exactly = [string_of(FRAME_BYTES - 10), string_of(10)]
    over = [string_of(FRAME_BYTES - 10), string_of(11)]
    assert cuts(exactly) == [range(0, 2)]
    assert cuts(over) == [range(0, 1), range(1, 2)]


def test_a_frame_too_large_is_cut_by_the_bytes_of_its_messages_in_order():
    third = FRAME_BYTES * 2 // 5
    assert cuts([string_of(third)] * 3) == [range(0, 2), range(2, 3)]


def test_a_cut_starts_the_next_frame_with_nothing_counted_yet():
    large, medium = string_of(FRAME_BYTES * 4 // 5), string_of(FRAME_BYTES // 2)
    rest = string_of(FRAME_BYTES - FRAME_BYTES // 2)
    assert cuts([large, medium, rest]) == [range(0, 1), range(1, 3)]


def test_a_frame_is_the_json_array_of_its_messages_after_its_count():
    [(indices, payload)] = encode_frames([1, {"a": "é"}, None])
    assert (indices, payload) == (range(0, 3), FRAME_PREFIX + b'3\n[1,{"a":"\xc3\xa9"},null]')
    assert frame_payload([1, {"a": "é"}, None]) == payload


def test_one_message_is_stored_as_itself():
    assert encode_frames(["alone"]) == [(range(0, 1), encode_message("alone"))]
    assert frame_payload(["alone"]) == encode_message("alone")


def test_a_frame_encoded_in_one_call_is_the_frame_made_message_by_message():
    messages = [{"type": "click", "item": f"item-{n}", "n": n / 3} for n in range(FRAME_MESSAGES)]
    [(_indices, payload)] = encode_frames(messages)
    assert payload == FRAME_PREFIX + b"%d\n[" % FRAME_MESSAGES + b",".join(map(encode_message, messages)) + b"]"
    assert json.loads(payload.split(b"\n", 1)[1]) == messages


@pytest.mark.parametrize(
    ("value", "span"),
    [
        pytest.param(encode_message("one"), 1, id="a-message"),
        pytest.param(frame_payload([1, 2, 3]), 3, id="a-frame"),
        pytest.param(leased_value("a" * 32, frame_payload([1, 2])), 2, id="a-leased-frame"),
        pytest.param(leased_value("a" * 32, encode_message("one")), 1, id="a-leased-message"),
        pytest.param(taken_value(5), 5, id="a-taken-frame"),
        pytest.param(TAKEN, 1, id="a-taken-message"),
        pytest.param(TOMBSTONE, 1, id="a-tombstone"),
        pytest.param(TAKEN + b":x", 1, id="a-taken-mark-with-no-count"),
        pytest.param(TAKEN + b":99", 1, id="a-taken-mark-counting-past-the-most"),
        pytest.param(FRAME_PREFIX + b"x\n[1]", 1, id="a-frame-with-no-count"),
        pytest.param(LEASE_PREFIX + b"a" * 32 + b":" + FRAME_PREFIX + b"33\n[]", 1, id="a-leased-frame-past-the-most"),
    ],
)
def test_the_span_of_a_value_is_read_from_its_first_bytes(value, span):
    assert slot_span(value) == span


def test_a_frames_array_may_hold_white_space_as_json_does():
    slot = read_slot(FRAME_PREFIX + b"2\n[1,\n 2]")
    assert (slot.kind, slot.messages, slot.span) == (SlotKind.MESSAGE, (1, 2), 2)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(FRAME_PREFIX + b"0\n[]", id="zero"),
        pytest.param(FRAME_PREFIX + b"1\n[1]", id="one"),
        pytest.param(FRAME_PREFIX + b"%d\n[%s]" % (FRAME_MESSAGES + 1, b",".join([b"1"] * (FRAME_MESSAGES + 1))), id="past-the-most"),
        pytest.param(FRAME_PREFIX + b"x\n[1]", id="not-a-number"),
        pytest.param(FRAME_PREFIX + b"\n[]", id="none"),
    ],
)
def test_a_frame_whose_count_is_not_2_to_frame_messages_is_foreign(value):
    assert read_slot(value).kind is SlotKind.FOREIGN


def test_a_batch_whose_first_message_alone_is_over_frame_bytes_gets_no_empty_frame():
    big = "x" * FRAME_BYTES
    assert [indices for indices, _payload in encode_frames([big, "a", "b"])] == [range(0, 1), range(1, 3)]
