"""The sample app's real routes and handlers under gunicorn, with the queue on memcached.

App Engine's memcache stub lives inside one process and gunicorn runs several,
so the queue goes to the memcached at ``$CLICKQUEUE_BENCH_MEMCACHED``
(``host:port``) through the app's own seam, ``main.create_app(Settings(queue=...))``,
keeping the default queue's name and shard count; ``Settings`` makes the
group commit that the recording handlers write through, as in the app.
``/track`` also asks the task queue for its slot's processing task (once per
slot and process); each gunicorn worker gets the SDK's task queue stub for
that (tasks are recorded, never run), so intake is not limited.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from wsgiref.types import WSGIApplication

from google.appengine.ext import testbed
from pymemcache.client.base import PooledClient

import main
from bench.http_load import MEMCACHED_ENV
from clickqueue import Queue
from clicks.settings import Settings, default_queue

APP_ID = "dev~clickqueue-bench"
APP_ROOT = Path(main.__file__).resolve().parent


def memcached_address() -> tuple[str, int]:
    host, port = os.environ[MEMCACHED_ENV].rsplit(":", 1)
    return host, int(port)


def create_bench_app() -> WSGIApplication:
    """Stubs first (``wrap_wsgi_app`` copies the environment), then the app."""
    bed = testbed.Testbed()
    bed.activate()
    bed.setup_env(app_id=APP_ID, overwrite=True)
    bed.init_taskqueue_stub(root_path=str(APP_ROOT))
    reference = default_queue()
    # gthread workers share one Queue between threads: a pooled client, one connection per thread at most.
    queue = Queue(reference.name, PooledClient(memcached_address()), shards=reference.shards)
    # Nothing processes the queue here: without a limit past any run's events, intake
    # would soon refuse them all, and this would measure refusals instead of recording.
    return main.create_app(Settings(queue=queue, max_queue_depth=sys.maxsize))


app = create_bench_app()
