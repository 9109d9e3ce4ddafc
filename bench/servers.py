"""Servers the benchmark starts for itself: on free loopback ports, stopped by PID."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
START_TIMEOUT_SECONDS = 30
REPO_ROOT = Path(__file__).resolve().parent.parent


class ServerError(RuntimeError):
    """A server could not be started (missing binary, early exit, never listening)."""


@dataclass(frozen=True)
class Server:
    name: str
    port: int
    process: subprocess.Popen

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def require_binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ServerError(f"{name} is not installed (Debian package: {name.split('-')[0]})")
    return path


def stop(process: subprocess.Popen, timeout_seconds: float = 10) -> None:
    """SIGTERM the process by PID, then SIGKILL its own process group if it lingers."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):  # it ended just now
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_seconds)


def _listening(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=0.2).close()
        return True
    except OSError:
        return False


@contextmanager
def running(name: str, command: Sequence[str], port: int, env: dict[str, str] | None = None) -> Iterator[Server]:
    """Start ``command`` in a session of its own, wait until ``port`` accepts, stop it on exit.

    Its output goes to a temporary file, quoted in the error if it dies starting.
    """
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(list(command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        try:
            deadline = time.monotonic() + START_TIMEOUT_SECONDS
            while not _listening(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    tail = log.read().decode(errors="replace")[-2000:]
                    raise ServerError(f"{name} did not start (exit code {process.poll()}): {' '.join(command)}\n{tail}")
                time.sleep(0.05)
            yield Server(name, port, process)
        finally:
            stop(process)


@contextmanager
def memcached(memory_mb: int = 1024) -> Iterator[Server]:
    port = free_port()
    command = [require_binary("memcached"), "-l", HOST, "-p", str(port), "-U", "0", "-m", str(memory_mb)]
    if os.geteuid() == 0:
        command += ["-u", "root"]
    with running("memcached", command, port) as server:
        yield server


@contextmanager
def redis() -> Iterator[Server]:
    port = free_port()
    command = [require_binary("redis-server"), "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    with running("redis-server", command, port) as server:
        yield server


@contextmanager
def gunicorn(app: str, workers: int, threads: int, directory: Path, env: dict[str, str]) -> Iterator[Server]:
    """Serve the WSGI ``app`` ("module:attribute", importable from ``directory``) as App Engine does."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{HOST}:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--chdir",
        str(directory),
        "--log-level",
        "warning",
        app,
    ]
    with running(f"gunicorn {app}", command, port, env={**os.environ, **env}) as server:
        yield server


@contextmanager
def local_app_server(
    data_dir: Path, arguments: Sequence[str] = (str(REPO_ROOT / "main.py"),), env: dict[str, str] | None = None
) -> Iterator[Server]:
    """``python main.py``: the app under gunicorn on the SDK's stubs, running its own
    tasks, serving the datastore in ``data_dir`` (tests/support/e2e.py's ``local_server``).
    ``arguments`` and ``env`` run another script that serves it the same way."""
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "CLICKQUEUE_DATA_DIR": str(data_dir),
        "LOG_LEVEL": "WARNING",
        **(env or {}),
    }
    with running("python main.py", [sys.executable, *arguments], port, env=env) as server:
        yield server


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user and system) that process ``pid`` and its children have used so far (Linux)."""
    ticks = 0
    for process in [pid, *_children(pid)]:
        with contextlib.suppress(FileNotFoundError):  # a child that just ended
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    """The processes ``pid`` started (from its main thread), and theirs."""
    try:
        children = [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:  # it just ended
        return []
    return [descendant for child in children for descendant in [child, *_children(child)]]


def version_of(command: Sequence[str]) -> str:
    """First line a ``--version``-like command prints, or "absent"."""
    if shutil.which(command[0]) is None:
        return "absent"
    done = subprocess.run(list(command), check=False, capture_output=True, text=True, timeout=10)  # wrk -v exits 1
    return (done.stdout or done.stderr).strip().splitlines()[0]
