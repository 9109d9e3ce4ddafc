"""A TCP proxy in front of a real memcached that loses replies on demand.

pymemcache talks to the proxy; the proxy forwards bytes both ways. Told to,
it cuts a connection after the server has received a request but before its
answer reaches the client (a lost reply: the call was applied, the client saw
an error), or after forwarding only the first bytes of a request (part of a
pipelined batch applied); or it answers in the server's place (a server error). It binds 127.0.0.1 and stops its threads on close.
"""

from __future__ import annotations

import socket
import threading
import time


class FaultProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address = self.listener.getsockname()
        self.lose_replies = 0
        """Connections to cut when the server's next answer arrives."""
        self.forward_request_bytes: int | None = None
        """If set, the next request is cut after this many bytes reach the server."""
        self.split_answer_at: int | None = None
        """If set, the server's next answer goes out in two sends this many bytes apart, a
        moment between them: a reply the client reads in two pieces."""
        self.answer_instead: bytes | None = None
        """If set, the server's next answer is dropped and these bytes sent in its place."""
        self.cut = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, is_request: bool) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._close_pair(source, target)
                return
            with self._lock:
                if is_request and self.forward_request_bytes is not None:
                    data, self.forward_request_bytes = data[: self.forward_request_bytes], None
                    cut = True
                elif not is_request and self.split_answer_at is not None:
                    split, self.split_answer_at, cut = self.split_answer_at, None, False
                    target.sendall(data[:split])
                    time.sleep(0.02)  # the client's recv returns the first piece alone
                    data = data[split:]
                elif not is_request and self.answer_instead is not None:
                    data, self.answer_instead, cut = self.answer_instead, None, False
                elif not is_request and self.lose_replies:
                    self.lose_replies -= 1
                    data, cut = b"", True
                else:
                    cut = False
            try:
                target.sendall(data)
            except OSError:
                self._close_pair(source, target)
                return
            if cut:
                self.cut += 1
                if is_request:
                    # Let the server read what was forwarded before the connection goes.
                    target.shutdown(socket.SHUT_WR)
                self._close_pair(source, target)
                return

    def _close_pair(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.listener.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        self._close_pair(*sockets)
        self._acceptor.join(timeout=5)
