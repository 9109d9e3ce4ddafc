"""``python -m bench.profile``: where the time goes, for the targets ``python -m bench`` may miss.

1. The queue cycle against raw memcached and Redis at one batch size: wall and
   client CPU per batch, then cProfile's own time per module group.
2. ``/track`` called in process (no HTTP server, no load client): CPU per
   request of the no-op apps and of /track, then cProfile's time of /track's
   parts (the group commit and ``Queue.write_multi``, scheduling on the SDK stub).
3. Counting (``--counting``, alone): the counting section's Zipf run
   (bench/counting.py) on the local server's stubs, CPU per event of ``/track``
   (JSON batches), ``/process`` and ``/fold``, and each one's top functions;
   then ``GET /track`` of one event, as wrk sends it to ``python main.py``.
4. ``python main.py`` under wrk (``--local-server``, alone): every thread of its
   worker under cProfile (bench/profiled_server.py) through the end-to-end part's
   saturating load; where its time went, by request path, per answered request.

cProfile inflates Python-heavy code more than C calls: compare groups within
one case, and take absolute costs from the unprofiled lines.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import os
import pstats
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
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
    "schedule_processing (SDK stub)": ("clicks/processing.py", "schedule_processing"),
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


def print_top(stats: dict, per: int, count: int = 10) -> None:
    """The ``count`` functions with the most own time, and the app's (handlers/) with the most
    cumulative time, each divided by ``per`` (events or requests)."""
    top = top_functions(stats, count)
    print("  top own time, per event: " + ", ".join(f"{where} {seconds / per * 1e6:,.1f} us" for where, seconds in top))
    in_app = sorted(((f, row[3]) for f, row in stats.items() if "/handlers/" in f[0]), key=lambda item: -item[1])
    print(
        "  handlers/ by cumulative time, per event: "
        + ", ".join(
            f"{f[0].rsplit('/', 1)[-1]}:{f[1]}({f[2]}) {seconds / per * 1e6:,.1f} us" for f, seconds in in_app[:count]
        )
    )


def profile_counting(events: int, items: int, post_batch: int, requests: int) -> None:
    from bench.counting import TIMED_PATHS, Workload, app_on_stubs, warm_up

    workload = Workload(events, items, zipf=True)
    warm_up()
    with app_on_stubs() as (tasks, _):
        tasks.post(workload.make_events(), post_batch)
        tasks.run_until_idle()
    print(f"{workload.name}, {events:,} events, posted in JSON batches of {post_batch}, then counted:")
    for path in TIMED_PATHS:
        wall, cpu = tasks.seconds[path] / events, tasks.cpu_seconds[path] / events
        print(f"{path}: {wall * 1e6:,.1f} us wall, {cpu * 1e6:,.1f} us CPU per event")
    with app_on_stubs() as (tasks, _):
        tasks.profiles = {}
        tasks.post(workload.make_events(), post_batch)
        tasks.run_until_idle()
    for path in TIMED_PATHS:
        print(f"{path} profiled:")
        print_top(pstats.Stats(tasks.profiles[path]).stats, events)
    with app_on_stubs() as (tasks, _):

        def get_track(number: int = 0) -> None:
            tasks.app.get(f"/track?type=click&item=item-{number % items}", status=204)

        get_track()
        wall, cpu = timed(get_track, requests)
        print(f"GET /track of one event, as wrk sends it: {wall * 1e6:,.0f} us wall, {cpu * 1e6:,.0f} us CPU")
        print_top(profiled(get_track, requests), requests)


def _where(function: Callable) -> tuple[str, int, str]:
    """``function``'s key in cProfile's stats."""
    code = function.__code__
    return code.co_filename, code.co_firstlineno, code.co_name


def local_server_functions() -> tuple[dict[str, tuple[str, int, str]], dict[str, tuple[str, int, str]]]:
    """The local server's parts whose cumulative time is reported, and the calls counted."""
    from gunicorn.workers.gthread import ThreadWorker

    from clicks import counting, processing
    from handlers.base import JsonApplication
    from handlers.tasks import FoldTaskHandler, ProcessTaskHandler
    from handlers.stats import StatsHandler
    from handlers.track import TrackHandler

    parts = {
        "gunicorn's request handling": ThreadWorker.handle,
        "the app inside wrap_wsgi_app": JsonApplication.__call__,
        "/track": TrackHandler.get,
        "/process": ProcessTaskHandler.post,
        "/fold": FoldTaskHandler.post,
        "/stats": StatsHandler.get,
    }
    calls = {"/process": ProcessTaskHandler.post, "drain": processing.drain, "count_batch": counting.count_batch}
    calls.update({"/fold": FoldTaskHandler.post, "fold": counting.fold})
    return {k: _where(f) for k, f in parts.items()}, {k: _where(f) for k, f in calls.items()}


def written_profile(directory: Path, name: str) -> dict:
    """Ask bench.profiled_server for the profiles so far, under ``name``; wait for them and merge them."""
    from bench.profiled_server import REQUESTED, WRITTEN

    (directory / f"{name}{REQUESTED}").touch()
    deadline = time.monotonic() + 60
    while not (directory / f"{name}{WRITTEN}").exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"the profiled server wrote no profile {name!r} within 60 s")
        time.sleep(0.1)
    return pstats.Stats(*map(str, sorted(directory.glob(f"{name}-*.prof")))).stats


def print_server_profile(stats: dict, answered: int) -> None:
    """CPU per answered request of the server's parts, the calls of the counting steps, the top functions."""
    parts, calls = local_server_functions()
    total = sum(row[2] for row in stats.values())
    cumulative_of = {label: stats[where][3] if where in stats else 0.0 for label, where in parts.items()}
    print(
        "  profiled CPU per answered request: "
        + ", ".join(
            f"{label} {value / answered * 1e6:,.0f} us ({value / total:.0%})"
            for label, value in {"all threads": total, **cumulative_of}.items()
        )
    )
    counts = {label: stats[where][1] if where in stats else 0 for label, where in calls.items()}
    print("  calls: " + ", ".join(f"{label} {count:,}" for label, count in counts.items()))
    print_top(stats, answered)


def profile_local_server(seconds: int, connections: int) -> None:
    from bench.e2e import Connection, counted_events, wait_until_counted, warm_up, wrk_load
    from bench.profiled_server import PROFILE_DIR_ENV

    with tempfile.TemporaryDirectory(prefix="clickqueue-profile-") as directory:
        profiles = Path(directory) / "profiles"
        profiles.mkdir()
        arguments, env = ["-m", "bench.profiled_server"], {PROFILE_DIR_ENV: str(profiles)}
        with servers.local_app_server(Path(directory) / "data", arguments, env) as server:
            warm_up(server.port, 30)
            connection = Connection(server.port)
            before = counted_events(connection.get_json("/stats"))
            cpu_before = servers.cpu_seconds(server.process.pid)
            load = wrk_load(server.port, connections, seconds, "profile", Path(directory))
            cpu = servers.cpu_seconds(server.process.pid) - cpu_before
            during_load = written_profile(profiles, "load")
            counted_by_then = counted_events(connection.get_json("/stats")) - before
            answered = load["answered"]
            started = time.monotonic()
            counted, _, _ = wait_until_counted(connection, before, answered, started + 300)
            tail = time.monotonic() - started
            until_counted = written_profile(profiles, "counted")
            connection.close()
    print(
        f"python main.py, every worker thread under cProfile (CPU time), wrk {connections} connections for "
        f"{seconds} s: {answered:,} answered ({answered / seconds:,.0f}/s), {counted_by_then:,} counted by the "
        f"load's end, the server using {cpu / seconds:.2f} CPU seconds a second"
    )
    print("during the load (calls still running at its end left out):")
    print_server_profile(during_load, answered)
    print(f"from the load's start until all {counted:,} were counted, {tail:.1f} s after its end:")
    print_server_profile(until_counted, answered)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.profile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--message-bytes", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=300, help="calls per timing round and for the profile")
    parser.add_argument("--counting", action="store_true", help="profile counting (part 3) instead of parts 1 and 2")
    parser.add_argument(
        "--local-server", action="store_true", help="profile python main.py under wrk (part 4) instead of parts 1 and 2"
    )
    parser.add_argument("--seconds", type=int, default=10, help="seconds of wrk load on python main.py")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections to python main.py")
    parser.add_argument("--counting-events", type=int, default=20_000, help="events of the counting run")
    parser.add_argument("--counting-items", type=int, default=1000, help="items they are drawn from, Zipf(1.1)")
    parser.add_argument("--counting-post-batch", type=int, default=50, help="events per JSON POST /track")
    args = parser.parse_args()
    if args.counting:
        profile_counting(args.counting_events, args.counting_items, args.counting_post_batch, args.repeats * 10)
        return
    if args.local_server:
        profile_local_server(args.seconds, args.connections)
        return
    profile_cycle(args.batch, args.message_bytes, args.repeats)
    profile_track(args.repeats * 10)


if __name__ == "__main__":
    main()
