"""Serve the app locally in one process on the App Engine SDK's stubs.

Memcache and the task queue live in memory; the datastore is loaded from and
saved to ``<data_dir>/datastore.db`` (the stub writes it when the testbed is
deactivated, which happens when the server stops on SIGTERM or Ctrl-C). Due
tasks are sent back to this server over HTTP, as App Engine would send them.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer
from wsgiref.types import WSGIApplication

from google.appengine.api import request_info
from google.appengine.ext import testbed

APP_ID = "dev~clickqueue-sample"
APP_ROOT = Path(__file__).resolve().parent
HOST = "127.0.0.1"
TASK_TIMEOUT_SECONDS = 600  # App Engine's deadline for a push task

logger = logging.getLogger("local_stubs")


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    request_queue_size = 1024  # the listen backlog: bursts of clients must not be reset
    daemon_threads = False  # server_close() waits for the requests in flight


class _RequestHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        logger.debug("%s " + format, self.address_string(), *args)


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


def _activate_stubs(port: int, data_dir: Path) -> testbed.Testbed:
    """Memcache, datastore (persisted in ``data_dir``) and a task queue that sends its tasks here."""
    os.environ.pop("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", None)  # never send tasks to Cloud Tasks
    bed = testbed.Testbed()
    bed.activate()
    bed.setup_env(app_id=APP_ID, overwrite=True)
    bed.init_memcache_stub()
    bed.init_datastore_v3_stub(datastore_file=str(data_dir / "datastore.db"), save_changes=True)
    bed.init_taskqueue_stub(
        root_path=str(APP_ROOT),
        auto_task_running=True,
        request_data=_LocalRequestInfo(_LoopbackDispatcher(port)),
    )
    return bed


def serve(create_app: Callable[[], WSGIApplication], port: int, data_dir: Path) -> None:
    """Serve ``create_app()`` on 127.0.0.1:``port`` until SIGTERM or SIGINT, then save the datastore."""
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    stop_requested = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop_requested.set())

    server = _ThreadingWSGIServer((HOST, port), _RequestHandler)
    port = server.server_port  # the one bound, when asked for port 0
    bed = _activate_stubs(port, data_dir)
    # After the stubs, since wrap_wsgi_app copies os.environ; and before any
    # thread starts, since it reloads the threading module.
    server.set_app(create_app())
    bed.get_stub(testbed.TASKQUEUE_SERVICE_NAME).StartBackgroundExecution()
    server_thread = threading.Thread(target=server.serve_forever, name="http-server")
    server_thread.start()
    logger.info("serving on http://%s:%d/ (datastore in %s); Ctrl-C to stop", HOST, port, data_dir)

    stop_requested.wait()
    logger.info("stopping")
    bed.get_stub(testbed.TASKQUEUE_SERVICE_NAME).Shutdown()
    server.shutdown()
    server.server_close()
    server_thread.join()
    bed.deactivate()
    logger.info("stopped; datastore saved to %s", data_dir / "datastore.db")
