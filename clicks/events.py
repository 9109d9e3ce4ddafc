"""What an event is, and every rule a request's events must pass (in one place)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from webob.multidict import MultiDict

from clicks.http_errors import InvalidRequestError, quote_prefix

EVENT_TYPES = ("click", "view")
ITEM_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_BATCH_EVENTS = 500


@dataclass(frozen=True)
class Event:
    """One click or view of an item; its message form is what the queue carries.

    ``at`` (POSIX seconds) is when the app accepted it: it picks the event's hour
    and day. ``bot`` marks one sent by a known bot, counted apart. Both are set
    by the app, never taken from a client.
    """

    type: str
    item: str
    at: int | None = None
    bot: bool = False

    def to_message(self) -> dict[str, object]:
        return self.message_at(self.at, self.bot)

    def message_at(self, at: int | None, bot: bool) -> dict[str, object]:
        """The message of this event as accepted at ``at``, by a bot or not (the app's
        stamp, without building a stamped copy)."""
        message: dict[str, object] = {"type": self.type, "item": self.item}
        if at is not None:
            message["at"] = at
        if bot:
            message["bot"] = True
        return message


def parse_item(value: object) -> str:
    """Return ``value`` if it is a valid item id."""
    if not isinstance(value, str) or not ITEM_PATTERN.fullmatch(value):
        raise InvalidRequestError("item must be 1-128 characters of [A-Za-z0-9._:-]")
    return value


def parse_event(fields: Mapping[str, object]) -> Event:
    """Build an Event from a form's fields or a JSON object."""
    event_type = fields.get("type")
    if event_type is None:
        raise InvalidRequestError(f"type is missing: give one of {', '.join(EVENT_TYPES)}")
    if event_type not in EVENT_TYPES:
        raise InvalidRequestError(f"type must be one of {', '.join(EVENT_TYPES)}; got {quote_prefix(event_type)}")
    return Event(type=event_type, item=parse_item(fields.get("item")))


def single_param(params: MultiDict, name: str) -> str | None:
    """A query or form parameter given at most once (with two, which one would count?)."""
    values = params.getall(name)
    if len(values) > 1:
        raise InvalidRequestError(f"{name} is given {len(values)} times; give it once")
    return values[0] if values else None


def parse_event_params(params: MultiDict) -> Event:
    """Build an Event from query or form parameters."""
    return parse_event({name: single_param(params, name) for name in ("type", "item")})


def parse_event_batch(body: bytes) -> list[Event]:
    """Parse a JSON body ``{"events": [{"type": ..., "item": ...}, ...]}``: all valid or none.

    The body must be UTF-8 (RFC 8259), a byte order mark allowed: ``json.loads`` of
    bytes would also take UTF-16 and UTF-32, which this API does not accept."""
    try:
        document = json.loads(body.decode("utf-8-sig"))
    except UnicodeDecodeError as error:
        raise InvalidRequestError(f"body is not UTF-8: {quote_prefix(error)}") from error
    except ValueError as error:
        raise InvalidRequestError(f"body is not valid JSON: {quote_prefix(error)}") from error
    except RecursionError as error:  # arrays or objects nested about 1000 deep
        raise InvalidRequestError("body is not valid JSON for this API: nested too deeply") from error
    events = document.get("events") if isinstance(document, dict) else None
    if not isinstance(events, list):
        raise InvalidRequestError('body must be a JSON object {"events": [...]}')
    if not 1 <= len(events) <= MAX_BATCH_EVENTS:
        raise InvalidRequestError(f"events must hold 1 to {MAX_BATCH_EVENTS} events; got {len(events)}")
    parsed = []
    for index, event in enumerate(events):
        if not isinstance(event, dict):
            raise InvalidRequestError(f"events[{index}] must be an object with type and item")
        try:
            parsed.append(parse_event(event))
        except InvalidRequestError as error:
            raise InvalidRequestError(f"events[{index}]: {error}") from error
    return parsed


def event_from_message(message: object) -> Event | None:
    """The Event a queue message holds, or None if it holds none (written by something else).

    A message without ``at`` (queued before events carried their time) is dated
    when it is counted."""
    if not isinstance(message, dict):
        return None
    try:
        event = parse_event(message)
    except InvalidRequestError:
        return None
    at, bot = message.get("at"), message.get("bot", False)
    if not (at is None or (type(at) is int and at >= 0)) or type(bot) is not bool:
        return None
    return Event(event.type, event.item, at, bot)
