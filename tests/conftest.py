"""Fixtures: App Engine SDK stubs (testbed), real memcached servers, the app.

What the fixtures are built from, and what tests import, lives in
``tests/support/``; no test imports from this file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import APP_ID, REPO_ROOT, MemcachedServer, start_memcached
from tests.support.rpc_faults import MemcacheRpcFaults, rpc_faults
from tests.support.seams import FakeClock


def pytest_configure(config: pytest.Config) -> None:
    """Let the App Engine SDK patch threading now, before any test makes an API call.

    The first ``wrap_wsgi_app`` (``main.create_app``) runs the SDK's
    ``InitializeThreadingApis``, which reloads ``threading`` and
    ``concurrent.futures.thread``. A worker of the SDK's RPC thread pool
    (``apiproxy_rpc``) started before that reload is then known to neither, so
    nothing tells it to stop at exit, and Python 3.13 waits for it forever
    (tests/test_suite_exits.py). On App Engine the app is wrapped at import,
    before any call; here the same order is kept by patching first (once: the
    SDK caches it).
    """
    from google.appengine.runtime import initialize

    initialize.InitializeThreadingApis()


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    """One real memcached for the session; tests flush it through ``memcached_client``."""
    server = start_memcached(memory_mb=256)
    yield server
    server.stop()


@pytest.fixture
def memcached_client(memcached_server: MemcachedServer):
    """A pymemcache Client on the session server, flushed before the test."""
    client = memcached_server.client()
    client.flush_all(noreply=False)
    yield client
    client.close()


@pytest.fixture
def small_memcached() -> Iterator[MemcachedServer]:
    """A memcached of its own with ``-m 8``: small enough to evict under load."""
    server = start_memcached(memory_mb=8)
    yield server
    server.stop()


@pytest.fixture
def memcached_cluster() -> Iterator[list[MemcachedServer]]:
    """Three memcached servers of the test's own, which it may restart."""
    servers = [start_memcached(memory_mb=64) for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def testbed(tmp_path):
    """App Engine SDK stubs (memcache, datastore, taskqueue) as dev_appserver uses them."""
    from google.appengine.ext import testbed as testbed_module

    os.environ.pop("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", None)
    bed = testbed_module.Testbed()
    bed.activate()
    bed.setup_env(app_id=APP_ID, overwrite=True)
    bed.init_memcache_stub()
    # As on App Engine, a query needs its index in index.yaml.
    bed.init_datastore_v3_stub(require_indexes=True, root_path=str(REPO_ROOT))
    bed.init_taskqueue_stub(root_path=str(REPO_ROOT))
    bed.init_user_stub()
    from google.appengine.ext import ndb

    ndb.get_context().clear_cache()
    yield bed
    bed.deactivate()


@pytest.fixture(scope="session")
def second_memcached_server() -> Iterator[MemcachedServer]:
    """Another memcached, so HashClient spreads keys over two servers."""
    server = start_memcached(memory_mb=64)
    yield server
    server.stop()

@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


BACKENDS = ("appengine", "memcached", "memcached-hash")


@pytest.fixture(params=BACKENDS)
def cache_client(request):
    """The raw client of each backend, empty: None means App Engine memcache (SDK stub)."""
    if request.param == "appengine":
        request.getfixturevalue("testbed")
        yield None
        return
    if request.param == "memcached":
        yield request.getfixturevalue("memcached_client")
        return
    from pymemcache.client.hash import HashClient

    servers = [request.getfixturevalue("memcached_server"), request.getfixturevalue("second_memcached_server")]
    client = HashClient([server.address for server in servers])
    client.flush_all(noreply=False)
    yield client
    client.close()


@pytest.fixture
def cache(cache_client):
    """The clickqueue Cache adapter for each backend, counting its calls."""
    from clickqueue import CountingCache, wrap_client

    return CountingCache(wrap_client(cache_client))


@pytest.fixture
def make_queue(cache, clock):
    """Queues sharing one cache and fake clock: ``make_queue(shards=4)``."""
    from clickqueue import Queue

    def make(name: str = "q", **options):
        options.setdefault("clock", clock)
        return Queue(name, cache, **options)

    return make


# -- the sample app (tests/test_app_*.py) --------------------------------------


@pytest.fixture
def app_settings(testbed, clock):
    """The app's default settings, with the app and its queue on ``clock``
    (which starts at a whole second: the start of a time slot)."""
    from clicks.settings import Settings, default_queue

    return Settings(queue=default_queue(clock), clock=clock)


ADMIN_ENVIRON = {"HTTP_X_APPENGINE_USER_IS_ADMIN": "1"}
"""What App Engine's front end says of a request from a signed-in admin (it strips
X-AppEngine-* headers from outside requests)."""


@pytest.fixture
def make_app(testbed):
    """Build the app as App Engine serves it (wrapped), with the given Settings, on the
    stubs; its requests come from an admin unless ``admin=False``."""
    import webtest

    import main

    return lambda settings, admin=True: webtest.TestApp(
        main.create_app(settings), extra_environ=ADMIN_ENVIRON if admin else {}
    )


@pytest.fixture
def app(make_app, app_settings):
    return make_app(app_settings)


TASK_QUEUES = ("process", "fold")
"""queue.yaml's queues: processing tasks, then the fold tasks they ask for."""


@pytest.fixture
def queued_tasks(testbed):
    """The tasks waiting in the app's task queues (the stub never runs them itself)."""
    from google.appengine.ext import testbed as testbed_module

    stub = testbed.get_stub(testbed_module.TASKQUEUE_SERVICE_NAME)
    return lambda: stub.get_filtered_tasks(queue_names=list(TASK_QUEUES))


@pytest.fixture
def run_tasks(testbed):
    """Run the queued processing tasks once through an app, as App Engine would, then
    the fold tasks they asked for; returns the processing tasks' responses.

    A task answered 2xx is deleted; any other answer leaves it queued.
    """
    from google.appengine.ext import testbed as testbed_module

    stub = testbed.get_stub(testbed_module.TASKQUEUE_SERVICE_NAME)

    def run_queue(app, queue_name: str) -> list:
        responses = []
        for task in stub.get_filtered_tasks(queue_names=[queue_name]):
            headers = {"X-AppEngine-QueueName": queue_name, "X-AppEngine-TaskName": task.name}
            response = app.post(task.url, task.payload or b"", headers=headers, expect_errors=True)
            if 200 <= response.status_int < 300:
                stub.DeleteTask(queue_name, task.name)
            responses.append(response)
        return responses

    def run(app) -> list:
        processed = run_queue(app, "process")
        folds = run_queue(app, "fold")
        while any(200 <= fold.status_int < 300 for fold in folds):  # a fold with batches left asks for the next
            folds = run_queue(app, "fold")
        return processed

    return run


@pytest.fixture
def server_log(tmp_path) -> Iterator[Path]:
    """A log file for servers a test starts; its tail is printed at teardown (shown on failure)."""
    log_path = tmp_path / "server.log"
    yield log_path
    if log_path.exists():
        print(log_path.read_text(errors="replace")[-4000:])


# -- faults injected into real backends ----------------------------------------


@pytest.fixture
def memcache_rpc_faults(testbed) -> Iterator[MemcacheRpcFaults]:
    yield from rpc_faults("memcache")


@pytest.fixture
def datastore_rpc_faults(testbed) -> Iterator[MemcacheRpcFaults]:
    """The same faults, for Datastore RPCs ("Put", "Commit"...): a commit that fails,
    or whose answer is lost after it applied."""
    yield from rpc_faults("datastore_v3")
