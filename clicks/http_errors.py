"""Errors that are HTTP answers, raised by the domain and the handlers: each knows its status, body, headers."""

from __future__ import annotations

QUOTED_PREFIX_CHARACTERS = 40
"""Most characters of a client's value an error text repeats: enough to recognise
it, never enough to echo a 5 MB value back."""


def quote_prefix(value: object) -> str:
    """``repr`` of a client's value, cut to its first characters (with the length when cut)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) <= QUOTED_PREFIX_CHARACTERS:
        return repr(text)
    return f"{text[:QUOTED_PREFIX_CHARACTERS]!r}... ({len(text)} characters)"


class RequestError(Exception):
    """An error answered as ``status`` with ``{"error": message, **details}``."""

    status = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None, **details: int) -> None:
        super().__init__(message)
        self.headers = headers or {}
        self.details = details

    def body(self) -> dict[str, object]:
        return {"error": str(self), **self.details}


class InvalidRequestError(RequestError, ValueError):
    """The request's input is invalid; nothing was recorded."""

    status = 400


class ForbiddenError(RequestError):
    """The request lacks the header only App Engine itself can set."""

    status = 403


class NotFoundError(RequestError):
    """No route serves the request's path."""

    status = 404


class MethodNotAllowedError(RequestError):
    """The path exists, but not for this method; ``Allow`` lists the methods it has."""

    status = 405

    def __init__(self, method: str, allowed: list[str]) -> None:
        super().__init__(
            f"method {quote_prefix(method)} is not allowed here; use {', '.join(allowed)}",
            headers={"Allow": ", ".join(allowed)},
        )


class RequestTimeoutError(RequestError):
    """The request's body did not arrive within the server's read deadline."""

    status = 408


class LengthRequiredError(RequestError):
    """A body of unknown length that the server in front of the app did not decode."""

    status = 411


class PayloadTooLargeError(RequestError):
    """A request body over the app's limit; it was not read."""

    status = 413


class UriTooLongError(RequestError):
    """A request URL over the app's limit."""

    status = 414


class ServiceUnavailableError(RequestError):
    """The queue (memcache) failed; the client may retry."""

    status = 503


class QueueFullError(RequestError):
    """The queue's backlog is full (``Settings.max_queue_depth``): nothing was recorded;
    the client may send the events again after ``Retry-After`` seconds."""

    status = 503

    def __init__(self, backlog: int, max_queue_depth: int, retry_after_seconds: int) -> None:
        super().__init__(
            f"the queue is full ({backlog} events not yet counted, the limit is {max_queue_depth}): "
            f"nothing was recorded; send the events again in {retry_after_seconds} s",
            headers={"Retry-After": str(retry_after_seconds)},
        )


class HttpStatusError(RequestError):
    """An HTTP error a handler raised through webapp2's ``abort``."""

    def __init__(self, status: int, message: str, allow: str | None) -> None:
        super().__init__(message, headers={"Allow": allow} if allow else None)
        self.status = status


class InternalError(RequestError):
    """A bug: the traceback is in the log, not in the answer."""

    status = 500


class BatchFailedError(RequestError):
    """Processing a batch failed; the batch went back to the queue for a retry."""

    status = 503

    def __init__(self, cause: Exception, processed: int, requeued: int) -> None:
        super().__init__(f"batch failed and was given back: {cause!r}", processed=processed, requeued=requeued)


class OriginNotAllowedError(RequestError):
    """A browser sent events from a page whose origin is not in the allowed-origins setting."""

    status = 403

    def __init__(self, origin: str | None, site: str | None = None) -> None:
        """``origin``: the page's, as the browser named it; None if it named none, and
        ``site`` is what its ``Sec-Fetch-Site`` said."""
        if origin is None:
            super().__init__(
                f"pages of another site (Sec-Fetch-Site: {quote_prefix(site)}) that name no origin may not send "
                "events here: only the app's own pages and those of its CLICKQUEUE_ALLOWED_ORIGINS may"
            )
            return
        super().__init__(
            f"pages of origin {quote_prefix(origin)} may not send events here: "
            "add it to the app's CLICKQUEUE_ALLOWED_ORIGINS (app.yaml)"
        )


class AdminRequiredError(RequestError):
    """Only the app's admins may see this (App Engine's ``login: admin`` and the Users API)."""

    status = 403
