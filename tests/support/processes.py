"""Processes and servers a test starts: free ports, waits with a deadline, stopping by
PID, and real memcached servers that die with the test process.

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
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
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
        self.process = start_memcached(self.memory_mb, self.port).process


def start_memcached(memory_mb: int, port: int | None = None) -> MemcachedServer:
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
