"""The development server's gunicorn, and ``serve``, which ``main.py`` runs.

One worker holding the stubs, bound to 127.0.0.1, its requests the local
admin's, Ctrl-C a graceful stop.
"""

from __future__ import annotations

import errno
import logging
import math
import multiprocessing
import os
import re
import signal
import socket
import sys
import time
import urllib.parse
from collections.abc import Callable, Collection
from pathlib import Path
from wsgiref.types import WSGIApplication

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker

from clicks.http_errors import AdminRequiredError, quote_prefix
from clicks.settings import Settings
from devserver import HOST
from devserver.gate import json_answer
from devserver.queue_file import LocalDataError
from devserver.services import (
    CUT_REQUESTS_WAIT_SECONDS,
    DRAIN_SECONDS,
    HOLD_TASKS_ENV,
    SAVE_INTERVAL_SECONDS,
    STOP_DRAIN_ENV,
    LocalServices,
)

LOCAL_ADMIN = {
    "HTTP_X_APPENGINE_USER_EMAIL": "admin@localhost",
    "HTTP_X_APPENGINE_USER_ID": "1",
    "HTTP_X_APPENGINE_USER_IS_ADMIN": "1",
}
"""What App Engine's front end says of a request from a signed-in admin: here, of every
request for a local host name."""
LOCAL_HOSTS_ENV = "CLICKQUEUE_LOCAL_HOSTS"
LOOPBACK_HOST_NAMES = ("127.0.0.1", "localhost", "::1")
"""Host names whose requests are the local admin's; ``CLICKQUEUE_LOCAL_HOSTS`` adds others
(separated by spaces or commas). A page of any other name resolved to 127.0.0.1 (DNS
rebinding) would otherwise read the admin pages."""
THREADS = 8  # as each of app.yaml's workers
FINISH_REQUESTS_SECONDS = 10
REQUEST_READ_SECONDS = 10
"""The longest a request may take to arrive, from its first byte to its body's last:
a client slower than that is cut (``_ReadDeadline``), so a few slow clients cannot hold
every thread. App Engine's front end reads requests whole before the app sees them."""
STOP_SECONDS = FINISH_REQUESTS_SECONDS + CUT_REQUESTS_WAIT_SECONDS + DRAIN_SECONDS + 20
"""How long the gunicorn master waits for the worker to stop before it kills it:
the requests in flight, those cut, the drain, and 20 s to save Datastore and the queue."""

logger = logging.getLogger(__name__)

CreateApp = Callable[[Settings], WSGIApplication]


class RequestReadTimeout(NoMoreData, TimeoutError):
    """A request did not arrive in ``REQUEST_READ_SECONDS``: gunicorn drops the connection
    quietly (NoMoreData), and the app answers a body read 408 (TimeoutError)."""


class _ReadDeadline:
    """A client socket whose reads end at a deadline, set for each request; the rest passes through."""

    def __init__(self, client: socket.socket) -> None:
        self._client = client
        self.deadline = math.inf
        self.timed_out = False
        self.answered = False

    def start_request(self) -> None:
        self.deadline = time.monotonic() + REQUEST_READ_SECONDS
        self.timed_out = self.answered = False

    def recv(self, size: int, *flags: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        before = self._client.gettimeout()
        if remaining <= 0 or (before is not None and before <= 0):  # past the deadline, or a non-blocking read
            if remaining <= 0:
                self.timed_out = True
                raise RequestReadTimeout()
            return self._client.recv(size, *flags)
        self._client.settimeout(remaining if before is None else min(before, remaining))
        try:
            return self._client.recv(size, *flags)
        except TimeoutError:
            if time.monotonic() < self.deadline:
                raise  # a shorter timeout of gunicorn's own
            self.timed_out = True
            raise RequestReadTimeout() from None
        finally:
            self._client.settimeout(before)

    def sendall(self, data: bytes, *flags: int) -> None:
        self.answered = True
        self._client.sendall(data, *flags)

    def __getattr__(self, name: str):
        return getattr(self._client, name)


class _LocalWorker(ThreadWorker):
    """gunicorn's threaded worker, holding the stubs.

    Ctrl-C sends SIGINT to the master and the worker at once: the worker takes
    it as SIGTERM (a graceful stop), where gunicorn's own would quit at once.
    Once serving stops, the queue is drained, Datastore saved, and the process ends.
    """

    app: LocalServer

    def init_process(self) -> None:
        # This worker's own copy of the settings: the master waits longer (STOP_SECONDS).
        self.cfg.set("graceful_timeout", FINISH_REQUESTS_SECONDS)
        super().init_process()

    def init_signals(self) -> None:
        super().init_signals()
        signal.signal(signal.SIGINT, self.handle_exit)

    def handle_exit(self, sig, frame) -> None:
        """Stop serving, and have the main loop stop the task runner.

        Nothing here takes a lock: a signal handler runs on the main thread between
        two of its bytecodes, and Ctrl-C reaches the worker twice (its own SIGINT, then
        the master's SIGTERM), the second while the first may be inside a lock; stopping
        the task runner takes the scheduler's, so it is deferred to the main loop
        (gunicorn's method queue, which a signal handler may use)."""
        if self.alive and self.app.services is not None:
            self.method_queue.defer(self.app.services.stop_running_tasks)
        super().handle_exit(sig, frame)

    def handle(self, conn):
        """gunicorn's, with the request's reads bounded by ``REQUEST_READ_SECONDS``."""
        if not isinstance(conn.sock, _ReadDeadline):
            conn.sock = _ReadDeadline(conn.sock)
        conn.sock.start_request()
        outcome = super().handle(conn)
        if conn.sock.timed_out and not conn.sock.answered:  # an answered body read was logged by the app
            logger.warning(
                "cut a connection from %s:%s: its request took over %g s to arrive",
                *conn.client[:2],
                REQUEST_READ_SECONDS,
            )
        return outcome

    def run(self) -> None:
        status = 1
        try:
            super().run()
        finally:
            if self.app.services is not None:
                status = self.app.services.stop()
                self.app.stop_status.value = status
        # Everything is saved, and memcache held. A thread still in a request would
        # keep the process alive until the master kills it: end it now.
        os._exit(status)


class _LocalArbiter(Arbiter):
    """gunicorn's master, for which Ctrl-C (SIGINT) is a graceful stop, as SIGTERM is."""

    def handle_int(self) -> None:
        self.handle_term()


class LocalServer(BaseApplication):
    """gunicorn serving ``create_app(settings)`` on the stubs, in one worker on 127.0.0.1."""

    def __init__(
        self,
        create_app: CreateApp,
        port: int,
        data_dir: Path,
        admin_paths: Collection[str],
        drain_seconds: float,
        run_tasks: bool,
    ) -> None:
        self.create_app = create_app
        self.port = port
        self.data_dir = data_dir
        self.admin_paths = admin_paths
        self.drain_seconds = drain_seconds
        self.run_tasks = run_tasks
        self.services: LocalServices | None = None
        self.stop_status = multiprocessing.Value("i", 1, lock=False)
        """The worker's stop's exit status, shared with the master: 1 until a stop saved everything."""
        super().__init__()

    def load_config(self) -> None:
        settings = {
            "bind": f"{HOST}:{self.port}",
            "workers": 1,
            "worker_class": _LocalWorker,
            "threads": THREADS,
            "graceful_timeout": STOP_SECONDS,
            "control_socket_disable": True,
            "loglevel": os.environ.get("LOG_LEVEL", "info").lower(),
        }
        for name, value in settings.items():
            self.cfg.set(name, value)

    def load(self) -> WSGIApplication:
        """In the worker: the stubs, then the app, then the start's Datastore work.

        ``wrap_wsgi_app`` copies the environment, which the stubs set up, into every
        request's. ndb marks the environment it makes its context in: one Datastore call
        through ndb before that copy marks every request's, and each thread then keeps one
        context, with its cache, across all its requests, answering the counts an earlier
        request on it read. So nothing reads Datastore through ndb before the app exists."""
        settings = Settings()
        try:
            self.services = LocalServices(self.port, self.data_dir, settings, self.drain_seconds, self.run_tasks)
        except LocalDataError as error:
            logger.error("%s", error)
            sys.exit(Arbiter.APP_LOAD_ERROR)  # gunicorn's master stops too
        app = self.create_app(settings)
        self.services.start()
        logger.info(
            "serving http://%s:%d/ (gunicorn, 1 worker, %d threads); Ctrl-C or SIGTERM drains the queue and stops",
            HOST,
            self.port,
            THREADS,
        )
        logger.info(
            "datastore: %s, saved with the queue every %g s and on stop",
            self.services.datastore_file,
            SAVE_INTERVAL_SECONDS,
        )
        local_hosts = local_host_names()
        logger.info(
            "admin pages are open locally: http://%s:%d/dashboard, /stats and /links ask no sign-in here (every "
            "request for host %s counts as admin %s); only this machine can reach them (%s)",
            HOST,
            self.port,
            ", ".join(sorted(local_hosts)),
            LOCAL_ADMIN["HTTP_X_APPENGINE_USER_EMAIL"],
            HOST,
        )
        logger.info(
            "memcache, which holds the events not yet counted, lives in this process: it is saved with the "
            "datastore (to %s) and put back at start; kill -9 or a crash loses the events accepted since the last "
            "save, at most the last %g s and the length of a save",
            self.services.queue_file.path,
            SAVE_INTERVAL_SECONDS,
        )
        return self.services.gate.wrap(_as_local_admin(app, self.admin_paths, local_hosts))


def local_host_names() -> frozenset[str]:
    """The host names whose requests are the local admin's: loopback, and those of ``CLICKQUEUE_LOCAL_HOSTS``."""
    named = re.split(r"[\s,]+", os.environ.get(LOCAL_HOSTS_ENV, ""))
    return frozenset(LOOPBACK_HOST_NAMES) | {name.lower().strip("[]") for name in named if name}


def _as_local_admin(app: WSGIApplication, admin_paths: Collection[str], local_hosts: frozenset[str]) -> WSGIApplication:
    """``app`` with every request for a local host name from the local admin (``python main.py``
    has no sign-in). A request for another name, as App Engine's front end treats one from
    outside, loses its ``X-AppEngine-*`` headers; for an admin page it is refused (403)."""

    def app_as_admin(environ: dict, start_response):
        host = environ.get("HTTP_HOST") or environ["SERVER_NAME"]
        host_name = urllib.parse.urlsplit(f"//{host}").hostname or ""
        if host_name in local_hosts:
            environ.update(LOCAL_ADMIN)
            return app(environ, start_response)
        for name in [name for name in environ if name.startswith("HTTP_X_APPENGINE_")]:
            del environ[name]
        if environ.get("PATH_INFO") not in admin_paths:
            return app(environ, start_response)
        refusal = AdminRequiredError(
            "python main.py answers its admin pages only for host 127.0.0.1, localhost, [::1] or one named in "
            f"{LOCAL_HOSTS_ENV}; this request is for {quote_prefix(host_name)}"
        )
        return json_answer(start_response, refusal)

    return app_as_admin


def parse_port(text: str) -> int:
    """``PORT``'s value as a port number; exit with one line saying what is wrong otherwise."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        sys.exit(f"PORT must be a port number from 1 to 65535; got {text!r}")
    return int(text)


def _exit_unless_port_free(port: int) -> None:
    """gunicorn retries a busy port for 5 s and logs each try: say it once, at once."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        try:
            probe.bind((HOST, port))
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                sys.exit(f"port {port} on {HOST} is in use: stop what listens there, or set PORT to another port")
            sys.exit(f"cannot listen on {HOST}:{port}: {error.strerror}")


def _exit_unless_settings_valid() -> None:
    """A setting from the environment that is wrong (CLICKQUEUE_ALLOWED_ORIGINS,
    CLICKQUEUE_LINK_KEY): say which in one line, before gunicorn starts."""
    try:
        Settings()
    except ValueError as error:
        sys.exit(str(error))


def parse_drain_seconds(text: str) -> float:
    """``CLICKQUEUE_STOP_DRAIN_SECONDS``'s value; exit with one line saying what is wrong otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not 0 <= seconds <= DRAIN_SECONDS:
        sys.exit(f"{STOP_DRAIN_ENV} must be a number of seconds from 0 to {DRAIN_SECONDS}; got {text!r}")
    return seconds


def parse_hold_tasks(text: str) -> bool:
    """``CLICKQUEUE_DISABLE_TASK_RUNNING``'s value (``0`` or ``1``): whether tasks are held."""
    if text not in ("0", "1"):
        sys.exit(f"{HOLD_TASKS_ENV} must be 0 or 1; got {text!r}")
    return text == "1"


def serve(
    create_app: CreateApp,
    port: int,
    data_dir: Path,
    admin_paths: Collection[str],
    drain_seconds: float = DRAIN_SECONDS,
    run_tasks: bool = True,
) -> None:
    """Serve ``create_app(settings)`` on 127.0.0.1:``port`` until SIGTERM or Ctrl-C; ``admin_paths``
    answer only requests for a local host name; a stop counts the queue for ``drain_seconds``
    at most, then saves the rest; ``run_tasks=False`` runs no task until then."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _exit_unless_settings_valid()
    _exit_unless_port_free(port)
    data_dir.mkdir(parents=True, exist_ok=True)
    server = LocalServer(create_app, port, data_dir, admin_paths, drain_seconds, run_tasks)
    try:
        _LocalArbiter(server).run()
    except RuntimeError as error:
        sys.exit(f"gunicorn: {error}")
    except SystemExit as stopped:
        if not stopped.code and server.stop_status.value:  # the worker's stop did not save everything: it said why
            sys.exit(server.stop_status.value)
        raise
