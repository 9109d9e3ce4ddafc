"""``python -m bench.profile``: where the time goes, for the targets ``python -m bench`` may miss.

1. The queue cycle against raw memcached and Redis at one batch size: wall and
   client CPU per batch, then cProfile's own time per module group.
2. ``/track`` called in process (no HTTP server, no load client): CPU per
   request of the no-op apps and of /track, then cProfile's time of /track's
   parts (the group commit and ``Queue.write_multi``, scheduling on the SDK stub).

cProfile inflates Python-heavy code more than C calls: compare groups within
one case, and take absolute costs from the unprofiled lines.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import os
import pstats
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import closing
from wsgiref.util import setup_testing_defaults

import redis
from pymemcache.client.base import Client

from bench import servers
from bench.http_load import MEMCACHED_ENV
from bench.single import CASES, CaseContext

CYCLE_CASES = ("raw_memcached", "queue_cycle", "redis_list")
MODULE_GROUPS = ("clickqueue", "pymemcache", "redis", "json", "webapp2", "webob", "google")
SOCKET_CALLS = (
    "<method 'sendall' of '_socket.socket' objects>",
    "<method 'recv' of '_socket.socket' objects>",
    "<method 'recv_into' of '_socket.socket' objects>",
)
TRACK_PARTS = {
    "the app inside wrap_wsgi_app": ("handlers/base.py", "__call__"),
    "GroupCommit.write_multi": ("clickqueue/group_commit.py", "write_multi"),
    "Queue.write_multi": ("clickqueue/queue.py", "write_multi"),
    "schedule_processing (SDK stub)": ("handlers/processing.py", "schedule_processing"),
}
"""Cumulative times of /track's parts; the rest of the whole is App Engine's ``wrap_wsgi_app``.
Called one at a time, every request leads its own group commit: 2 cache calls each."""


def timed(action: Callable[[], object], repeats: int, rounds: int = 3) -> tuple[float, float]:
    """Best (wall, CPU) seconds per call of ``action`` over ``rounds`` rounds."""
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(repeats):
            action()
        best = min(best, ((time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats))
    return best


def profiled(action: Callable[[], object], repeats: int) -> dict:
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(repeats):
        action()
    profile.disable()
    return pstats.Stats(profile).stats


def group_of(function: tuple[str, int, str]) -> str:
    if function[2] in SOCKET_CALLS:
        return "socket send/recv"
    return next((group for group in MODULE_GROUPS if f"/{group}" in function[0]), "other")


def by_group(stats: dict) -> dict[str, float]:
    groups: dict[str, float] = defaultdict(float)
    for function, (_, _, own_time, _, _) in stats.items():
        groups[group_of(function)] += own_time
    return dict(sorted(groups.items(), key=lambda item: -item[1]))


def top_functions(stats: dict, count: int, group: str | None = None) -> list[tuple[str, float]]:
    """The ``count`` functions (of ``group``, if given) with the most own time, as ("file:line(name)", seconds)."""
    rows = sorted(
        ((function, row) for function, row in stats.items() if group in (None, group_of(function))),
        key=lambda item: -item[1][2],
    )[:count]
    return [(f"{function[0].rsplit('/', 1)[-1]}:{function[1]}({function[2]})", row[2]) for function, row in rows]


def cumulative(stats: dict, file_suffix: str, function_name: str) -> float:
    return sum(
        row[3] for function, row in stats.items() if function[0].endswith(file_suffix) and function[2] == function_name
    )


def profile_cycle(batch: int, message_bytes: int, repeats: int) -> None:
    with (
        servers.memcached() as memcached,
        servers.redis() as redis_server,
        closing(Client(memcached.address)) as memcached_client,
        redis.Redis(*redis_server.address) as redis_client,
    ):
        clients = memcached_client, redis_client
        for name in CYCLE_CASES:
            clients[0].flush_all(noreply=False)
            context = CaseContext(name, batch, message_bytes, repeats * batch, *clients)
            with CASES[name](context) as step:
                wall, cpu = timed(step, repeats)
                stats = profiled(step, repeats)
            print(
                f"{name} batch {batch}, {message_bytes} B: {batch / wall:,.0f} msg/s, "
                f"{wall * 1e6:,.0f} us wall and {cpu * 1e6:,.0f} us client CPU per batch"
            )
            print(
                "  profiled own time per batch: "
                + ", ".join(f"{group} {seconds / repeats * 1e6:,.0f} us" for group, seconds in by_group(stats).items())
            )
            for label, group in (("top functions", None), ("top clickqueue functions", "clickqueue")):
                print(
                    f"  {label}: "
                    + ", ".join(
                        f"{where} {seconds / repeats * 1e6:,.0f} us"
                        for where, seconds in top_functions(stats, 8, group)
                    )
                )


def profile_track(repeats: int) -> None:
    with servers.memcached() as memcached:
        os.environ[MEMCACHED_ENV] = f"{memcached.address[0]}:{memcached.address[1]}"
        noop_app, track_app = importlib.import_module("bench.noop_app"), importlib.import_module("bench.track_app")
        apps = {"no-op": noop_app.app, "no-op wrapped": noop_app.wrapped_app, "/track": track_app.app}

        def request(app: Callable) -> Callable[[], None]:
            def call() -> None:
                environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/track", "QUERY_STRING": "type=click&item=x"}
                setup_testing_defaults(environ)
                b"".join(app(environ, lambda status, headers, exc_info=None: None))

            return call

        for name, app in apps.items():
            request(app)()
            wall, cpu = timed(request(app), repeats)
            print(f"{name}: {wall * 1e6:,.0f} us wall, {cpu * 1e6:,.0f} us CPU per request (in process)")
        stats = profiled(request(apps["/track"]), repeats)
        total = sum(row[2] for row in stats.values())
        parts = {label: cumulative(stats, *where) for label, where in TRACK_PARTS.items()}
        print(
            "  /track profiled, per request: "
            + ", ".join(
                f"{label} {seconds / repeats * 1e6:,.0f} us ({seconds / total:.0%})"
                for label, seconds in {"whole": total, **parts}.items()
            )
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--message-bytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=300, help="calls per timing round and for the profile")
    args = parser.parse_args()
    profile_cycle(args.batch, args.message_bytes, args.repeats)
    profile_track(args.repeats * 10)


if __name__ == "__main__":
    main()
