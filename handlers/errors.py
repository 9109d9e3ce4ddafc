"""Errors that are HTTP answers: each knows its status and JSON body."""

from __future__ import annotations


class RequestError(Exception):
    """An error answered as ``status`` with ``{"error": message, **details}``."""

    status = 500

    def __init__(self, message: str, **details: int) -> None:
        super().__init__(message)
        self.details = details

    def body(self) -> dict[str, object]:
        return {"error": str(self), **self.details}


class InvalidRequestError(RequestError, ValueError):
    """The request's input is invalid; nothing was recorded."""

    status = 400


class ForbiddenError(RequestError):
    """The request lacks the header only App Engine itself can set."""

    status = 403


class BatchFailedError(RequestError):
    """Processing a batch failed; the batch went back to the queue for a retry."""

    status = 503

    def __init__(self, cause: Exception, processed: int, requeued: int) -> None:
        super().__init__(f"batch failed and was given back: {cause!r}", processed=processed, requeued=requeued)
