"""Serve the app locally: gunicorn, as app.yaml runs it, with one worker process
holding the App Engine SDK's stubs for memcache, the task queue and Datastore.

Why gunicorn and not wsgiref: it is the server App Engine runs, so chunked
bodies, keep-alive, idle timeouts (a connection sending nothing is dropped
after a few seconds) and graceful stops behave here as they do there. It runs
one worker, so every request and every stub live in that one process; the
gunicorn master only forks it and passes signals on.

Lifecycle, in the worker:

* start: Datastore is loaded from ``<data_dir>/datastore.db`` (if there is
  one); memcache and the task queue start empty. Due tasks are sent back to
  this server over HTTP, as App Engine would send them.
* SIGTERM or Ctrl-C: stop accepting, finish the requests in flight (at most
  ``FINISH_REQUESTS_SECONDS``), drain the queue into Datastore with the
  processing task's own ``drain`` (at most ``DRAIN_SECONDS``, progress logged),
  save Datastore, exit. A second Ctrl-C stops within 2 s, like kill -9.
* kill -9, or a crash: memcache is gone with the process, and with it every
  event accepted but not yet counted (normally the last second or two: each
  slot's task runs when its slot ends). Datastore is saved every
  ``SAVE_INTERVAL_SECONDS``, so counts committed since the last save are lost too.
"""

from __future__ import annotations

import dataclasses
import errno
import http.client
import json
import logging
import os
import pickle
import re
import signal
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from wsgiref.types import WSGIApplication

from google.appengine.api import apiproxy_stub_map, datastore_file_stub, datastore_types, request_info
from google.appengine.ext import testbed
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers.gthread import ThreadWorker

from handlers.base import NOSNIFF_HEADER
from handlers.errors import AdminRequiredError, BatchFailedError, quote_prefix
from handlers.processing import drain
from handlers.settings import Settings

APP_ID = "dev~clickqueue-sample"
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
APP_ROOT = Path(__file__).resolve().parent
HOST = "127.0.0.1"
THREADS = 8  # as each of app.yaml's workers
TASK_TIMEOUT_SECONDS = 600  # App Engine's deadline for a push task
SAVE_INTERVAL_SECONDS = 5.0
FINISH_REQUESTS_SECONDS = 10
DRAIN_SECONDS = 30
DRAIN_STEP_SECONDS = 1.0
"""Progress is logged after each step of the shutdown drain."""
STOP_SECONDS = FINISH_REQUESTS_SECONDS + DRAIN_SECONDS + 20
"""How long the gunicorn master waits for the worker to stop before it kills it:
the requests in flight, the drain, and 20 s to save Datastore."""

logger = logging.getLogger("local_stubs")

CreateApp = Callable[[Settings], WSGIApplication]


class LocalDatastoreStub(datastore_file_stub.DatastoreFileStub):
    """The SDK's file-backed Datastore stub, saved on a timer instead of on every commit.

    The SDK stub rewrites its whole file after every commit (its ``Write``),
    and copies a whole entity group at the start of every transaction: with
    every counter in one group, both grow with the data and drain throughput
    falls as items accumulate. Here ``Write`` only notes the change and
    ``save`` writes the file; a transaction reads its group through a live
    view instead of a copy. Both rely on this stub running one call at a time:
    a save then never sees half a commit, and a transaction whose group
    changed under it still fails its commit on the stub's own log check.
    """

    def __init__(self, app_id: str, datastore_file: Path) -> None:
        self._call_lock = threading.RLock()  # the stub calls itself to create indexes
        self._unsaved = False
        super().__init__(
            app_id,
            str(datastore_file),
            require_indexes=True,  # a query without its index.yaml entry fails here as on App Engine
            root_path=str(APP_ROOT),
            save_changes=True,
            use_atexit=False,
        )

    def MakeSyncCall(self, service, call, request, response, request_id=None) -> None:  # noqa: N802 (SDK name)
        with self._call_lock:
            super().MakeSyncCall(service, call, request, response, request_id)

    def Read(self) -> None:  # noqa: N802
        if Path(self._DatastoreFileStub__datastore_file).exists():  # the SDK warns of a missing file
            super().Read()

    def _DatastoreFileStub__ReadPickled(self, filename: str) -> list:  # noqa: N802
        """The SDK's own reader of its data file (its format is a pickle), with the
        file closed after reading: the SDK's leaves it open."""
        if not Path(filename).is_file() or not Path(filename).stat().st_size:
            return []
        with open(filename, "rb") as data:
            return pickle.load(data, encoding="bytes")

    def Write(self) -> None:  # noqa: N802
        self._unsaved = True  # called by the stub after every commit, and under _call_lock

    def save(self) -> bool:
        """Write the file if anything changed since the last save; True if it did."""
        with self._call_lock:
            if not self._unsaved:
                return False
            super().Write()
            self._unsaved = False
            return True

    def _GetEntitiesInEntityGroup(self, entity_group) -> Mapping:  # noqa: N802
        group_key = datastore_types.ReferenceToKeyValue(entity_group)
        return _RecordView(self._DatastoreFileStub__entities_by_group.get(group_key, {}))


class _RecordView(Mapping):
    """The records of one entity group's stored entities, read live (see LocalDatastoreStub)."""

    def __init__(self, stored_entities: dict) -> None:
        self.stored_entities = stored_entities

    def __getitem__(self, key):
        return self.stored_entities[key].record

    def __iter__(self) -> Iterator:
        return iter(self.stored_entities)

    def __len__(self) -> int:
        return len(self.stored_entities)


class _LoopbackDispatcher(request_info.Dispatcher):
    """Sends the task queue stub's due tasks to this server as HTTP requests."""

    def __init__(self, port: int) -> None:
        self.port = port

    def add_request(
        self, method, relative_url, headers, body, source_ip, module_name=None, version=None, instance_id=None
    ) -> request_info.ResponseTuple:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=TASK_TIMEOUT_SECONDS)
        try:
            connection.request(method, relative_url, body=body, headers=dict(headers))
            response = connection.getresponse()
            return request_info.ResponseTuple(
                f"{response.status} {response.reason}", response.getheaders(), response.read()
            )
        except OSError as error:  # the stub logs it and retries the task with backoff
            raise request_info.Error(f"task {method} {relative_url} not delivered: {error!r}") from error
        finally:
            connection.close()


class _LocalRequestInfo(request_info.RequestInfo):
    """What the task queue stub asks about requests: one module, our dispatcher."""

    def __init__(self, dispatcher: request_info.Dispatcher) -> None:
        self.dispatcher = dispatcher

    def get_dispatcher(self) -> request_info.Dispatcher:
        return self.dispatcher

    def get_module(self, request_id: str) -> str:
        return "default"


class LocalServices:
    """The stubs of one worker process, and what starts and stops them."""

    def __init__(self, port: int, data_dir: Path, settings: Settings) -> None:
        os.environ.pop("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", None)  # never send tasks to Cloud Tasks
        self.settings = settings
        self.datastore_file = data_dir / "datastore.db"
        self.bed = testbed.Testbed()
        self.bed.activate()
        self.bed.setup_env(app_id=APP_ID, overwrite=True)
        self.bed.init_memcache_stub()
        self.datastore = LocalDatastoreStub(APP_ID, self.datastore_file)
        apiproxy_stub_map.apiproxy.RegisterStub("datastore_v3", self.datastore)
        self.bed.init_taskqueue_stub(
            root_path=str(APP_ROOT),
            auto_task_running=True,
            request_data=_LocalRequestInfo(_LoopbackDispatcher(port)),
        )
        self.task_queue = self.bed.get_stub(testbed.TASKQUEUE_SERVICE_NAME)
        self._stopping = threading.Event()
        self._saver = threading.Thread(target=self._save_periodically, name="datastore-saver", daemon=True)

    def start_background_work(self) -> None:
        """Run due tasks and save Datastore on a timer (once the app exists: see ``LocalServer.load``)."""
        self.task_queue.StartBackgroundExecution()
        self._saver.start()

    def stop_running_tasks(self) -> None:
        """Run no more tasks: the shutdown drains the queue itself."""
        self.task_queue.Shutdown()

    def _save_periodically(self) -> None:
        while not self._stopping.wait(SAVE_INTERVAL_SECONDS):
            self.datastore.save()

    def stop(self) -> None:
        """Drain the queue into Datastore (bounded, with progress), save it, deactivate the stubs."""
        self.stop_running_tasks()
        self._stopping.set()
        if self._saver.is_alive():
            self._saver.join()
        self.drain_queue()
        self.datastore.save()
        self.bed.deactivate()
        logger.info("stopped; datastore saved to %s", self.datastore_file)

    def drain_queue(self) -> None:
        """Count every queued event, as the processing task does; log what could not be."""
        queue = self.settings.queue
        logger.info("stopping: draining %d queued events into the datastore", queue.stats().depth)
        step = dataclasses.replace(self.settings, time_budget_seconds=DRAIN_STEP_SECONDS)
        deadline = time.monotonic() + DRAIN_SECONDS
        counted = 0
        while time.monotonic() < deadline:
            try:
                report = drain(step)
            except BatchFailedError as error:
                logger.error("draining failed: %s", error)
                break
            counted += report.processed
            if not report.budget_spent:
                break
            logger.info("draining: %d events counted, %d still queued", counted, queue.stats().depth)
        stats = queue.stats()
        logger.info("drained: %d events counted", counted)
        if stats.depth or stats.leased:
            logger.warning(
                "%d queued and %d leased events were not counted and are lost with memcache", stats.depth, stats.leased
            )


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
        if self.app.services is not None:
            self.app.services.stop_running_tasks()
        super().handle_exit(sig, frame)

    def run(self) -> None:
        try:
            super().run()
        finally:
            if self.app.services is not None:
                self.app.services.stop()
        # Everything is saved. A thread still reading from a client that sent half
        # a request past the grace period would keep the process alive until the
        # master kills it: end it now.
        os._exit(0)


class _LocalArbiter(Arbiter):
    """gunicorn's master, for which Ctrl-C (SIGINT) is a graceful stop, as SIGTERM is."""

    def handle_int(self) -> None:
        self.handle_term()


class LocalServer(BaseApplication):
    """gunicorn serving ``create_app(settings)`` on the stubs, in one worker on 127.0.0.1."""

    def __init__(self, create_app: CreateApp, port: int, data_dir: Path, admin_paths: Collection[str]) -> None:
        self.create_app = create_app
        self.port = port
        self.data_dir = data_dir
        self.admin_paths = admin_paths
        self.services: LocalServices | None = None
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
        """In the worker: the stubs first (``wrap_wsgi_app`` copies the environment), then the app."""
        settings = Settings()
        self.services = LocalServices(self.port, self.data_dir, settings)
        settings.links.key()  # a key made now is saved next, before any link is signed with it
        self.services.datastore.save()
        app = self.create_app(settings)
        self.services.start_background_work()
        logger.info(
            "serving http://%s:%d/ (gunicorn, 1 worker, %d threads); Ctrl-C or SIGTERM drains the queue and stops",
            HOST,
            self.port,
            THREADS,
        )
        logger.info("datastore: %s, saved every %g s and on stop", self.services.datastore_file, SAVE_INTERVAL_SECONDS)
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
            "memcache, which holds the events not yet counted, lives in this process: kill -9 or a crash loses "
            "them (normally the last second or two) and the counts of the last %g s",
            SAVE_INTERVAL_SECONDS,
        )
        return _as_local_admin(app, self.admin_paths, local_hosts)


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
        body = json.dumps(refusal.body()).encode()
        start_response(
            f"{refusal.status} {http.client.responses[refusal.status]}",
            [("Content-Type", "application/json"), ("Content-Length", str(len(body))), NOSNIFF_HEADER],
        )
        return [body]

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


def serve(create_app: CreateApp, port: int, data_dir: Path, admin_paths: Collection[str]) -> None:
    """Serve ``create_app(settings)`` on 127.0.0.1:``port`` until SIGTERM or Ctrl-C; ``admin_paths``
    answer only requests for a local host name."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    _exit_unless_settings_valid()
    _exit_unless_port_free(port)
    data_dir.mkdir(parents=True, exist_ok=True)
    server = LocalServer(create_app, port, data_dir, admin_paths)
    try:
        _LocalArbiter(server).run()
    except RuntimeError as error:
        sys.exit(f"gunicorn: {error}")
