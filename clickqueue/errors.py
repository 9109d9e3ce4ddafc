"""Typed errors of the queue. Each carries the key, slot or message involved."""

from __future__ import annotations


class QueueError(Exception):
    """Base class of every error the queue raises."""


class InvalidArgumentError(QueueError, ValueError):
    """An argument outside what the queue accepts (a queue name, a batch size...)."""

    def __init__(self, argument: str, value: object, requirement: str) -> None:
        shown = repr(value)
        super().__init__(f"invalid {argument} {shown[:80]}{'...' if len(shown) > 80 else ''}: {requirement}")
        self.argument = argument
        self.value = value


class MessageEncodingError(QueueError, ValueError):
    """A message that is not JSON-serialisable, holds NaN/Infinity, or nests too deep."""

    def __init__(self, message: object, reason: str) -> None:
        super().__init__(f"message is not storable JSON: {reason}")
        self.message = message


class MessageTooLargeError(QueueError, ValueError):
    """A message whose JSON encoding exceeds one memcache value."""

    def __init__(self, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(f"message is {size_bytes} bytes encoded; the limit is {limit_bytes}")
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class BatchTooLargeError(QueueError, ValueError):
    """A ``write_multi`` batch over what one cache call carries; nothing was written."""

    def __init__(self, what: str, size: int, limit: int) -> None:
        super().__init__(f"batch has {size} {what}; one write_multi takes at most {limit}: split it")
        self.size = size
        self.limit = limit


class CacheUnavailableError(QueueError):
    """The cache failed a call (network, server or RPC error).

    From ``write``/``write_multi`` it means nothing of the batch was stored, so
    the call can be retried; a failure after part of a batch may have been
    stored raises ``WriteIncompleteError`` instead.
    """

    def __init__(self, key: str, operation: str) -> None:
        super().__init__(f"cache {operation} of {key!r} failed")
        self.key = key
        self.operation = operation


class WriteIncompleteError(QueueError):
    """``write_multi`` stored only part of its batch, or cannot tell which part.

    ``stored`` and ``unknown`` are indices into the batch: messages stored for
    sure, and messages that may or may not be. The others were not stored, so
    writing just those again cannot duplicate anything.
    """

    def __init__(
        self, key: str, stored: list[int], unknown: list[int], total: int, reason: str = "the cache failed mid-batch"
    ) -> None:
        super().__init__(
            f"write_multi stored {len(stored)} of {total} messages ({len(unknown)} unknown): {reason}; "
            f"last key {key!r}"
        )
        self.key = key
        self.stored = stored
        self.unknown = unknown
        self.total = total


class WriteFailedError(WriteIncompleteError):
    """A write that kept finding its fresh slots taken and gave up.

    Only readers that tombstone every slot the moment it is handed out (or a
    cache that refuses every ``add``) get here.
    """

    def __init__(self, key: str, attempts: int, stored: list[int], total: int) -> None:
        super().__init__(key, stored, [], total, f"gave up after {attempts} attempts found their slots taken")
        self.attempts = attempts


class ShardMismatchError(QueueError):
    """The queue's stored state was made with another shard count than this Queue's."""

    def __init__(self, key: str, stored_shards: int, shards: int) -> None:
        super().__init__(f"{key!r} holds a queue of {stored_shards} shards; this Queue has {shards}")
        self.key = key
        self.stored_shards = stored_shards
        self.shards = shards


class CorruptStateError(QueueError):
    """A queue state value that is not the JSON this module writes (the claim replaces it)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key!r} does not hold a clickqueue state")
        self.key = key


class TooManyLeasesError(QueueError):
    """The state already holds as many outstanding leases as one memcache value can carry."""

    def __init__(self, key: str, limit: int) -> None:
        super().__init__(f"{key!r} holds {limit} outstanding leases, as many as it can carry; ack or release some")
        self.key = key
        self.limit = limit


class ContentionError(QueueError):
    """A call gave up: the keys it works on kept changing under it.

    Other readers winning every compare-and-set, or values being lost or
    replaced faster than it could repair them. Lock-free means some call always
    progresses, not every one: this bounds one call (``attempts`` cache calls or
    compare-and-sets). It stopped where nothing was half-done; calling again is safe.
    """

    def __init__(self, key: str, attempts: int) -> None:
        super().__init__(f"gave up on {key!r} after {attempts} attempts: it kept changing under this call")
        self.key = key
        self.attempts = attempts


class GroupWriteError(WriteIncompleteError):
    """A ``GroupCommit.write_multi`` whose write failed: the ``write_multi`` that
    carried this caller's messages, shared with ``callers - 1`` other callers,
    raised ``cause`` (its ``__cause__`` too).

    ``stored`` and ``unknown`` index this caller's own messages, as in
    ``WriteIncompleteError``: both empty means none of them was stored, so all
    of them may be written again. ``cause`` is the queue's own error; anything
    but a ``QueueError`` there (a bug) leaves every message unknown.
    """

    def __init__(self, cause: BaseException, stored: list[int], unknown: list[int], total: int, callers: int) -> None:
        reason = f"its write_multi, for {callers} callers, raised {cause!r}"
        super().__init__(getattr(cause, "key", ""), stored, unknown, total, reason)
        self.cause = cause
        self.callers = callers
