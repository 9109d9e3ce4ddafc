"""Group commit: the writes of concurrent callers in one process, coalesced into
one ``Queue.write_multi``.

What. ``GroupCommit(queue).write_multi(messages)`` stores ``messages`` as
``queue.write_multi`` would, and returns only once they are stored; callers
that arrive while others wait share one ``write_multi`` (all their messages,
in arrival order). Each ``write_multi`` is 2 cache calls (``incr`` of a write
counter, ``add_multi`` of the slots), however many callers it carries: a
burst of ``n`` single-event requests costs ``2 * batches`` cache calls instead
of ``2 * n``.

Leader and followers. The first caller to find no batch open opens one and
leads it; callers arriving while it is open join it and wait. The leader waits
(on a ``threading.Condition``) until ``max_wait_seconds`` have passed, or the
batch holds ``max_messages``, or no other batch's write is in flight, whichever
comes first; it then closes the batch, calls ``queue.write_multi`` on its own
thread, and wakes its followers with the outcome. There is no background
thread because on App Engine every API call (memcache included) carries the
calling request's security ticket, which appengine-python-standard keeps
request-local (``os.environ`` and context variables set per request by
``wrap_wsgi_app``): a thread of its own has none ("Attempted RPC call without
active security ticket"), and one borrowed from a finished request is void.
The leader is a request thread, in its own request, so its call is valid; it
runs in the leader's environment (its namespace too), so share a GroupCommit
only among requests that would write the same queue alike.

No wait when alone. The leader waits only while another batch's write is in
flight: that write's round trips are the time in which followers gather. A
caller that finds no batch open and no write in flight (a lone request, or
requests one after another) writes at once, without waiting on the condition
or reading the clock, so it pays only a lock. Under load the wait is bounded
by ``max_wait_seconds`` (a hung write delays the next batch that long, no
longer) and ends early when the write in flight finishes or the batch is full.

Limits of one write. A batch holds at most ``max_messages`` (at most the
queue's ``MAX_BATCH_MESSAGES``): a caller whose messages would take it past
that closes it (its leader writes it at once) and opens the next. One caller's
messages are never split over two writes: more than ``max_messages`` from one
caller are written alone, in one ``write_multi``, which takes up to
``MAX_BATCH_MESSAGES`` (over that, the queue's ``BatchTooLargeError``), so
each caller's messages are as all-or-nothing as the queue makes one write.
Bytes are not counted in advance (their encoding is the queue's business): a
batch the queue refuses as a whole before writing anything (its
``ValueError``s: over ``MAX_BATCH_BYTES``, or a message that is not storable
JSON) is written caller by caller instead, each caller on its own thread, so a
bad message fails only its own caller.

Failures. A caller returns only once all its messages are stored, so an
acknowledged event is never lost. If the shared write fails, every caller in
the batch raises ``GroupWriteError`` (a ``WriteIncompleteError``, a
``QueueError``), its ``cause`` the queue's error, with ``stored`` and
``unknown`` mapped onto the caller's own messages: after a
``CacheUnavailableError`` both are empty (nothing was stored); after a
``WriteIncompleteError`` each caller learns which of its own messages were
stored, and one whose messages were all stored returns normally. A caller
arriving after a failed batch starts a batch of its own.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from clickqueue.errors import (
    BatchTooLargeError,
    CacheUnavailableError,
    ContentionError,
    GroupWriteError,
    InvalidArgumentError,
    MessageEncodingError,
    MessageTooLargeError,
    QueueError,
    WriteIncompleteError,
)
from clickqueue.queue import Queue
from clickqueue.writing import MAX_BATCH_MESSAGES

REFUSED_BEFORE_WRITING = (MessageEncodingError, MessageTooLargeError, BatchTooLargeError)
"""What ``write_multi`` raises about its input, before it writes anything."""

NOTHING_STORED = (CacheUnavailableError, ContentionError)
"""What ``write_multi`` raises only when none of its messages was stored (else
``WriteIncompleteError``)."""


@dataclass(frozen=True)
class _Outcome:
    """How one ``write_multi`` ended; ``stored`` and ``unknown`` index its messages."""

    error: BaseException | None = None
    stored: frozenset[int] = frozenset()
    unknown: frozenset[int] = frozenset()
    refused: bool = False
    """The queue refused the input before writing anything."""


class _Batch:
    """The messages of the callers who joined, in arrival order, and how their write ended."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.starts: list[int] = []
        """Where each caller's messages start in ``messages``."""
        self.closed = False
        """No one joins any more: it is full, or being written."""
        self.outcome: _Outcome | None = None

    def join(self, messages: list[Any]) -> int:
        """Add a caller's messages; the caller's number in the batch (0 leads)."""
        self.starts.append(len(self.messages))
        self.messages += messages
        return len(self.starts) - 1

    def span(self, caller: int) -> range:
        """Where caller ``caller``'s messages are in ``messages``."""
        end = self.starts[caller + 1] if caller + 1 < len(self.starts) else len(self.messages)
        return range(self.starts[caller], end)


class GroupCommit:
    """Coalesces concurrent ``write_multi`` calls of one process into shared
    ``queue.write_multi`` calls (see the module docstring).

    ``max_wait_seconds`` bounds how long a leader waits for company while
    another write is in flight; ``max_messages`` (1 to ``MAX_BATCH_MESSAGES``)
    closes a batch. ``condition`` is what callers wait on (a test passes one
    that records its waits); thread-safe, one per queue and process.
    """

    def __init__(
        self,
        queue: Queue,
        *,
        max_wait_seconds: float = 0.002,
        max_messages: int = 500,
        condition: threading.Condition | None = None,
    ) -> None:
        if not 0 <= max_wait_seconds <= 60:
            raise InvalidArgumentError("max_wait_seconds", max_wait_seconds, "must be 0 to 60")
        if not 1 <= max_messages <= MAX_BATCH_MESSAGES:
            raise InvalidArgumentError("max_messages", max_messages, f"must be 1 to {MAX_BATCH_MESSAGES}")
        self.queue = queue
        self.max_wait_seconds = max_wait_seconds
        self.max_messages = max_messages
        self._changed = condition or threading.Condition()
        self._open: _Batch | None = None
        self._writes_in_flight = 0

    def write_multi(self, messages: Iterable[Any]) -> None:
        """Store ``messages`` (in order, in one ``write_multi`` shared with
        concurrent callers); return once they are stored.

        Raises what ``Queue.write_multi`` raises about bad input (its
        ``ValueError``s), and ``GroupWriteError`` when the write failed.
        """
        messages = list(messages)
        if not messages:
            return
        with self._changed:
            batch, caller = self._join(messages)
            if caller == 0:
                self._changed.wait_for(lambda: batch.closed or not self._writes_in_flight, self.max_wait_seconds)
                self._close(batch)
            else:
                self._changed.wait_for(lambda: batch.outcome is not None)
        if caller == 0:
            self._write_batch(batch)
        outcome = batch.outcome
        assert outcome is not None  # set by _write_batch: this caller's, or the leader's it waited for
        self._settle(outcome, batch.span(caller), len(batch.starts), messages)

    def _join(self, messages: list[Any]) -> tuple[_Batch, int]:
        """The open batch with ``messages`` added, or a new one if they do not fit; the caller's number in it."""
        batch = self._open
        if batch is None or len(batch.messages) + len(messages) > self.max_messages:
            if batch is not None:
                self._close(batch)  # full for these messages: its leader writes it now
            batch = self._open = _Batch()
        caller = batch.join(messages)
        if len(batch.messages) >= self.max_messages:
            self._close(batch)
        return batch, caller

    def _close(self, batch: _Batch) -> None:
        """Let no one else join ``batch``: its write is in flight from now on (its leader may be about to start it)."""
        if batch.closed:
            return
        batch.closed = True
        self._writes_in_flight += 1
        if self._open is batch:
            self._open = None
        self._changed.notify_all()

    def _write_batch(self, batch: _Batch) -> None:
        """The leader's part: write the closed batch on this thread, then wake its followers."""
        try:
            outcome = self._write(batch.messages)
        except BaseException as error:  # a bug or an interrupt: the leader raises it, followers cannot tell
            self._finish(batch, _Outcome(error, unknown=frozenset(range(len(batch.messages)))))
            raise
        self._finish(batch, outcome)

    def _finish(self, batch: _Batch, outcome: _Outcome) -> None:
        with self._changed:
            batch.outcome = outcome
            self._writes_in_flight -= 1
            self._changed.notify_all()

    def _write(self, messages: list[Any]) -> _Outcome:
        """``queue.write_multi(messages)`` and how it ended (2 cache calls when all goes well)."""
        try:
            self.queue.write_multi(messages)
        except REFUSED_BEFORE_WRITING as error:
            return _Outcome(error, refused=True)
        except WriteIncompleteError as error:
            return _Outcome(error, frozenset(error.stored), frozenset(error.unknown))
        except NOTHING_STORED as error:
            return _Outcome(error)
        except QueueError as error:  # write_multi's contract names no other: what it stored is unknown
            return _Outcome(error, unknown=frozenset(range(len(messages))))
        return _Outcome()

    def _settle(self, outcome: _Outcome, span: range, callers: int, messages: list[Any]) -> None:
        """Return if this caller's messages (``span`` of the batch) are stored; raise if not."""
        if outcome.refused and callers > 1:
            # The queue refused the whole batch before writing any of it: each caller
            # writes its own, so only a caller whose own messages it refuses fails.
            self._settle(self._write(messages), range(len(messages)), 1, messages)
            return
        if outcome.error is None:
            return
        if outcome.refused:
            raise outcome.error  # this caller's own input, refused on this thread
        stored = [index - span.start for index in span if index in outcome.stored]
        unknown = [index - span.start for index in span if index in outcome.unknown]
        if len(stored) < len(span):
            raise GroupWriteError(outcome.error, stored, unknown, len(span), callers) from outcome.error
