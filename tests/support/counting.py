"""Counting as the processing and fold tasks do it, and events as the counting side
(``clicks/counting.py``, ``clicks/counters.py``) takes and answers them."""

from __future__ import annotations

import time
from collections.abc import Mapping

from clicks import counting
from clicks.events import Event, event_from_message


def keyed(events) -> dict:
    """Events as ``counting.count_batch`` takes them: each under a message id of its own."""
    return {f"message-{n}": event for n, event in enumerate(events)}


def leased_events(lease) -> dict:
    """A lease's events by message id, as ``drain`` hands them to the counting side."""
    return dict(zip(lease.message_ids, map(event_from_message, lease.messages), strict=True))


def clicks_and_views(counts: dict) -> dict[str, int]:
    """The clicks and views of counts as ``counters`` answers them (without bots and CTR)."""
    return {"click": counts["click"], "view": counts["view"]}


def fold_all(now: float | None = None) -> int:
    """Fold every recorded batch into the count store, one commit after another; how many commits."""
    commits = 0
    while True:
        report = counting.fold(time.time() if now is None else now)
        commits += 1
        if not report.more:
            return commits


def count_now(batch_id: str, events: Mapping[str, Event], now: float | None = None) -> int:
    """Record ``events`` as the batch ``batch_id`` and fold it: how many were recorded."""
    recorded = counting.count_batch(batch_id, events, time.time() if now is None else now)
    fold_all(now)
    return recorded


FOLD_HEADERS = {"X-AppEngine-QueueName": "fold"}


def run_folds(app) -> list[dict]:
    """POST /fold as the task queue would (``app``: a WebTest app) until no batch is left to fold; its answers."""
    answers = [app.post("/fold", headers=FOLD_HEADERS).json]
    while answers[-1]["more"]:
        answers.append(app.post("/fold", headers=FOLD_HEADERS).json)
    return answers
