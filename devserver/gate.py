"""Requests let into the development server's app until its stop closes the gate."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
from wsgiref.types import WSGIApplication

from clicks.http_errors import RequestError, ServiceUnavailableError
from handlers.base import NOSNIFF_HEADER


class RequestGate:
    """WSGI middleware that lets requests into the app until the stop closes it.

    Then a new request is answered 503, and those still in the app (reading a
    slow body, say) are cut from their clients' bytes: their reads end, so they
    answer an error and leave. The final drain starts once none is inside, and
    no request is answered 2xx for an event stored after it began."""

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._open = True
        self._inside: dict[int, socket.socket | None] = {}

    def wrap(self, app: WSGIApplication) -> WSGIApplication:
        def gated(environ: dict, start_response):
            with self._changed:
                if not self._open:
                    return json_answer(
                        start_response,
                        ServiceUnavailableError("the server is stopping: nothing was recorded; send it again later"),
                    )
                ticket = id(environ)
                self._inside[ticket] = environ.get("gunicorn.socket")
            try:
                return app(environ, start_response)
            finally:
                with self._changed:
                    del self._inside[ticket]
                    self._changed.notify_all()

        return gated

    def close(self, wait_seconds: float) -> int:
        """Let no more requests in, cut the reading of those inside, and wait for them to
        leave, at most ``wait_seconds``; how many are still inside then."""
        with self._changed:
            self._open = False
            for client in self._inside.values():
                if client is not None:
                    with contextlib.suppress(OSError):  # the client is gone already
                        client.shutdown(socket.SHUT_RD)
            self._changed.wait_for(lambda: not self._inside, wait_seconds)
            return len(self._inside)


def json_answer(start_response, error: RequestError) -> list[bytes]:
    """``error`` answered as the app answers its errors (handlers/base.py), by the development server's own layers."""
    body = json.dumps(error.body()).encode()
    start_response(
        f"{error.status} {http.client.responses[error.status]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), NOSNIFF_HEADER],
    )
    return [body]
