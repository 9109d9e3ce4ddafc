"""clickqueue: a lockless queue on memcache (App Engine memcache or memcached).

Writers take slots from an atomic counter and ``add`` messages into them;
readers claim slots by compare-and-set on one state key, tombstone slots still
empty, and take each message by compare-and-set on its slot, either for good
(``read_multi``) or under a lease until acknowledged (``lease``). The protocol,
its invariants, fault model, guarantees and limits: docs/protocol.md.
``GroupCommit`` shares one ``write_multi`` among concurrent writers of a
process (``clickqueue.group_commit``).
"""

from clickqueue.cache import Applied, Cache, CountingCache
from clickqueue.clients import wrap_client
from clickqueue.codec import MAX_MESSAGE_BYTES
from clickqueue.errors import (
    BatchTooLargeError,
    CacheUnavailableError,
    ContentionError,
    CorruptStateError,
    GroupWriteError,
    InvalidArgumentError,
    MessageEncodingError,
    MessageTooLargeError,
    QueueError,
    ShardMismatchError,
    TooManyLeasesError,
    WriteFailedError,
    WriteIncompleteError,
)
from clickqueue.group_commit import GroupCommit
from clickqueue.keys import QueueKeys
from clickqueue.claiming import MAX_CLAIM_ITEMS
from clickqueue.leases import Lease
from clickqueue.queue import Queue, QueueStats
from clickqueue.writing import MAX_BATCH_BYTES, MAX_BATCH_MESSAGES

__all__ = [
    "MAX_BATCH_BYTES",
    "MAX_BATCH_MESSAGES",
    "MAX_CLAIM_ITEMS",
    "MAX_MESSAGE_BYTES",
    "Applied",
    "BatchTooLargeError",
    "Cache",
    "CacheUnavailableError",
    "ContentionError",
    "CorruptStateError",
    "CountingCache",
    "GroupCommit",
    "GroupWriteError",
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
    "WriteIncompleteError",
    "wrap_client",
]
