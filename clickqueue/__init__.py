"""clickqueue: a lockless queue on memcache (App Engine memcache or memcached).

Writers take slots from an atomic counter and ``add`` messages into them;
readers claim slots by CAS, tombstone slots still empty, and either take the
messages (``read_multi``) or lease them until acknowledged (``lease``). The
protocol and its invariants are in ``clickqueue.queue``.
"""

from clickqueue.cache import Cache, CountingCache, wrap_client
from clickqueue.codec import MAX_MESSAGE_BYTES
from clickqueue.errors import (
    CacheUnavailableError,
    CorruptStateError,
    InvalidArgumentError,
    MessageEncodingError,
    MessageTooLargeError,
    QueueError,
    ShardMismatchError,
    TooManyLeasesError,
    WriteFailedError,
)
from clickqueue.queue import MAX_CLAIM_ITEMS, Lease, Queue, QueueKeys, QueueStats

__all__ = [
    "MAX_CLAIM_ITEMS",
    "MAX_MESSAGE_BYTES",
    "Cache",
    "CacheUnavailableError",
    "CorruptStateError",
    "CountingCache",
    "InvalidArgumentError",
    "Lease",
    "MessageEncodingError",
    "MessageTooLargeError",
    "Queue",
    "QueueError",
    "QueueKeys",
    "QueueStats",
    "ShardMismatchError",
    "TooManyLeasesError",
    "WriteFailedError",
    "wrap_client",
]
