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

A payload is one message, or a *frame*: ``FRAME_PREFIX + "<n>\\n"`` and ``n``
(2 to ``FRAME_MESSAGES``) messages separated by ``\\n``, which compact JSON
never contains. A frame of ``n`` messages sits in the first of the ``n``
consecutive slot numbers its write was handed out, and *spans* them: the
others stay unwritten (``clickqueue.queue``). Every value's span is known
from its first bytes.

Anything else that is not a JSON message (a pickle, garbage, another NUL
value, JSON nested too deep, a frame whose parts do not decode to its count)
is foreign: skipped and counted, never decoded further; it spans one slot.
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
    parts: tuple[bytes, ...] = ()
    """Each message's bytes, as stored."""
    span: int = 1
    """The slot numbers the value covers, from its own: its frame's message count."""

    @property
    def payload(self) -> bytes:
        """The messages as one slot value: what a lease mark holds."""
        return payload_of(self.parts)


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


EMPTY_SLOT = SlotValue(SlotKind.EMPTY)


def encode_message(message: Any) -> bytes:
    """Return ``message`` as compact UTF-8 JSON, refusing what cannot be read back."""
    try:
        text = _ENCODER.encode(message)
    except RecursionError:
        _check_depth(message)  # nested past the encoder: deeper than the limit
        raise
    except (TypeError, ValueError) as error:
        raise MessageEncodingError(message, str(error)) from error
    if text.count("[") + text.count("{") > MAX_MESSAGE_DEPTH:  # else it cannot nest that deep
        _check_depth(message)
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError as error:  # a lone surrogate
        raise MessageEncodingError(message, str(error)) from error
    if len(encoded) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(len(encoded), MAX_MESSAGE_BYTES)
    return encoded


def _check_depth(message: Any) -> None:
    """Walk the message one level at a time, looking only into containers."""
    level = [message]
    for depth in range(1, MAX_MESSAGE_DEPTH + 2):
        containers = [value for value in level if isinstance(value, (dict, list, tuple))]
        if not containers:
            return
        if depth > MAX_MESSAGE_DEPTH:
            raise MessageEncodingError(message, f"nested deeper than {MAX_MESSAGE_DEPTH} levels")
        level = [child for value in containers for child in (value.values() if isinstance(value, dict) else value)]


def frames_of(sizes: Sequence[int]) -> list[range]:
    """Cut messages of these encoded sizes, in order, into frames: consecutive runs of
    at most ``FRAME_MESSAGES`` messages and ``FRAME_BYTES`` bytes (a larger message
    alone). Returns the index range of each."""
    frames, start, frame_bytes = [], 0, 0
    for index, size in enumerate(sizes):
        if index > start and (index - start == FRAME_MESSAGES or frame_bytes + size > FRAME_BYTES):
            frames.append(range(start, index))
            start, frame_bytes = index, 0
        frame_bytes += size
    if sizes:
        frames.append(range(start, len(sizes)))
    return frames


def payload_of(parts: Sequence[bytes]) -> bytes:
    """One message as it is, several as a frame."""
    if len(parts) == 1:
        return parts[0]
    return FRAME_PREFIX + b"%d\n" % len(parts) + b"\n".join(parts)


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


def payload_parts(payload: bytes) -> tuple[bytes, ...]:
    """The message bytes of a payload (one message, or a frame's), undecoded; () for a
    frame whose header does not match its parts."""
    if not payload.startswith(FRAME_PREFIX):
        return (payload,)
    header, _, body = payload[len(FRAME_PREFIX) :].partition(b"\n")
    count = _frame_count(header)
    parts = tuple(body.split(b"\n")) if count else ()
    return parts if len(parts) == count else ()


def _payload(value: bytes, kind: SlotKind) -> SlotValue:
    if value.startswith(FRAME_PREFIX):
        parts = payload_parts(value)
        return _decoded(b"[" + b",".join(parts) + b"]", parts, kind) if parts else SlotValue(SlotKind.FOREIGN)
    if value[:1] == b"\x00":
        return SlotValue(SlotKind.FOREIGN)
    return _decoded(value, (value,), kind, single=True)


def _frame_count(digits: bytes) -> int:
    """A frame's message count from its header, or 0 if it is not one."""
    if not 0 < len(digits) <= 2 or not digits.isdigit():
        return 0
    count = int(digits)
    return count if 2 <= count <= FRAME_MESSAGES else 0


def _decoded(text: bytes, parts: tuple[bytes, ...], kind: SlotKind, single: bool = False) -> SlotValue:
    try:
        decoded = json.loads(text)
    except (ValueError, RecursionError):  # not UTF-8 JSON, or nested past the parser
        return SlotValue(SlotKind.FOREIGN)
    messages = (decoded,) if single else tuple(decoded)
    if len(messages) != len(parts):  # a part that is not one JSON value
        return SlotValue(SlotKind.FOREIGN)
    return SlotValue(kind, messages, parts, span=len(parts))
