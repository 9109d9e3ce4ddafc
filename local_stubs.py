"""Serve the app locally: gunicorn, as app.yaml runs it, with one worker process
holding the App Engine SDK's stubs for memcache, the task queue and Datastore.

Why gunicorn and not wsgiref: it is the server App Engine runs, so chunked
bodies, keep-alive, idle timeouts (a connection sending nothing is dropped
after a few seconds) and graceful stops behave here as they do there. It runs
one worker, so every request and every stub live in that one process; the
gunicorn master only forks it and passes signals on.

Lifecycle, in the worker:

* start: Datastore is loaded from ``<data_dir>/datastore.db`` (if there is
  one), and the queue's memcache keys saved with it from ``queue.json``
  (local_queue_file.py); batches a processor of the last run held are counted
  at once, the rest by a task. The task queue starts empty. Due tasks are sent
  back to this server over HTTP, as App Engine would send them.
* serving: Datastore and the queue are saved together every
  ``SAVE_INTERVAL_SECONDS``.
* SIGTERM or Ctrl-C: stop accepting, finish the requests in flight (at most
  ``FINISH_REQUESTS_SECONDS``), cut those still reading and let no other in
  (``RequestGate``), drain the queue into Datastore with the processing task's
  own ``drain`` (at most ``DRAIN_SECONDS``, progress logged), fold the recorded
  batches into the count store as the fold task does, save Datastore and the
  rest of the queue, exit: 0, or 1 if the save failed or the queue lost events
  while serving. A second Ctrl-C stops within 2 s, like kill -9.
* kill -9, or a crash: the next start restores the last save; the events
  accepted after it are lost (at most ``SAVE_INTERVAL_SECONDS`` and the length
  of a save), the counts made after it are made again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import http.client
import json
import logging
import math
import multiprocessing
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

from google.appengine.api import apiproxy_stub_map, datastore_file_stub, datastore_types, request_info, taskqueue
from google.appengine.ext import testbed
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.http.errors import NoMoreData
from gunicorn.workers.gthread import ThreadWorker

from clickqueue import Queue
from clicks import counting
from clicks.http_errors import (
    AdminRequiredError,
    BatchFailedError,
    RequestError,
    ServiceUnavailableError,
    quote_prefix,
)
from clicks.processing import FOLD_PATH, PROCESS_PATH, drain
from clicks.settings import Settings
from handlers.base import NOSNIFF_HEADER
from local_queue_file import LocalDataError, QueueFile, SavedEntry, SavedQueue, copy_queue_entries, restore

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
REQUEST_READ_SECONDS = 10
"""The longest a request may take to arrive, from its first byte to its body's last:
a client slower than that is cut (``_ReadDeadline``), so a few slow clients cannot hold
every thread. App Engine's front end reads requests whole before the app sees them."""
CUT_REQUESTS_WAIT_SECONDS = 10
"""After the requests in flight had their time: how long those still in the app (cut
from their clients' bytes) may take to leave it before the drain starts without them
(a /process request runs for its 5-second budget)."""
DRAIN_SECONDS = 30
"""The longest a stop spends counting the queue before it saves the rest (``CLICKQUEUE_STOP_DRAIN_SECONDS``
sets less; 0 saves it all at once)."""
STOP_DRAIN_ENV = "CLICKQUEUE_STOP_DRAIN_SECONDS"
HOLD_TASKS_ENV = "CLICKQUEUE_DISABLE_TASK_RUNNING"
"""``1`` runs no task while serving, as dev_appserver's ``--disable_task_running``: events
queue up uncounted until the stop drains them (or the next start, after a crash)."""
DRAIN_STEP_SECONDS = 1.0
"""Progress is logged after each step of the shutdown drain."""
STOP_SECONDS = FINISH_REQUESTS_SECONDS + CUT_REQUESTS_WAIT_SECONDS + DRAIN_SECONDS + 20
"""How long the gunicorn master waits for the worker to stop before it kills it:
the requests in flight, those cut, the drain, and 20 s to save Datastore and the queue."""

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

    def save(self, while_held: Callable[[int], None] | None = None) -> bool:
        """Write the file if anything changed since the last save; True if it did.

        ``while_held(version)`` runs first, while no Datastore call can: ``version``
        (the timestamp of the last commit, which the file holds) names the data
        this save writes, and what ``while_held`` saves goes with it."""
        with self._call_lock:
            if while_held is not None:
                while_held(self.version())
            if not self._unsaved:
                return False
            super().Write()
            self._unsaved = False
            return True

    def version(self) -> int:
        """The timestamp of the last commit: it names the data (and is saved in the file)."""
        with self._call_lock:
            return self._GetReadTimestamp()

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
            # Its own Host: the stub names the app's default host name for a task added outside a request.
            sent_headers = {name: value for name, value in dict(headers).items() if name.lower() != "host"}
            connection.request(method, relative_url, body=body, headers={**sent_headers, "Host": f"{HOST}:{self.port}"})
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

    def __init__(
        self,
        port: int,
        data_dir: Path,
        settings: Settings,
        drain_seconds: float = DRAIN_SECONDS,
        run_tasks: bool = True,
    ) -> None:
        os.environ.pop("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", None)  # never send tasks to Cloud Tasks
        self.settings = settings
        self.drain_seconds = drain_seconds
        self.run_tasks = run_tasks
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
        self.memcache = self.bed.get_stub(testbed.MEMCACHE_SERVICE_NAME)
        self.queue_file = QueueFile(data_dir)
        self.gate = RequestGate()
        self._save_lock = threading.Lock()
        self._last_saved_queue: tuple[int, list[SavedEntry]] | None = None
        self._stopping = threading.Event()
        self._saver = threading.Thread(target=self._save_periodically, name="datastore-saver", daemon=True)
        self.lost_before = self._restore_queue()

    def _restore_queue(self) -> int:
        """Put back the queue saved with this Datastore, if any (memcache only: ``start``
        counts the batches it holds); the queue's ``lost`` count then."""
        saved = self.queue_file.load(self.datastore.version())
        if saved is None:
            return 0
        restore(saved.entries, time.time())
        stats = self.settings.queue.stats()
        log = logger.info if saved.stopped else logger.warning
        log(
            "restored the queue saved at %s %s: %d events queued, %d leased, %d lost so far",
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(saved.saved_at)),
            "by an orderly stop"
            if saved.stopped
            else "while serving: the last run ended without an orderly stop (kill -9, a crash), and the events it "
            "accepted after that save are lost",
            stats.depth,
            stats.leased,
            stats.lost,
        )
        return stats.lost

    def _count_orphaned_leases(self) -> None:
        """Count the batches a processor of the last run held: it ended with that run, so
        they are taken over now, not once their leases expire. Through a queue whose clock
        runs one lease ahead, where they have expired; each comes back under its lease id,
        which its CountedBatch knows (none is counted twice)."""
        queue = self.settings.queue
        ahead = Queue(queue.name, shards=queue.shards, clock=lambda: time.time() + self.settings.lease_seconds)
        step = dataclasses.replace(self.settings, queue=ahead, time_budget_seconds=DRAIN_STEP_SECONDS)
        try:
            while drain(step).caught_up:  # a short orphaned batch stops a drain; the next goes on
                pass
        except BatchFailedError as error:
            logger.error(
                "counting the batches held when the last run ended failed (%s): they wait for their leases to expire",
                error,
            )

    def start(self) -> None:
        """Once the app exists (``LocalServer.load`` says why): count the batches a processor
        of the last run held, make the link key and save it, then run due tasks and save on a
        timer, count the rest of a restored queue, and fold the batches the last run recorded
        but did not fold."""
        if self.settings.queue.stats().leased:
            self._count_orphaned_leases()
            self.lost_before = self.settings.queue.stats().lost  # what those batches lacked, the last run lost
        self.settings.links.key()  # a key made now is saved next, before any link is signed with it
        self.save()
        if self.run_tasks:
            self.task_queue.StartBackgroundExecution()
        else:
            logger.warning("%s=1: no task runs; events are counted only when the server stops", HOLD_TASKS_ENV)
        self._saver.start()
        if self.settings.queue.stats().depth:
            taskqueue.add(url=PROCESS_PATH, queue_name=self.settings.task_queue_name)
        if counting.unfolded_batches(1):
            taskqueue.add(url=FOLD_PATH, queue_name=self.settings.fold_queue_name)

    def stop_running_tasks(self) -> None:
        """Run no more tasks: the shutdown drains the queue itself."""
        self.task_queue.Shutdown()

    def _save_periodically(self) -> None:
        while not self._stopping.wait(SAVE_INTERVAL_SECONDS):
            try:
                self.save()
            except OSError as error:
                logger.error("could not save to %s: %s", self.datastore_file.parent, error)

    def save(self, *, stopping: bool = False) -> None:
        """Save Datastore and the queue as one (see local_queue_file.py), each only if it changed.

        ``stopping``: the last save; memcache stays held afterwards, so no request can
        store an event (and answer that it did) that this save did not keep."""
        with self._save_lock:
            started = time.monotonic()
            stats = self.settings.queue.stats().as_dict()  # before the copy: the copy holds at least these

            def save_queue(datastore_version: int) -> None:
                entries, foreign = copy_queue_entries(self.memcache, self.settings.queue.keys.prefix, hold=stopping)
                logger.debug("copied %d queue keys %.3f s into the save", len(entries), time.monotonic() - started)
                if foreign:
                    logger.warning("%d queue keys held values of another type and were not saved", foreign)
                if not stopping and self._last_saved_queue == (datastore_version, entries):
                    return
                self.queue_file.write_next(SavedQueue(datastore_version, time.time(), stopping, stats, entries))
                self._last_saved_queue = (datastore_version, entries)

            self.datastore.save(save_queue)
            if self.queue_file.next_path.exists():
                self.queue_file.commit_next()
            logger.debug("saved in %.3f s (%d events not yet counted)", time.monotonic() - started, stats["depth"])

    def stop(self) -> int:
        """Let no more requests in and cut those still reading, drain the queue into Datastore
        (bounded, with progress), save both, deactivate the stubs. The exit status: 0 once
        everything accepted is counted or saved, 1 if the save failed or the queue lost events."""
        self.stop_running_tasks()
        still_inside = self.gate.close(CUT_REQUESTS_WAIT_SECONDS)
        if still_inside:
            logger.warning(
                "%d requests were still in the app %g s after they were cut: events they store before the last save "
                "are kept, after it they cannot be stored",
                still_inside,
                CUT_REQUESTS_WAIT_SECONDS,
            )
        self._stopping.set()
        if self._saver.is_alive():
            self._saver.join()
        self.drain_queue()
        self.fold_recorded()
        stats = self.settings.queue.stats()
        try:
            self.save(stopping=True)
        except OSError as error:
            logger.error(
                "could not save to %s: %s; the %d events not yet counted, and what was counted since the last save, "
                "are lost",
                self.datastore_file.parent,
                error,
                stats.depth + stats.leased,
            )
            return 1
        self.bed.deactivate()
        logger.info(
            "stopped; datastore saved to %s, the queue (%d events not yet counted) to %s",
            self.datastore_file,
            stats.depth + stats.leased,
            self.queue_file.path,
        )
        if stats.lost > self.lost_before:
            logger.error(
                "the queue lost %d events while this server ran (memcache evicted them): they are not counted, "
                "and /stats shows them in queue.lost",
                stats.lost - self.lost_before,
            )
            return 1
        return 0

    def fold_recorded(self) -> None:
        """Fold every recorded batch into the count store, as the fold task does."""
        folds = 0
        while counting.fold(self.settings.clock()).more:
            folds += 1
        logger.info("folded the recorded batches into the count store (%d commits)", folds + 1)

    def drain_queue(self) -> None:
        """Count every queued event, as the processing task does; log what could not be."""
        queue = self.settings.queue
        logger.info("stopping: draining %d queued events into the datastore", queue.stats().depth)
        step = dataclasses.replace(self.settings, time_budget_seconds=DRAIN_STEP_SECONDS)
        deadline = time.monotonic() + self.drain_seconds
        counted = 0
        while time.monotonic() < deadline:
            try:
                report = drain(step)
            except BatchFailedError as error:
                logger.error("draining failed: %s", error)
                break
            counted += report.processed
            if not (report.budget_spent or report.caught_up):
                break
            logger.info("draining: %d events counted, %d still queued", counted, queue.stats().depth)
        stats = queue.stats()
        logger.info("drained: %d events counted", counted)
        if stats.depth or stats.leased:
            logger.warning(
                "%d queued and %d leased events were not counted in time: they are saved with the queue and counted "
                "after the next start",
                stats.depth,
                stats.leased,
            )


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
                    return _json_answer(
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


def _json_answer(start_response, error: RequestError) -> list[bytes]:
    """``error`` answered as the app answers its errors (handlers/base.py), by the local server's own layers."""
    body = json.dumps(error.body()).encode()
    start_response(
        f"{error.status} {http.client.responses[error.status]}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), NOSNIFF_HEADER],
    )
    return [body]


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
        return _json_answer(start_response, refusal)

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
