"""What a slot holds, as bytes: messages (compact JSON), or one of the queue's marks.

Whoever can write to a shared cache must not be able to run code in the app,
so values coming out of the cache are only ever parsed as JSON, never
unpickled. Marks start with a NUL byte, which no JSON text can, so a mark is
never mistaken for a message:

* ``TOMBSTONE`` / ``GAP_TOMBSTONE``: a reader found its claimed slot empty
  (outside / inside a recorded gap); the slot's late writer must go elsewhere.
* ``TAKEN``: ``read_multi`` took what the slot held (a conditional delete);
  ``TAKEN:<n>`` when that was a frame of ``n`` messages.
* ``LEASE_PREFIX + lease_id + ":" + payload``: the payload (a message or a
  frame) is held by a lease.

A payload is one message, or a *frame*: ``FRAME_PREFIX + "<n>\\n"`` and a
JSON array of ``n`` (2 to ``FRAME_MESSAGES``) messages, encoded in one call for
the whole frame. A frame of ``n`` messages sits in the first of the ``n``
consecutive slot numbers its write was handed out, and *spans* them: the
others stay unwritten (docs/protocol.md). Every value's span is known
from its first bytes.

Anything else that is not a JSON message (a pickle, garbage, another NUL
value, JSON nested too deep, a frame whose parts do not decode to its count)
is foreign: skipped and counted, never decoded further; it spans one slot.
Encoding is canonical: a frame decoded and encoded again (its first part, when a
read splits it) gives back the bytes its writer sent for those messages.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from clickqueue.errors import MessageEncodingError, MessageTooLargeError

MAX_MESSAGE_BYTES = 1_000_000 - 1024
"""Largest encoded message: App Engine memcache and memcached both cap a value
near 1 MB, and a lease mark adds 40 bytes to a message it holds."""

MAX_MESSAGE_DEPTH = 64
"""Deepest nesting of lists and objects in a message: deeper JSON could not be
parsed back by every reader without hitting Python's recursion limit."""

FRAME_MESSAGES = 32
"""Most messages one frame carries (and so the most slot numbers it spans)."""

FRAME_BYTES = 256_000
"""Most message bytes a frame of several messages carries: well under one value's 1 MB.
A message larger than this is stored on its own."""

TOMBSTONE = b"\x00tombstone"
GAP_TOMBSTONE = b"\x00gap"
TAKEN = b"\x00taken"
LEASE_PREFIX = b"\x00lease:"
FRAME_PREFIX = b"\x00frame:"
LEASE_ID_LENGTH = 32
_TAKEN_FRAME = TAKEN + b":"
SETTLED_MARKS = frozenset({TOMBSTONE, GAP_TOMBSTONE, TAKEN})


class SlotKind(Enum):
    EMPTY = "empty"
    MESSAGE = "message"
    LEASED_TO_US = "leased to us"
    SETTLED = "settled"
    """A tombstone, taken messages, or messages held by another lease."""
    FOREIGN = "foreign"


@dataclass(frozen=True)
class SlotValue:
    kind: SlotKind
    messages: tuple[Any, ...] = ()
    payload: bytes = b""
    """The messages as stored (a lease mark's without the mark)."""
    span: int = 1
    """The slot numbers the value covers, from its own: its frame's message count."""


EMPTY_SLOT = SlotValue(SlotKind.EMPTY)

_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def encode_message(message: Any) -> bytes:
    """Return ``message`` as compact UTF-8 JSON, refusing what cannot be read back."""
    try:
        text = _ENCODER.encode(message)
    except RecursionError:
        _check_depth(message)  # nested past the encoder: deeper than the limit
        raise
    except (TypeError, ValueError) as error:
        raise MessageEncodingError(message, str(error)) from error
    if _may_nest_past(text, MAX_MESSAGE_DEPTH):
        _check_depth(message)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate
        raise MessageEncodingError(message, str(error)) from error
    if len(encoded) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(len(encoded), MAX_MESSAGE_BYTES)
    return encoded


def encode_frames(messages: Sequence[Any]) -> list[tuple[range, bytes]]:
    """``messages`` as payloads of at most ``FRAME_MESSAGES`` messages and
    ``FRAME_BYTES`` bytes each (a larger message alone), in order: the index range
    of each, and its bytes. Refuses what ``encode_message`` refuses, naming the
    message. A frame is encoded in one call; only one that fails, or is too
    large, is encoded message by message and cut by size."""
    frames = []
    for start in range(0, len(messages), FRAME_MESSAGES):
        chunk = messages[start : start + FRAME_MESSAGES]
        payload = _frame_in_one_call(chunk)
        if payload is not None:
            frames.append((range(start, start + len(chunk)), payload))
        else:
            frames += _frames_by_size([encode_message(message) for message in chunk], start)
    return frames


def frame_payload(messages: Sequence[Any]) -> bytes:
    """The payload of messages read from a slot (part of a frame): the bytes their
    writer sent for them."""
    return encode_message(messages[0]) if len(messages) == 1 else _framed(_ENCODER.encode(list(messages)).encode(), len(messages))


def _frame_in_one_call(chunk: Sequence[Any]) -> bytes | None:
    """The frame of ``chunk`` if it encodes in one call within the limits, else None."""
    if len(chunk) < 2:
        return None
    try:
        text = _ENCODER.encode(list(chunk))
        encoded = text.encode("utf-8")
    except (TypeError, ValueError, RecursionError):  # one of them says which, alone
        return None
    if len(encoded) > FRAME_BYTES or _may_nest_past(text, MAX_MESSAGE_DEPTH + 1) and _nests_past(list(chunk), MAX_MESSAGE_DEPTH + 1):
        return None
    return _framed(encoded, len(chunk))


def _frames_by_size(parts: list[bytes], first: int) -> list[tuple[range, bytes]]:
    frames, start, size = [], 0, 0
    for index, part in enumerate(parts):
        if index > start and size + len(part) > FRAME_BYTES:
            frames.append((range(first + start, first + index), _joined(parts[start:index])))
            start, size = index, 0
        size += len(part)
    if parts:
        frames.append((range(first + start, first + len(parts)), _joined(parts[start:])))
    return frames


def _joined(parts: list[bytes]) -> bytes:
    """The payload of encoded messages: the frame ``encode_frames`` would make of them."""
    return parts[0] if len(parts) == 1 else _framed(b"[" + b",".join(parts) + b"]", len(parts))


def _framed(array: bytes, count: int) -> bytes:
    return FRAME_PREFIX + b"%d\n" % count + array


def _may_nest_past(text: str, depth: int) -> bool:
    """Whether JSON ``text`` has enough brackets to nest deeper than ``depth``."""
    return text.count("[") + text.count("{") > depth


def _check_depth(message: Any) -> None:
    if _nests_past(message, MAX_MESSAGE_DEPTH):
        raise MessageEncodingError(message, f"nested deeper than {MAX_MESSAGE_DEPTH} levels")


def _nests_past(value: Any, depth: int) -> bool:
    """Walk ``value`` one level at a time, looking only into containers."""
    level = [value]
    for _ in range(depth + 1):
        containers = [item for item in level if isinstance(item, (dict, list, tuple))]
        if not containers:
            return False
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    return True


def leased_value(lease_id: str, payload: bytes) -> bytes:
    """The slot value of a message or frame held by lease ``lease_id``."""
    return LEASE_PREFIX + lease_id.encode() + b":" + payload


def taken_value(span: int) -> bytes:
    """What ``read_multi`` leaves in a slot it took: ``TAKEN``, with the span of a frame."""
    return TAKEN if span == 1 else _TAKEN_FRAME + b"%d" % span


def read_slot(value: bytes | None, lease_id: str | None = None) -> SlotValue:
    """Classify what a slot holds, as seen by a reader holding ``lease_id`` (or none)."""
    if value is None:
        return EMPTY_SLOT
    if value in SETTLED_MARKS:
        return SlotValue(SlotKind.SETTLED)
    if value.startswith(LEASE_PREFIX):
        holder = value[len(LEASE_PREFIX) : len(LEASE_PREFIX) + LEASE_ID_LENGTH]
        payload = held_payload(value)
        if lease_id is None or holder != lease_id.encode():
            return SlotValue(SlotKind.SETTLED, span=_payload_span(payload))
        return _payload(payload, SlotKind.LEASED_TO_US)
    if value.startswith(_TAKEN_FRAME) and (span := _frame_count(value[len(_TAKEN_FRAME) :])):
        return SlotValue(SlotKind.SETTLED, span=span)
    return _payload(value, SlotKind.MESSAGE)


def slot_span(value: bytes) -> int:
    """The slot numbers ``value`` covers, read from its first bytes only: a frame's
    count (taken, held or not), else 1."""
    if value.startswith(LEASE_PREFIX):
        return _payload_span(held_payload(value))
    if value.startswith(_TAKEN_FRAME):
        return _frame_count(value[len(_TAKEN_FRAME) :]) or 1
    return _payload_span(value)


def _payload_span(payload: bytes) -> int:
    if not payload.startswith(FRAME_PREFIX):
        return 1
    return _frame_count(payload[len(FRAME_PREFIX) : len(FRAME_PREFIX) + 3].partition(b"\n")[0]) or 1


def held_payload(value: bytes) -> bytes:
    """What a lease mark holds."""
    return value[len(LEASE_PREFIX) + LEASE_ID_LENGTH + 1 :]


def _payload(value: bytes, kind: SlotKind) -> SlotValue:
    if value.startswith(FRAME_PREFIX):
        header, _, array = value[len(FRAME_PREFIX) :].partition(b"\n")
        count = _frame_count(header)
        messages = _decoded(array) if count else None
        if not isinstance(messages, list) or len(messages) != count:
            return SlotValue(SlotKind.FOREIGN)
        return SlotValue(kind, tuple(messages), value, span=count)
    if value[:1] == b"\x00" or (message := _decoded(value)) is _UNDECODABLE:
        return SlotValue(SlotKind.FOREIGN)
    return SlotValue(kind, (message,), value)


def _frame_count(digits: bytes) -> int:
    """A frame's message count from its header, or 0 if it is not one."""
    if not 0 < len(digits) <= 2 or not digits.isdigit():
        return 0
    count = int(digits)
    return count if 2 <= count <= FRAME_MESSAGES else 0


_UNDECODABLE = object()


def _decoded(text: bytes) -> Any:
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # not UTF-8 JSON, or nested past the parser
        return _UNDECODABLE
