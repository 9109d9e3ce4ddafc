"""HTTP/1.1 exchanges on a raw socket: requests no client library would send
(a malformed chunk, a body shorter than its Content-Length, a half-close),
and their answers parsed by ``http.client``."""

from __future__ import annotations

import http.client
import json
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class RawAnswer:
    status: int
    body: bytes

    def json(self):
        return json.loads(self.body)


def exchange(port: int, request: bytes, *, half_close: bool = False, timeout_seconds: float = 30) -> RawAnswer:
    """Send ``request`` as it is on a connection of its own (then close our side if
    ``half_close``) and read the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_seconds) as connection:
        connection.sendall(request)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        answer = http.client.HTTPResponse(connection)
        try:
            answer.begin()
            return RawAnswer(answer.status, answer.read())
        finally:
            answer.close()


def post_head(path: str, content_type: str, *, length: int | None = None) -> bytes:
    """A POST's request line and headers: with ``length``, a Content-Length; else chunked."""
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n".encode()
