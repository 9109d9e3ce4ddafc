"""Shared fixtures: App Engine SDK stubs (testbed) and real memcached servers.

Servers started here bind to 127.0.0.1 on a free port and are stopped by PID.
A test needing a tool that is absent skips with the reason, except under
``CI=true`` where it fails: CI must install everything the tests need.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_ID = "dev~clickqueue-sample"


def skip_or_fail_in_ci(reason: str) -> None:
    """Skip with ``reason`` on a user's machine; fail under CI, which must have it."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: .ci/run must install it)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(condition, timeout_seconds: float, interval_seconds: float = 0.05, message: str = ""):
    """Poll ``condition`` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout_seconds
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_seconds}s: {message or condition}")
        time.sleep(interval_seconds)


def stop_process(process: subprocess.Popen, timeout_seconds: float = 10) -> None:
    """Stop a child (and its process group when it leads one) by PID; close our ends of its pipes."""
    try:
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            process.terminate()
        try:
            process.wait(timeout=timeout_seconds)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=timeout_seconds)
    finally:
        for pipe in (process.stdin, process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the test process dies, however it
    dies (mutmut's timeout, kill -9), so no memcached is left behind."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class MemcachedServer:
    host: str
    port: int
    process: subprocess.Popen
    memory_mb: int
    clients: list = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def client(self, **kwargs):
        """A pymemcache Client on this server, closed when the server stops."""
        from pymemcache.client.base import Client

        client = Client(self.address, **kwargs)
        self.clients.append(client)
        return client

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        stop_process(self.process)

    def restart(self) -> None:
        """Kill the server (as an OOM kill or a crash would) and start it again, empty, on its port."""
        self.process.kill()
        self.process.wait(timeout=10)
        self.process = _start_memcached(self.memory_mb, self.port).process


def _start_memcached(memory_mb: int, port: int | None = None) -> MemcachedServer:
    binary = shutil.which("memcached")
    if binary is None:
        skip_or_fail_in_ci("memcached is not installed (Debian package: memcached)")
    port = port or free_port()
    command = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(memory_mb), "-t", "2"]
    if os.geteuid() == 0:
        command += ["-u", "root"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )

    def accepting() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"memcached exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            return False

    try:
        wait_until(accepting, 10, message="memcached to accept connections")
    except BaseException:
        stop_process(process)
        raise
    return MemcachedServer("127.0.0.1", port, process, memory_mb)


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    """One real memcached for the session; tests flush it through ``memcached_client``."""
    server = _start_memcached(memory_mb=256)
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
    server = _start_memcached(memory_mb=8)
    yield server
    server.stop()


@pytest.fixture
def memcached_cluster() -> Iterator[list[MemcachedServer]]:
    """Three memcached servers of the test's own, which it may restart."""
    servers = [_start_memcached(memory_mb=64) for _ in range(3)]
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
    server = _start_memcached(memory_mb=64)
    yield server
    server.stop()


class CacheWrapper:
    """A Cache that passes every call on to ``inner``: a test's seam changes one call."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def __getattr__(self, name):
        return getattr(self.inner, name)


class PauseAfterIncr(CacheWrapper):
    """A Cache that runs ``between`` once, right after the next ``incr`` that hands out slots.

    It stands for a writer paused between taking its slot and storing its message.
    """

    def __init__(self, inner, between):
        super().__init__(inner)
        self.between = between

    def incr(self, key, delta):
        value = self.inner.incr(key, delta)
        if ":w:" in key and value is not None and self.between is not None:
            between, self.between = self.between, None
            between()
        return value


class GatedAddMulti(CacheWrapper):
    """Holds the first ``add_multi`` until ``release`` is set (a write in flight for as long
    as the test needs); records how many messages each stores (a frame holds several);
    fails those numbered in ``failing`` (0 is the first) with ``CacheUnavailableError``,
    as a memcache error does."""

    def __init__(self, inner, failing: tuple[int, ...] = ()) -> None:
        super().__init__(inner)
        self.entered = threading.Event()
        self.release = threading.Event()
        self.calls: list[int] = []
        self.failing = failing

    def add_multi(self, values, expire_seconds=0):
        from clickqueue import CacheUnavailableError

        from clickqueue.codec import slot_span

        number = len(self.calls)
        self.calls.append(sum(map(slot_span, values.values())))
        if number == 0:
            self.entered.set()
            assert self.release.wait(THREAD_DEADLINE_SECONDS), "the test never released the first write"
        if number in self.failing:
            raise CacheUnavailableError(next(iter(values)), "add_multi")
        return self.stored_part(number, values, expire_seconds)

    def stored_part(self, number: int, values, expire_seconds: int):
        """What add_multi number ``number`` stores and answers, once through the gate."""
        return self.inner.add_multi(values, expire_seconds)


class StoresOnlyTheFirst(GatedAddMulti):
    """The second ``add_multi`` stores only its first frame (``FRAME_MESSAGES`` messages
    when it has more) and loses the answer for the rest; reading those back fails: a
    write that ends incomplete."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.fail_reads = False

    def stored_part(self, number, values, expire_seconds):
        if number != 1:
            return self.inner.add_multi(values, expire_seconds)
        self.fail_reads = True
        return {**dict.fromkeys(values), **self.inner.add_multi(dict(list(values.items())[:1]), expire_seconds)}

    def get_multi(self, keys):
        if self.fail_reads:
            self.fail_reads = False
            from clickqueue import CacheUnavailableError

            raise CacheUnavailableError(keys[0], "get_multi")
        return self.inner.get_multi(keys)


class RecordingCondition(threading.Condition):
    """A Condition for GroupCommit's ``condition=`` seam: it counts its waits and names
    the threads waiting now."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0
        self.waiting: set[int] = set()

    def wait(self, timeout=None):
        self.waits += 1  # under the lock, as wait() must be called
        self.waiting.add(threading.get_ident())
        try:
            return super().wait(timeout)
        finally:
            self.waiting.discard(threading.get_ident())


THREAD_DEADLINE_SECONDS = 30
"""How long a test waits for a thread, or for a state, before it fails."""


class InThread(threading.Thread):
    """``call()`` on a thread of its own; ``outcome()`` waits for it (with a deadline) and
    gives what it returned or the exception it raised."""

    def __init__(self, call) -> None:
        super().__init__(daemon=True)
        self.call = call
        self._outcome = None

    def run(self) -> None:
        try:
            self._outcome = self.call()
        except Exception as error:  # noqa: BLE001 (the test asserts on it)
            self._outcome = error

    def outcome(self):
        self.join(THREAD_DEADLINE_SECONDS)
        assert not self.is_alive(), f"{self.call} did not return"
        return self._outcome


def existing_queue(cache, name: str = "q"):
    """``cache``, holding queue ``name`` (one shard) with its counter and state, so that
    a write through it is its 2 cache calls (``incr``, ``add_multi``)."""
    from clickqueue import Queue

    Queue(name, cache).write("creates the queue")
    assert drain(Queue(name, cache)) == ["creates the queue"]
    return cache


def run_on_threads(work, count: int) -> None:
    """``work(n)`` for each n below ``count``, each on a thread of its own, all at once;
    fails if one raised or did not end in time."""
    threads = [InThread(lambda n=n: work(n)) for n in range(count)]
    for thread in threads:
        thread.start()
    assert [thread.outcome() for thread in threads] == [None] * count


def start_held_write(gate: GatedAddMulti, call) -> InThread:
    """``call()`` on a thread, once its write is held at ``gate``: a write in flight."""
    thread = InThread(call)
    thread.start()
    assert gate.entered.wait(THREAD_DEADLINE_SECONDS), "the first write did not start"
    return thread


def start_and_wait(condition: RecordingCondition, call) -> InThread:
    """``call()`` on a thread of its own, once that thread waits on ``condition``."""
    thread = InThread(call)
    thread.start()
    wait_until(lambda: thread.ident in condition.waiting, THREAD_DEADLINE_SECONDS, message=f"{call} to wait")
    return thread


def arrive_in_order(condition: RecordingCondition, calls) -> list[InThread]:
    """Each call on a thread of its own, started once the one before waits on ``condition``."""
    return [start_and_wait(condition, call) for call in calls]


def drain(queue, max_items: int = 100) -> list:
    """Every message ``read_multi`` hands out until it returns nothing."""
    received = []
    while batch := queue.read_multi(max_items):
        received += batch
    return received


class FakeClock:
    """A clock for the ``clock=`` seam: time moves only when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
    from handlers.settings import Settings, default_queue

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


class MemcacheRpcFaults:
    """Makes App Engine memcache RPCs fail, as production does, through a pre-call
    hook on the API proxy: the hook swaps the RPC's stub for one that raises,
    before the real stub runs or after it has applied the call (a lost reply)."""

    def __init__(self) -> None:
        self.planned: list[list] = []
        self.max_response_bytes: int | None = None
        self.failed: list[str] = []
        self.request_bytes: list[tuple[str, int]] = []
        """Every memcache RPC seen: (method, request size in bytes)."""

    def fail_next(
        self, method: str | None = None, *, key: str | None = None, after_applying: bool = False, skip: int = 0
    ) -> None:
        """Fail the next RPC of ``method`` ("Get", "Set", "Delete", "BatchIncrement",
        or any) that names ``key`` (if given), after letting ``skip`` of them
        through; after applying it if ``after_applying`` (a lost reply)."""
        self.planned.append([method, after_applying, skip, key])

    def hook(self, service, call, request, response, rpc) -> None:
        self.request_bytes.append((call, request.ByteSize()))
        if self.planned and self.planned[0][0] in (None, call) and self._names(request, self.planned[0][3]):
            if self.planned[0][2]:
                self.planned[0][2] -= 1
                return
            _method, after_applying, _skip, _key = self.planned.pop(0)
            rpc.stub = _FailingStub(rpc.stub, after_applying, None)
            self.failed.append(call)
        elif self.max_response_bytes is not None:
            rpc.stub = _FailingStub(rpc.stub, True, self.max_response_bytes)

    @staticmethod
    def _names(request, key: str | None) -> bool:
        if key is None:
            return True
        keys = list(getattr(request, "key", [])) + [item.key for item in getattr(request, "item", [])]
        return key.encode() in keys


class _FailingStub:
    def __init__(self, real, after_applying: bool, max_response_bytes: int | None) -> None:
        self.real, self.after_applying, self.max_response_bytes = real, after_applying, max_response_bytes

    def MakeSyncCall(self, service, call, request, response):
        from google.appengine.runtime import apiproxy_errors

        if self.after_applying:
            self.real.MakeSyncCall(service, call, request, response)
        if self.max_response_bytes is None:
            raise apiproxy_errors.DeadlineExceededError(f"injected: {call} failed")
        if response.ByteSize() > self.max_response_bytes:
            raise apiproxy_errors.ResponseTooLargeError(f"injected: {call} answer over {self.max_response_bytes} bytes")


def _rpc_faults(service: str) -> Iterator[MemcacheRpcFaults]:
    from google.appengine.api import apiproxy_stub_map

    faults = MemcacheRpcFaults()
    hooks = apiproxy_stub_map.apiproxy.GetPreCallHooks()
    hooks.Append("clickqueue-test-faults", faults.hook, service)
    yield faults
    hooks.Clear()


@pytest.fixture
def memcache_rpc_faults(testbed) -> Iterator[MemcacheRpcFaults]:
    yield from _rpc_faults("memcache")


@pytest.fixture
def datastore_rpc_faults(testbed) -> Iterator[MemcacheRpcFaults]:
    """The same faults, for Datastore RPCs ("Put", "Commit"...): a commit that fails,
    or whose answer is lost after it applied."""
    yield from _rpc_faults("datastore_v3")


# -- counting (handlers/counting.py) -------------------------------------------


def keyed(events) -> dict:
    """Events as ``counting.count_batch`` takes them: each under a message id of its own."""
    return {f"message-{n}": event for n, event in enumerate(events)}


def leased_events(lease) -> dict:
    """A lease's events by message id, as ``drain`` hands them to ``count_batch``."""
    from handlers.events import event_from_message

    return dict(zip(lease.message_ids, map(event_from_message, lease.messages), strict=True))


def clicks_and_views(counts: dict) -> dict[str, int]:
    """The clicks and views of counts as ``counters`` answers them (without bots and CTR)."""
    return {"click": counts["click"], "view": counts["view"]}
