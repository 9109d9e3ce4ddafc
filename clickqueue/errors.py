"""Typed errors of the queue. Each carries the key, slot or message involved."""

from __future__ import annotations


class QueueError(Exception):
    """Base class of every error the queue raises."""


class InvalidArgumentError(QueueError, ValueError):
    """An argument outside what the queue accepts (a queue name, a batch size...)."""

    def __init__(self, argument: str, value: object, requirement: str) -> None:
        super().__init__(f"invalid {argument} {value!r}: {requirement}")
        self.argument = argument
        self.value = value


class MessageEncodingError(QueueError, ValueError):
    """A message that is not JSON-serialisable (or holds NaN/Infinity)."""

    def __init__(self, message: object, reason: str) -> None:
        super().__init__(f"message is not JSON-serialisable: {reason}")
        self.message = message


class MessageTooLargeError(QueueError, ValueError):
    """A message whose JSON encoding exceeds one memcache value."""

    def __init__(self, size_bytes: int, limit_bytes: int) -> None:
        super().__init__(f"message is {size_bytes} bytes encoded; the limit is {limit_bytes}")
        self.size_bytes = size_bytes
        self.limit_bytes = limit_bytes


class WriteFailedError(QueueError):
    """A write that could not store its message after many fresh slots.

    Only a cache that refuses every ``add`` (or loses every counter) gets here.
    """

    def __init__(self, key: str, attempts: int) -> None:
        super().__init__(f"gave up storing a message after {attempts} attempts; last slot {key!r}")
        self.key = key
        self.attempts = attempts


class ShardMismatchError(QueueError):
    """The queue's stored state was made with another shard count than this Queue's."""

    def __init__(self, key: str, stored_shards: int, shards: int) -> None:
        super().__init__(f"{key!r} holds a queue of {stored_shards} shards; this Queue has {shards}")
        self.key = key
        self.stored_shards = stored_shards
        self.shards = shards


class CorruptStateError(QueueError):
    """A queue state value that is not the JSON this module writes."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key!r} does not hold a clickqueue state")
        self.key = key


class TooManyLeasesError(QueueError):
    """The state already holds the most outstanding leases it can carry."""

    def __init__(self, key: str, limit: int) -> None:
        super().__init__(f"{key!r} already holds {limit} outstanding leases; ack or release some")
        self.key = key
        self.limit = limit


class CacheUnavailableError(QueueError):
    """The cache answered that a call failed on the network side."""

    def __init__(self, key: str, operation: str) -> None:
        super().__init__(f"cache {operation} of {key!r} failed on the network")
        self.key = key
        self.operation = operation
