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
import time
from collections.abc import Iterator
from dataclasses import dataclass
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
    """Stop a child (and its process group when it leads one) by PID."""
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


@dataclass
class MemcachedServer:
    host: str
    port: int
    process: subprocess.Popen

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def client(self, **kwargs):
        from pymemcache.client.base import Client

        return Client(self.address, **kwargs)


def _start_memcached(memory_mb: int) -> MemcachedServer:
    binary = shutil.which("memcached")
    if binary is None:
        skip_or_fail_in_ci("memcached is not installed (Debian package: memcached)")
    port = free_port()
    command = [binary, "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", str(memory_mb), "-t", "2"]
    if os.geteuid() == 0:
        command += ["-u", "root"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

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
    return MemcachedServer("127.0.0.1", port, process)


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[MemcachedServer]:
    """One real memcached for the session; tests flush it through ``memcached_client``."""
    server = _start_memcached(memory_mb=256)
    yield server
    stop_process(server.process)


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
    stop_process(server.process)


@pytest.fixture
def testbed(tmp_path):
    """App Engine SDK stubs (memcache, datastore, taskqueue) as dev_appserver uses them."""
    from google.appengine.ext import testbed as testbed_module

    os.environ.pop("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", None)
    bed = testbed_module.Testbed()
    bed.activate()
    bed.setup_env(app_id=APP_ID, overwrite=True)
    bed.init_memcache_stub()
    bed.init_datastore_v3_stub()
    bed.init_taskqueue_stub(root_path=str(REPO_ROOT))
    from google.appengine.ext import ndb

    ndb.get_context().clear_cache()
    yield bed
    bed.deactivate()
