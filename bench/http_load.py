"""``/track`` of the real app against a no-op webapp2 handler, both under gunicorn, loaded by wrk."""

from __future__ import annotations

import re
import statistics
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pymemcache.client.base import Client

from bench import memcached_stats, servers, user_agents
from bench.workload import median_runs
from clickqueue import Queue
from clicks.settings import default_queue

MEMCACHED_ENV = "CLICKQUEUE_BENCH_MEMCACHED"
"""Where ``bench.track_app`` finds memcached: ``host:port``."""
TRACK_PATH = "/track?type=click&item=x"
APPS = {"noop": "bench.noop_app:app", "noop_wrapped": "bench.noop_app:wrapped_app", "track": "bench.track_app:app"}
WARM_UP_SECONDS = 1
SETTLE_SECONDS = 0.2
"""After wrk stops: the requests still in the server finish before memcached's counters are read."""


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


WRK_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
PERCENTILES = (50, 75, 90, 99)
"""What wrk's ``--latency`` prints."""


def duration_ms(text: str) -> float:
    """One of wrk's durations ("512.00us", "39.72ms", "1.02s", "2.00m") in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if match is None:
        raise RuntimeError(f"unexpected wrk duration {text!r}")
    return round(float(match.group(1)) * WRK_UNITS_MS[match.group(2)], 3)


def run_wrk(url: str, load: HttpLoad, script: Path | None = None) -> dict[str, Any]:
    """Run wrk against ``url`` (its requests made by the Lua ``script``, if given): requests/s,
    total requests, non-2xx answers, socket errors, and the latency percentiles in ms."""
    command = [
        servers.require_binary("wrk"),
        f"--threads={load.threads}",
        f"--connections={load.connections}",
        f"--duration={load.seconds}s",
        "--latency",
        *(["--script", str(script)] if script else []),
        url,
    ]
    output = subprocess.run(command, capture_output=True, text=True, check=True, timeout=load.seconds + 30).stdout
    requests = re.search(r"(\d+) requests in", output)
    per_second = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if requests is None or per_second is None:
        raise RuntimeError(f"unexpected wrk output:\n{output}")
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    return {
        "requests": int(requests.group(1)),
        "per_second": float(per_second.group(1)),
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": sum(int(count) for count in socket_errors.groups()) if socket_errors else 0,
        **latency_percentiles(output),
    }


def latency_percentiles(output: str) -> dict[str, float | None]:
    """``latency_p50_ms`` and the others, from wrk's "Latency Distribution" lines."""
    found = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", output, re.MULTILINE))
    return {
        f"latency_p{percent}_ms": duration_ms(found[str(percent)]) if str(percent) in found else None
        for percent in PERCENTILES
    }


def expect_no_content(url: str) -> None:
    """Both apps answer the tracking GET with 204; anything else is not worth loading."""
    with urllib.request.urlopen(url, timeout=30) as response:
        if response.status != 204:
            raise RuntimeError(f"GET {url} answered {response.status}, expected 204")


def with_cache_commands(url: str, load: HttpLoad, client: Client, queue: Queue) -> dict[str, Any]:
    """``run_wrk``, with the memcached commands served meanwhile and the events the queue took.

    Nothing but the loaded app uses this memcached, and the queue's own
    ``stats()`` reads are made outside the window; the requests still in the
    server when wrk stops get ``SETTLE_SECONDS`` to finish first.
    """
    written = queue.stats().written
    before = memcached_stats.general(client)
    run = run_wrk(url, load)
    time.sleep(SETTLE_SECONDS)
    commands = memcached_stats.commands_between(before, memcached_stats.general(client))
    return {**run, "events": queue.stats().written - written, "memcached_commands": commands}


def cache_calls_per_event(track_runs: list[dict[str, Any]]) -> dict[str, Any]:
    """memcached commands per event (the median of the rounds', and over them all), and the
    shared writes they show.

    Each ``write_multi`` makes one ``incr`` (one command), so the ``incr``
    count is the number of shared writes; its ``add_multi`` is one command
    per frame. A command is at most one cache call, so commands per event is
    an upper bound of cache calls per event (equal while every write is one frame).
    """
    events = sum(run["events"] for run in track_runs)
    commands = {
        name: sum(run["memcached_commands"][name] for run in track_runs) for name in track_runs[0]["memcached_commands"]
    }
    shared_writes = commands.get("incr_hits", 0) + commands.get("incr_misses", 0)
    per_round = [run["memcached_commands"]["total"] / run["events"] for run in track_runs if run["events"]]
    return {
        "events": events,
        "memcached_commands": commands,
        "commands_per_event": round(statistics.median(per_round), 4) if per_round else None,
        "commands_per_event_overall": round(commands["total"] / events, 4) if events else None,
        "per_round": [round(value, 4) for value in per_round],
        "shared_writes": shared_writes,
        "events_per_shared_write": round(events / shared_writes, 2) if shared_writes else None,
    }


def describe(app: str, run: dict[str, Any]) -> str:
    """One progress line of a run."""
    line = f"HTTP {app}: {run['per_second']:,.0f} req/s, p50 {run['latency_p50_ms']} ms"
    if "events" in run:
        line += f", {run['memcached_commands']['total']} memcached commands for {run['events']} events"
    return line


def describe_user_agents(runs: dict[str, dict[str, Any]]) -> str:
    """One progress line of a round of /track with each kind of User-Agent."""
    return "HTTP track, User-Agents: " + ", ".join(
        f"{kind} {runs[kind]['per_second']:,.0f} req/s" for kind in user_agents.KINDS
    )


def track_vs_noop(
    memcached: tuple[str, int], gunicorn: Gunicorn, load: HttpLoad, repeats: int, on_run: Callable[[str], None]
) -> dict[str, Any]:
    """Requests/s and latency of the no-op handlers and of /track, the ratios, the cache
    commands per /track event, and /track's req/s with ordinary and hostile User-Agents
    (``bench.user_agents``, each round after the three apps).

    The three apps are served at once and loaded in turn, ``repeats`` rounds,
    so other load on the machine falls on every app alike; each app's median
    run counts, and each ratio or latency difference is the median of the
    rounds' own. ``on_run`` hears about each run as it ends.
    """
    client = Client(memcached)
    client.flush_all(noreply=False)
    env = {MEMCACHED_ENV: f"{memcached[0]}:{memcached[1]}"}
    reference = default_queue()
    queue = Queue(reference.name, client, shards=reference.shards)
    try:
        with ExitStack() as stack:
            scripts = user_agents.write_scripts(Path(stack.enter_context(tempfile.TemporaryDirectory())))
            urls, pids = {}, {}
            for name, app in APPS.items():
                server = stack.enter_context(
                    servers.gunicorn(app, gunicorn.workers, gunicorn.threads, servers.REPO_ROOT, env)
                )
                urls[name], pids[name] = f"http://{servers.HOST}:{server.port}{TRACK_PATH}", server.process.pid
                expect_no_content(urls[name])
                run_wrk(urls[name], HttpLoad(WARM_UP_SECONDS, load.connections, load.threads))
            rounds, user_agent_rounds = [], []
            for _ in range(repeats):
                rounds.append({})
                for name, url in urls.items():
                    run = with_cache_commands(url, load, client, queue) if name == "track" else run_wrk(url, load)
                    rounds[-1][name] = {"app": name, **run}
                    on_run(describe(name, run))
                user_agent_rounds.append(user_agents.load_round(urls["track"], load, scripts, pids["track"]))
                on_run(describe_user_agents(user_agent_rounds[-1]))
        written = queue.stats().written
    finally:
        client.close()
    runs = [run for round_runs in rounds for run in round_runs.values()]
    median = {run["app"]: run for run in median_runs(runs, lambda run: run["app"], lambda run: run["per_second"])}

    def per_round(value: Callable[[dict[str, Any]], float]) -> float:
        return round(statistics.median(value(r) for r in rounds), 3)

    def latency(app: str, percent: int) -> float:
        return per_round(lambda r: r[app][f"latency_p{percent}_ms"])

    return {
        **median,
        "all_per_second": {name: [r[name]["per_second"] for r in rounds] for name in APPS},
        "track_to_noop": per_round(lambda r: r["track"]["per_second"] / r["noop"]["per_second"]),
        "track_to_noop_wrapped": per_round(lambda r: r["track"]["per_second"] / r["noop_wrapped"]["per_second"]),
        "latency_ms": {name: {f"p{percent}": latency(name, percent) for percent in (50, 99)} for name in APPS},
        "track_p50_over_noop_ms": per_round(lambda r: r["track"]["latency_p50_ms"] - r["noop"]["latency_p50_ms"]),
        "track_p50_over_noop_wrapped_ms": per_round(
            lambda r: r["track"]["latency_p50_ms"] - r["noop_wrapped"]["latency_p50_ms"]
        ),
        "track_cache_calls": cache_calls_per_event([r["track"] for r in rounds]),
        "track_user_agents": user_agents.compare(user_agent_rounds),
        "track_messages_written": written,
        "gunicorn": {"workers": gunicorn.workers, "threads": gunicorn.threads},
        "wrk": {"threads": load.threads, "connections": load.connections, "seconds": load.seconds},
    }
