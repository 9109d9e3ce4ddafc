"""End to end through ``python main.py``: events/s from HTTP until counted in Datastore, and
the lag from a ``/track`` answer to the event showing in ``/stats``, at two load levels.

The local server (devserver/: gunicorn, one worker of 8 threads, on the SDK's
stubs) counts events as App Engine would: each time slot's processing task is
sent back to it over HTTP when the slot ends, and drains the queue into
Datastore. One server serves both levels, one after the other; each level
starts once the one before is counted.

Each level:

* Load, for ``seconds``: ``paced``, a fixed rate of ``GET /track`` from
  ``PACED_CLIENTS`` Python threads on kept-alive connections (event ``i`` is
  due at ``i / rate``); ``saturating``, wrk on ``connections`` connections as
  fast as the server answers. Both spread their events over ``ITEMS`` items.
* Markers: meanwhile a thread of its own tracks one click of a new item every
  ``marker_interval`` seconds and notes when the answer came.
* Lag: a poller asks ``/stats?item=`` of the oldest marker not yet seen, every
  ``POLL_INTERVAL_SECONDS``, and on through the next ones while they are seen.
  A marker's lag is from its ``/track`` answer to the answer of the poll that
  first saw it: an upper bound, by at most a poll interval and a poll's round trip.
* Counted: after the load, ``/stats`` is polled until its totals grew by every
  event answered and the queue is empty (nothing queued or leased). End to
  end, events/s is what was counted over the time from the load's start to
  that poll; the tail is from the load's end to that poll. A level not counted
  within ``timeout`` seconds is reported as incomplete. What was counted by
  the load's end gives the drain's rate under the load, apart from its rate after.
"""

from __future__ import annotations

import http.client
import itertools
import json
import tempfile
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import servers
from bench.http_load import HttpLoad, run_wrk
from bench.workload import percentile

PACED_CLIENTS = 8
ITEMS = 100
POLL_INTERVAL_SECONDS = 0.05
COUNTED_POLL_SECONDS = 0.1
WARM_UP_EVENTS = 20
WARM_UP_TIMEOUT_SECONDS = 30
REQUEST_TIMEOUT_SECONDS = 30
IDLE_SECONDS = 1.0
"""A connection unused this long is opened again: gunicorn closes kept-alive ones idle for 2 s."""
WRK_SCRIPT = """counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/track?type=click&item={prefix}-" .. (counter % {items}))
end
"""


@dataclass(frozen=True)
class Level:
    """One load level: ``rate`` events/s from paced clients, or (None) wrk on ``connections``."""

    name: str
    rate: float | None
    connections: int = 0


@dataclass(frozen=True)
class EndToEnd:
    """What every level shares."""

    seconds: float
    marker_interval: float
    timeout: float


class Connection:
    """One kept-alive HTTP connection to the local server, opened again after a failure
    or a pause long enough for the server to have closed it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.http: http.client.HTTPConnection | None = None
        self.last_used = 0.0

    def get(self, path: str) -> tuple[int, bytes]:
        """``GET path``: status and body. A failure (raised) closes the connection; nothing is retried."""
        if self.http is not None and time.monotonic() - self.last_used > IDLE_SECONDS:
            self.close()
        if self.http is None:
            self.http = http.client.HTTPConnection(servers.HOST, self.port, timeout=REQUEST_TIMEOUT_SECONDS)
        try:
            self.http.request("GET", path)
            response = self.http.getresponse()
            status, body = response.status, response.read()
        except (OSError, http.client.HTTPException):
            self.close()
            raise
        self.last_used = time.monotonic()
        return status, body

    def get_json(self, path: str) -> Any:
        """``GET path`` of a page that only reads: tried again once on a fresh connection."""
        try:
            status, body = self.get(path)
        except (OSError, http.client.HTTPException):
            status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path} answered {status}: {body[:200]!r}")
        return json.loads(body)

    def close(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None


def track_path(item: str) -> str:
    return "/track?" + urllib.parse.urlencode({"type": "click", "item": item})


def counted_events(stats: dict[str, Any]) -> int:
    return sum(stats["totals"][name] for name in ("click", "view", "bots"))


@dataclass
class Markers:
    """Marker events: when each was answered, and when a poll first saw it counted."""

    prefix: str
    answered: list[tuple[str, float]] = field(default_factory=list)
    seen: dict[str, float] = field(default_factory=dict)
    poll_round_trips: list[float] = field(default_factory=list)
    failed: int = 0

    def send(self, port: int, interval: float, stop: threading.Event) -> None:
        """One marker every ``interval`` seconds until ``stop``."""
        connection, started = Connection(port), time.monotonic()
        for number in itertools.count():
            if stop.wait(max(0.0, started + number * interval - time.monotonic())):
                break
            item = f"{self.prefix}-{number}"
            try:
                status, _ = connection.get(track_path(item))
            except (OSError, http.client.HTTPException):
                status = 0
            if status == 204:
                self.answered.append((item, time.monotonic()))
            else:
                self.failed += 1
        connection.close()

    def poll(self, port: int, sending_done: threading.Event, deadline: float, abandon: threading.Event) -> None:
        """Until every marker sent is seen (once sending is done), the deadline, or ``abandon``."""
        connection = Connection(port)
        while time.monotonic() < deadline and not abandon.is_set():
            done = sending_done.is_set()
            pending = [item for item, _ in list(self.answered) if item not in self.seen]
            if done and not pending:
                break
            for item in pending:
                asked = time.monotonic()
                try:
                    counts = connection.get_json(f"/stats?item={item}")
                except (OSError, http.client.HTTPException, RuntimeError):
                    break
                answered = time.monotonic()
                self.poll_round_trips.append(answered - asked)
                if counts["click"] < 1:
                    break
                self.seen[item] = answered
            time.sleep(POLL_INTERVAL_SECONDS)
        connection.close()

    def lags_ms(self) -> list[float]:
        return [(self.seen[item] - at) * 1000 for item, at in self.answered if item in self.seen]


def paced_load(port: int, rate: float, seconds: float, prefix: str) -> dict[str, Any]:
    """``rate * seconds`` events at ``rate`` per second from ``PACED_CLIENTS`` threads; none sent
    after ``seconds`` plus 5 s (a server that cannot keep up answers fewer)."""
    count, numbers = round(rate * seconds), itertools.count()
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    lock = threading.Lock()
    started = time.monotonic()
    last_send = started + seconds + 5

    def sender() -> None:
        connection, mine, times = Connection(port), Counter(), []
        while (number := next(numbers)) < count:
            due = started + number / rate
            if due > last_send:
                break
            time.sleep(max(0.0, due - time.monotonic()))
            asked = time.monotonic()
            try:
                status, _ = connection.get(track_path(f"{prefix}-{number % ITEMS}"))
            except (OSError, http.client.HTTPException):
                status = 0
            mine[status] += 1
            times.append((time.monotonic() - asked) * 1000)
        connection.close()
        with lock:
            statuses.update(mine)
            latencies.extend(times)

    threads = [threading.Thread(target=sender, name=f"paced-{n}") for n in range(PACED_CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    answered = sum(n for status, n in statuses.items() if 200 <= status < 300)
    return {
        "client": f"{PACED_CLIENTS} Python threads, paced",
        "requests": sum(statuses.values()),
        "answered": answered,
        "failed": sum(statuses.values()) - answered,
        "seconds": round(elapsed, 3),
        "latency_p50_ms": round(percentile(latencies, 50) or 0, 3),
        "latency_p99_ms": round(percentile(latencies, 99) or 0, 3),
    }


def wrk_load(port: int, connections: int, seconds: float, prefix: str, directory: Path) -> dict[str, Any]:
    """wrk on ``connections`` connections for ``seconds`` (whole seconds, at least 1)."""
    script = directory / f"{prefix}.lua"
    script.write_text(WRK_SCRIPT.format(prefix=prefix, items=ITEMS))
    duration = max(1, round(seconds))
    started = time.monotonic()
    run = run_wrk(f"http://{servers.HOST}:{port}/", HttpLoad(duration, connections), script)
    answered = run["requests"] - run["non_2xx"]
    return {
        "client": f"wrk, {connections} connections",
        "requests": run["requests"],
        "answered": answered,
        "failed": run["non_2xx"] + run["socket_errors"],
        "seconds": round(time.monotonic() - started, 3),
        "latency_p50_ms": run["latency_p50_ms"],
        "latency_p99_ms": run["latency_p99_ms"],
    }


def wait_until_counted(connection: Connection, before: int, expected: int, deadline: float) -> tuple[int, float, bool]:
    """Poll /stats until ``expected`` events more than ``before`` are counted and the queue is
    empty: (events counted, when, whether that happened before ``deadline``)."""
    while True:
        stats = connection.get_json("/stats")
        now = time.monotonic()
        counted = counted_events(stats) - before
        queue = stats["queue"]
        if counted >= expected and queue["depth"] == 0 and queue["leased"] == 0:
            return counted, now, True
        if now > deadline:
            return counted, now, False
        time.sleep(COUNTED_POLL_SECONDS)


def measure_level(server: servers.Server, level: Level, config: EndToEnd, directory: Path) -> dict[str, Any]:
    """One level's load, markers and lag, and the wait until it is all counted; the CPU the
    server took meanwhile."""
    port = server.port
    connection = Connection(port)
    before = counted_events(connection.get_json("/stats"))
    cpu_at_start = servers.cpu_seconds(server.process.pid)
    markers = Markers(f"lag-{level.name}")
    stop_markers, abandon = threading.Event(), threading.Event()
    started = time.monotonic()
    deadline = started + config.seconds + config.timeout
    sender = threading.Thread(target=markers.send, args=(port, config.marker_interval, stop_markers))
    poller = threading.Thread(target=markers.poll, args=(port, stop_markers, deadline, abandon))
    sender.start()
    poller.start()
    try:
        prefix = f"e2e-{level.name}"
        try:
            if level.rate is None:
                load = wrk_load(port, level.connections, config.seconds, prefix, directory)
            else:
                load = paced_load(port, level.rate, config.seconds, prefix)
        finally:
            stop_markers.set()
            sender.join()
        load_ended = time.monotonic()
        cpu_at_load_end = servers.cpu_seconds(server.process.pid)
        counted_during_load = counted_events(connection.get_json("/stats")) - before
        answered = load["answered"] + len(markers.answered)
        counted, counted_at, complete = wait_until_counted(connection, before, answered, deadline)
        cpu_at_counted = servers.cpu_seconds(server.process.pid)
    except BaseException:
        abandon.set()
        raise
    finally:
        poller.join()
        connection.close()
    lags = markers.lags_ms()
    return {
        "level": level.name,
        "rate": level.rate,
        "connections": level.connections if level.rate is None else PACED_CLIENTS,
        "load": load,
        "markers": {"answered": len(markers.answered), "seen": len(lags), "failed": markers.failed},
        "answered": answered,
        "counted": counted,
        "complete": complete,
        "answered_per_second": round(answered / (load_ended - started), 1),
        "end_to_end_per_second": round(counted / (counted_at - started), 1),
        "tail_seconds": round(counted_at - load_ended, 3),
        "counted_during_load": counted_during_load,
        "counted_per_second_during_load": round(counted_during_load / (load_ended - started), 1),
        "counted_per_second_in_tail": round((counted - counted_during_load) / max(counted_at - load_ended, 1e-9), 1),
        "server_cpu_per_second": {
            "during_load": round((cpu_at_load_end - cpu_at_start) / (load_ended - started), 3),
            "in_tail": round((cpu_at_counted - cpu_at_load_end) / max(counted_at - load_ended, 1e-9), 3),
        },
        "lag_ms": {
            "p50": _rounded(percentile(lags, 50)),
            "p99": _rounded(percentile(lags, 99)),
            "max": _rounded(max(lags, default=None)),
        },
        "poll_round_trip_ms_p50": _rounded(percentile([t * 1000 for t in markers.poll_round_trips], 50)),
    }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def warm_up(port: int, timeout: float) -> bool:
    """A few events through the whole path (imports, the first task, the first entities)."""
    connection = Connection(port)
    before = counted_events(connection.get_json("/stats"))
    for number in range(WARM_UP_EVENTS):
        connection.get(track_path(f"warm-up-{number}"))
    _, _, complete = wait_until_counted(connection, before, WARM_UP_EVENTS, time.monotonic() + timeout)
    connection.close()
    return complete


def run_end_to_end(levels: list[Level], config: EndToEnd, on_level: Callable[[str], None]) -> dict[str, Any]:
    """Every level on one ``python main.py``, started here on a fresh datastore and stopped after."""
    with (
        tempfile.TemporaryDirectory(prefix="clickqueue-bench-e2e-") as directory,
        servers.local_app_server(Path(directory) / "data") as server,
    ):
        warmed_up = warm_up(server.port, min(config.timeout, WARM_UP_TIMEOUT_SECONDS))
        on_level(f"end to end: warm-up {'counted' if warmed_up else 'NOT counted'}")
        results = []
        for level in levels:
            results.append(measure_level(server, level, config, Path(directory)))
            done = results[-1]
            on_level(
                f"end to end, {level.name}: {done['answered_per_second']:,.0f} answered/s, "
                f"{done['end_to_end_per_second']:,.0f} counted/s, lag p50 {done['lag_ms']['p50']} ms"
                + ("" if done["complete"] else f" (NOT all counted: {done['counted']} of {done['answered']})")
            )
    return {
        "server": "python main.py (gunicorn, 1 worker, 8 threads, SDK stubs)",
        "seconds": config.seconds,
        "marker_interval_seconds": config.marker_interval,
        "poll_interval_seconds": POLL_INTERVAL_SECONDS,
        "timeout_seconds": config.timeout,
        "warm_up_counted": warmed_up,
        "levels": results,
    }
