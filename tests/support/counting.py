"""Events as the counting side (``handlers/counters.py``) takes and answers them."""

from __future__ import annotations

def keyed(events) -> dict:
    """Events as ``counters.apply_batch`` takes them: each under a message id of its own."""
    return {f"message-{n}": event for n, event in enumerate(events)}


def leased_events(lease) -> dict:
    """A lease's events by message id, as ``drain`` hands them to ``apply_batch``."""
    from handlers.events import event_from_message

    return dict(zip(lease.message_ids, map(event_from_message, lease.messages), strict=True))


def clicks_and_views(counts: dict) -> dict[str, int]:
    """The clicks and views of counts as ``counters`` answers them (without bots and CTR)."""
    return {"click": counts["click"], "view": counts["view"]}
