"""``/track`` of the real app against a no-op webapp2 handler, both under gunicorn, loaded by wrk."""

from __future__ import annotations

import re
import statistics
import subprocess
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymemcache.client.base import Client

from bench import servers
from bench.workload import median_runs
from clickqueue import Queue
from handlers.settings import default_queue

MEMCACHED_ENV = "CLICKQUEUE_BENCH_MEMCACHED"
"""Where ``bench.track_app`` finds memcached: ``host:port``."""
REPO_ROOT = Path(__file__).resolve().parent.parent
TRACK_PATH = "/track?type=click&item=x"
APPS = {"noop": "bench.noop_app:app", "noop_wrapped": "bench.noop_app:wrapped_app", "track": "bench.track_app:app"}
WARM_UP_SECONDS = 1


@dataclass(frozen=True)
class HttpLoad:
    """What the load client asked of the server: wrk's threads, connections and duration."""

    seconds: int
    connections: int
    threads: int = 1


@dataclass(frozen=True)
class Gunicorn:
    """Worker processes and threads; App Engine's app.yaml entrypoint uses 2 and 8."""

    workers: int
    threads: int


def run_wrk(url: str, load: HttpLoad) -> dict[str, Any]:
    """Run wrk against ``url``; requests/s, total requests and non-2xx answers and socket errors."""
    command = [
        servers.require_binary("wrk"),
        f"--threads={load.threads}",
        f"--connections={load.connections}",
        f"--duration={load.seconds}s",
        "--latency",
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=load.seconds + 30).stdout
    requests = re.search(r"(\d+) requests in", output)
    per_second = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if requests is None or per_second is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    p99 = re.search(r"99%\s+(\S+)", output)
    return {
        "requests": int(requests.group(1)),
        "per_second": float(per_second.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(count) for count in socket_errors.groups()) if socket_errors else 0,
        "latency_p99": p99.group(1) if p99 else None,
    }


def expect_no_content(url: str) -> None:
    """Both apps answer the tracking GET with 204; anything else is not worth loading."""
    with urllib.request.urlopen(url, timeout=30) as response:
        if response.status != 204:
            raise RuntimeError(f"GET {url} answered {response.status}, expected 204")


def track_vs_noop(
    memcached: tuple[str, int], gunicorn: Gunicorn, load: HttpLoad, repeats: int, on_run: Callable[[str], None]
) -> dict[str, Any]:
    """Requests/s of the no-op handlers and of /track, the ratios, and what /track wrote to the queue.

    The three apps are served at once and loaded in turn, ``repeats`` rounds,
    so other load on the machine falls on every app alike; each app's median
    run counts, and each ratio is the median of the rounds' ratios.
    ``on_run`` hears about each run as it ends.
    """
    client = Client(memcached)
    client.flush_all(noreply=False)
    env = {MEMCACHED_ENV: f"{memcached[0]}:{memcached[1]}"}
    try:
        with ExitStack() as stack:
            urls = {}
            for name, app in APPS.items():
                server = stack.enter_context(servers.gunicorn(app, gunicorn.workers, gunicorn.threads, REPO_ROOT, env))
                urls[name] = f"http://{servers.HOST}:{server.port}{TRACK_PATH}"
                expect_no_content(urls[name])
                run_wrk(urls[name], HttpLoad(WARM_UP_SECONDS, load.connections, load.threads))
            rounds = []
            for _ in range(repeats):
                rounds.append({})
                for name, url in urls.items():
                    rounds[-1][name] = {"app": name, **run_wrk(url, load)}
                    on_run(f"HTTP {name}: {rounds[-1][name]['per_second']:,.0f} req/s")
        reference = default_queue()
        written = Queue(reference.name, client, shards=reference.shards).stats().written
    finally:
        client.close()
    runs = [run for round_runs in rounds for run in round_runs.values()]
    median = {run["app"]: run for run in median_runs(runs, lambda run: run["app"], lambda run: run["per_second"])}

    def track_to(baseline: str) -> float:
        return round(statistics.median(r["track"]["per_second"] / r[baseline]["per_second"] for r in rounds), 3)

    return {
        **median,
        "all_per_second": {name: [r[name]["per_second"] for r in rounds] for name in APPS},
        "track_to_noop": track_to("noop"),
        "track_to_noop_wrapped": track_to("noop_wrapped"),
        "track_messages_written": written,
        "gunicorn": {"workers": gunicorn.workers, "threads": gunicorn.threads},
        "wrk": {"threads": load.threads, "connections": load.connections, "seconds": load.seconds},
    }
