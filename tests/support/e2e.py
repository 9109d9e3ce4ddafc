"""Shared by the end-to-end tests: ``python main.py`` as a server process, a mixed
plan of events sent over real HTTP by concurrent clients, and a wait until
``/stats`` shows exactly those counts."""

from __future__ import annotations

import http.client
import json
import os
import random
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from tests.support.processes import REPO_ROOT, free_port, stop_process, wait_until

from devserver.server import STOP_SECONDS

JSON_BATCH_SIZE = 50
SERVER_STOP_SECONDS = STOP_SECONDS + 10
"""How long a stopped local server may take to finish requests, drain and save (it kills itself after STOP_SECONDS)."""


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    body: bytes | None = None
    content_type: str | None = None
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes
    headers: Message | None = None
    """Case-insensitive, as ``http.client`` gives them."""

    def json(self):
        return json.loads(self.body)


def send(base_url: str, request: HttpRequest, timeout_seconds: float = 60) -> HttpResponse:
    headers = dict(request.headers)
    if request.content_type:
        headers["Content-Type"] = request.content_type
    http_request = urllib.request.Request(
        base_url + request.path, data=request.body, method=request.method, headers=headers
    )
    try:
        with urllib.request.urlopen(http_request, timeout=timeout_seconds) as response:
            return HttpResponse(response.status, response.read())
    except urllib.error.HTTPError as error:
        return HttpResponse(error.code, error.read())


def send_raw(
    base_url: str, method: str, path: str, headers: dict[str, str], body: bytes | None, timeout_seconds: float = 60
) -> HttpResponse:
    """One request on a connection of its own, exactly as given: no client-side checks or redirects."""
    host, port = urllib.parse.urlsplit(base_url).netloc.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=timeout_seconds)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return HttpResponse(response.status, response.read(), response.msg)
    finally:
        connection.close()


Headers = tuple[tuple[str, str], ...]


def get_json(base_url: str, path: str, headers: Headers = ()):
    """GET ``path`` (an admin page under dev_appserver needs its sign-in cookie in ``headers``)."""
    response = send(base_url, HttpRequest("GET", path, headers=headers))
    assert response.status == 200, response
    return response.json()


def wait_until_serving(process: subprocess.Popen, base_url: str, timeout_seconds: float, headers: Headers = ()) -> None:
    """Wait until the server answers /stats; fail at once if its process ended."""

    def serving() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"{process.args} exited with {process.returncode}")
        try:
            get_json(base_url, "/stats", headers)
        except OSError:
            return False
        return True

    wait_until(serving, timeout_seconds, interval_seconds=0.2, message=f"{base_url} to serve the app")


@contextmanager
def local_server(
    data_dir: Path, log_path: Path, port: int | None = None, environment: dict[str, str] | None = None
) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``python main.py`` on a free port in its own process group (with ``environment``
    added to its environment); SIGTERM it at the end."""
    port = port or free_port()
    env = {
        **os.environ,
        **(environment or {}),
        "PORT": str(port),
        "CLICKQUEUE_DATA_DIR": str(data_dir),
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "main.py"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, base_url, timeout_seconds=60)
        yield base_url, process
    finally:
        stop_process(process, timeout_seconds=SERVER_STOP_SECONDS)


def track_get(event_type: str, item: str) -> HttpRequest:
    """One event, as ``GET /track?type=...&item=...``."""
    return HttpRequest("GET", "/track?" + urllib.parse.urlencode({"type": event_type, "item": item}))


@dataclass(frozen=True)
class EventPlan:
    """Events to track, and the requests that carry them: a quarter as single
    GETs, a quarter as form POSTs, the rest as JSON batches."""

    events: list[tuple[str, str]]

    @classmethod
    def random(cls, count: int, item_count: int, seed: int) -> EventPlan:
        rng = random.Random(seed)
        items = [f"item-{n:03}" for n in range(item_count)]
        return cls([(rng.choice(("click", "view")), rng.choice(items)) for _ in range(count)])

    def requests(self) -> list[HttpRequest]:
        quarter = len(self.events) // 4
        gets, posts, batched = self.events[:quarter], self.events[quarter : 2 * quarter], self.events[2 * quarter :]
        requests = [track_get(t, i) for t, i in gets]
        requests += [
            HttpRequest(
                "POST",
                "/track",
                urllib.parse.urlencode({"type": t, "item": i}).encode(),
                "application/x-www-form-urlencoded",
            )
            for t, i in posts
        ]
        for start in range(0, len(batched), JSON_BATCH_SIZE):
            events = [{"type": t, "item": i} for t, i in batched[start : start + JSON_BATCH_SIZE]]
            requests.append(HttpRequest("POST", "/track", json.dumps({"events": events}).encode(), "application/json"))
        return requests

    def expected_totals(self) -> dict[str, int]:
        """As ``people_counts`` shows them."""
        by_type = Counter(event_type for event_type, _ in self.events)
        return {"click": by_type["click"], "view": by_type["view"]}

    def expected_items(self) -> list[dict[str, object]]:
        """As /stats lists them: most events first, then by item."""
        counted = Counter(self.events)
        items = sorted({item for _, item in self.events})
        entries = [{"item": item, "click": counted["click", item], "view": counted["view", item]} for item in items]
        return sorted(entries, key=lambda entry: -(entry["click"] + entry["view"]))


def send_concurrently(base_url: str, requests: list[HttpRequest], clients: int) -> Counter[int]:
    """Send every request from ``clients`` threads at once; return how many got each status."""
    with ThreadPoolExecutor(max_workers=clients) as pool:
        return Counter(response.status for response in pool.map(lambda r: send(base_url, r), requests))


def people_counts(stats: dict) -> tuple[dict[str, int], list[dict[str, object]]]:
    """/stats's totals and items, clicks and views only (neither bots nor CTR)."""

    def counts(entry: dict) -> dict:
        return {name: entry[name] for name in ("item", "click", "view") if name in entry}

    return counts(stats["totals"]), [counts(entry) for entry in stats["items"]]


def counted_events(stats: dict) -> int:
    """The events /stats' totals count: each adds 1 to one of their columns."""
    totals = stats["totals"]
    return totals["click"] + totals["view"] + totals["bots"]


def wait_until_drained(base_url: str, timeout_seconds: float, counted_before: int = 0) -> None:
    """Wait until every event the queue took is counted: none queued, none leased, and
    every one folded into the totals, which held ``counted_before`` events from elsewhere
    (history written straight to Datastore) when the queue was empty."""

    def drained() -> bool:
        stats = get_json(base_url, "/stats")
        queue = stats["queue"]
        folded = counted_events(stats) - counted_before
        return queue["depth"] == 0 and queue["leased"] == 0 and folded == queue["written"] - queue["lost"]

    wait_until(drained, timeout_seconds, interval_seconds=0.2, message="the queue to drain")


def wait_for_counts(base_url: str, plan: EventPlan, timeout_seconds: float, headers: Headers = ()) -> dict:
    """Poll /stats until it shows exactly the plan's counts; return those stats."""

    last_seen: dict = {}

    def counts_are_exact():
        stats = get_json(base_url, "/stats", headers)
        last_seen.update(totals=stats.get("totals"), queue=stats.get("queue"))
        if people_counts(stats) == (plan.expected_totals(), plan.expected_items()):
            return stats
        return None

    try:
        return wait_until(
            counts_are_exact, timeout_seconds, interval_seconds=0.2, message=f"/stats to show {plan.expected_totals()}"
        )
    except AssertionError as timed_out:
        raise AssertionError(f"{timed_out}; last seen: {last_seen}") from None
