"""Message encoding: compact JSON bytes, never pickle.

Whoever can write to a shared cache must not be able to run code in the app,
so values coming out of the cache are only ever parsed as JSON. Tombstones are
byte strings no JSON text can equal (they start with a NUL byte).
"""

from __future__ import annotations

import json
from typing import Any

from clickqueue.errors import MessageEncodingError, MessageTooLargeError

# App Engine memcache and memcached both cap a value near 1 MB; keep room for
# the key and item header so one message always fits in one item.
MAX_MESSAGE_BYTES = 1_000_000 - 1024

TOMBSTONE = b"\x00tombstone"
"""Put by a reader into a claimed slot found empty: the slot's writer must retry."""

RESET_TOMBSTONE = b"\x00reset"
"""Put by a reader that recreated a lost state into empty slots it skipped over."""


def is_tombstone(value: bytes) -> bool:
    return value[:1] == b"\x00"


def encode_message(message: Any) -> bytes:
    """Return ``message`` as compact UTF-8 JSON, refusing what cannot be one value."""
    try:
        text = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise MessageEncodingError(message, str(error)) from error
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(len(encoded), MAX_MESSAGE_BYTES)
    return encoded


def decode_message(value: bytes) -> Any:
    """Parse a message read from the cache (raises ``ValueError`` if it is not JSON)."""
    return json.loads(value)
