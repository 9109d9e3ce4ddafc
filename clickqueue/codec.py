"""What a slot holds, as bytes: a message (compact JSON), or one of the queue's marks.

Whoever can write to a shared cache must not be able to run code in the app,
so values coming out of the cache are only ever parsed as JSON, never
unpickled. Marks start with a NUL byte, which no JSON text can, so a mark is
never mistaken for a message:

* ``TOMBSTONE`` / ``GAP_TOMBSTONE``: a reader found its claimed slot empty
  (outside / inside a recorded gap); the slot's late writer must go elsewhere.
* ``TAKEN``: ``read_multi`` took the message (a conditional delete).
* ``LEASE_PREFIX + lease_id + ":" + message``: the message is held by a lease.

Anything else that is not a JSON message (a pickle, garbage, another NUL
value, JSON nested too deep) is foreign: skipped and counted, never decoded
further.
"""

from __future__ import annotations

import json
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

TOMBSTONE = b"\x00tombstone"
GAP_TOMBSTONE = b"\x00gap"
TAKEN = b"\x00taken"
LEASE_PREFIX = b"\x00lease:"
LEASE_ID_LENGTH = 32
SETTLED_MARKS = frozenset({TOMBSTONE, GAP_TOMBSTONE, TAKEN})


class SlotKind(Enum):
    EMPTY = "empty"
    MESSAGE = "message"
    LEASED_TO_US = "leased to us"
    SETTLED = "settled"
    """A tombstone, a taken message, or a message held by another lease."""
    FOREIGN = "foreign"


@dataclass(frozen=True)
class SlotValue:
    kind: SlotKind
    message: Any = None
    message_bytes: bytes = b""


def encode_message(message: Any) -> bytes:
    """Return ``message`` as compact UTF-8 JSON, refusing what cannot be read back."""
    _check_depth(message)
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise MessageEncodingError(message, str(error)) from error
    encoded = text.encode("utf-8")
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


def leased_value(lease_id: str, message_bytes: bytes) -> bytes:
    """The slot value of a message held by lease ``lease_id``."""
    return LEASE_PREFIX + lease_id.encode() + b":" + message_bytes


def read_slot(value: bytes | None, lease_id: str | None = None) -> SlotValue:
    """Classify what a slot holds, as seen by a reader holding ``lease_id`` (or none)."""
    if value is None:
        return SlotValue(SlotKind.EMPTY)
    if value in SETTLED_MARKS:
        return SlotValue(SlotKind.SETTLED)
    if value.startswith(LEASE_PREFIX):
        holder = value[len(LEASE_PREFIX) : len(LEASE_PREFIX) + LEASE_ID_LENGTH]
        message_bytes = value[len(LEASE_PREFIX) + LEASE_ID_LENGTH + 1 :]
        if lease_id is None or holder != lease_id.encode():
            return SlotValue(SlotKind.SETTLED)
        return _message(message_bytes, SlotKind.LEASED_TO_US)
    if value[:1] == b"\x00":
        return SlotValue(SlotKind.FOREIGN)
    return _message(value, SlotKind.MESSAGE)


def _message(message_bytes: bytes, kind: SlotKind) -> SlotValue:
    try:
        return SlotValue(kind, json.loads(message_bytes), message_bytes)
    except (ValueError, RecursionError):  # not UTF-8 JSON, or nested past the parser
        return SlotValue(SlotKind.FOREIGN)
