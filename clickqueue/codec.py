"""Message encoding: compact JSON bytes, never pickle.

Whoever can write to a shared cache must not be able to run code in the app,
so values coming out of the cache are only ever parsed as JSON. Tombstones are
byte strings that no JSON text can equal (they start with a NUL byte).
"""

from __future__ import annotations

import json
from typing import Any

from clickqueue.errors import MessageEncodingError, MessageTooLargeError

# App Engine memcache and memcached both cap a value near 1 MB; keep room for
# the key and item header so one message always fits in one item.
MAX_MESSAGE_BYTES = 1_000_000 - 1024

READER_TOMBSTONE = b"\x00reader-tombstone"
"""Put by a reader into a claimed slot found empty: the slot's writer must retry."""

GAP_TOMBSTONE = b"\x00gap-tombstone"
"""Put by a writer that reseeds a lost write counter into the slots it skips."""

TOMBSTONES = frozenset({READER_TOMBSTONE, GAP_TOMBSTONE})


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
