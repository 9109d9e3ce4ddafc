"""``python -m bench``: parse the options, start the servers, run every part, report."""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from contextlib import ExitStack
from importlib import metadata
from pathlib import Path
from typing import Any

import redis
from pymemcache.client.base import Client

import bench
from bench import servers
from bench.calls import count_calls
from bench.counting import CountingRun, local_server, run_counting
from bench.e2e import EndToEnd, Level, run_end_to_end
from bench.http_load import APPS, Gunicorn, HttpLoad, track_vs_noop
from bench.multiproc import Workload, run_sharded
from bench.report import counting_targets, plot, render_text, targets, throughput_rows
from bench.single import run_group
from bench.storage import bytes_per_message
from bench.workload import Throughput, median_runs

RESULTS_DIR = Path(__file__).resolve().parent / "results"
QUICK_DEFAULTS = {
    "messages": 300,
    "case_seconds": 0.1,
    "slice_seconds": 0.02,
    "repeats": 1,
    "shards": [1, 2],
    "writers": 1,
    "readers": 1,
    "mp_messages": 600,
    "mp_seconds": 2.0,
    "http_seconds": 1,
    "http_connections": 4,
    "storage_messages": 2000,
    "e2e_seconds": 1,
    "e2e_rate": 30,
    "e2e_timeout": 20,
    "counting_events": 1000,
    "counting_zipf_items": 100,
    "counting_uniform_items": 5000,
    "counting_rate": 100,
    "counting_seconds": 12,
    "counting_stats_items": 1000,
    "counting_stats_requests": 5,
}
"""``--quick``: a smoke run of every part in under a minute on 2 cores; explicit options still win."""


def int_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=bench.__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: a smoke run of under a minute, not a measurement"
    )
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout (table on stderr)")
    parser.add_argument("--results", type=Path, default=RESULTS_DIR / "results.json", help="JSON results file")
    parser.add_argument("--plot", type=Path, default=RESULTS_DIR / "throughput.png", help="PNG plot file")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="rounds of the multi-process and HTTP measurements; the median is reported",
    )
    single = parser.add_argument_group("single process")
    single.add_argument("--batches", type=int_list, default=[1, 10, 100], help="batch sizes")
    single.add_argument("--message-sizes", type=int_list, default=[100, 1000], help="message sizes in bytes of JSON")
    single.add_argument("--messages", type=int, default=60000, help="most messages one case moves (and prefill)")
    single.add_argument("--case-seconds", type=float, default=2.0, help="most seconds one case runs, in slices")
    single.add_argument(
        "--slice-seconds", type=float, default=0.05, help="the cases of one batch and size run in turns of this long"
    )
    multi = parser.add_argument_group("multi-process (one memcached)")
    multi.add_argument("--writers", type=int, default=2, help="writer processes")
    multi.add_argument("--readers", type=int, default=2, help="reader processes")
    multi.add_argument("--shards", type=int_list, default=[1, 2, 4, 8], help="shard counts")
    multi.add_argument("--mp-write-batch", type=int, default=10, help="messages per write_multi")
    multi.add_argument("--mp-read-batch", type=int, default=100, help="max_items per read_multi")
    multi.add_argument("--mp-message-bytes", type=int, default=100, help="message size")
    multi.add_argument("--mp-messages", type=int, default=30000, help="messages written per shard count")
    multi.add_argument("--mp-seconds", type=float, default=5.0, help="most seconds the writers run")
    http = parser.add_argument_group("HTTP (gunicorn + wrk)")
    http.add_argument("--http-seconds", type=int, default=2, help="wrk duration per app and round")
    http.add_argument(
        "--http-connections",
        type=int,
        default=64,
        help="wrk connections, kept alive: enough that neither gunicorn worker ends up with most of them",
    )
    http.add_argument("--http-workers", type=int, default=2, help="gunicorn workers (app.yaml: 2)")
    http.add_argument("--http-threads", type=int, default=8, help="gunicorn threads per worker (app.yaml: 8)")
    storage = parser.add_argument_group("memcache bytes per stored message")
    storage.add_argument("--storage-messages", type=int, default=100_000, help="messages stored each way")
    storage.add_argument("--storage-message-bytes", type=int, default=100, help="message size")
    storage.add_argument("--storage-batch", type=int, default=100, help="messages per write_multi or set_many")
    e2e = parser.add_argument_group("end to end (python main.py)")
    e2e.add_argument("--e2e-seconds", type=float, default=10, help="seconds of load per level")
    e2e.add_argument(
        "--e2e-rate", type=float, default=50, help="events/s of the paced level: below what the drain keeps up with"
    )
    e2e.add_argument("--e2e-connections", type=int, default=64, help="wrk connections of the saturating level")
    e2e.add_argument("--e2e-marker-interval", type=float, default=0.1, help="seconds between two lag markers")
    e2e.add_argument("--e2e-timeout", type=float, default=60, help="most seconds a level waits to be counted")
    counting = parser.add_argument_group("counting (in this process, on the local server's stubs)")
    counting.add_argument("--counting-events", type=int, default=20_000, help="events of each writes-per-event run")
    counting.add_argument("--counting-zipf-items", type=int, default=1000, help="items the Zipf(1.1) runs draw from")
    counting.add_argument("--counting-uniform-items", type=int, default=100_000, help="items of the uniform run")
    counting.add_argument("--counting-post-batch", type=int, default=50, help="events per JSON POST /track")
    counting.add_argument("--counting-rate", type=int, default=1000, help="events per simulated second, sustained")
    counting.add_argument("--counting-seconds", type=int, default=30, help="simulated seconds of the sustained rate")
    counting.add_argument(
        "--counting-processors", type=int_list, default=[1, 2, 4], help="processor threads, one run each"
    )
    counting.add_argument("--counting-stats-items", type=int, default=100_000, help="items counted for /stats")
    counting.add_argument("--counting-stats-requests", type=int, default=50, help="GET /stats requests timed")
    known, _ = parser.parse_known_args(argv)
    if known.quick:
        parser.set_defaults(**QUICK_DEFAULTS)
    return parser.parse_args(argv)


def machine_info() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    return {
        "cores": os.cpu_count(),
        "cpu_model": models[0] if models else platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "memcached": servers.version_of(["memcached", "-V"]),
        "redis_server": servers.version_of(["redis-server", "--version"]),
        "wrk": servers.version_of(["wrk", "-v"]),
        **{package: metadata.version(package) for package in ("pymemcache", "redis", "gunicorn", "webapp2")},
        "load_average_at_start": os.getloadavg()[0],
    }


class Progress:
    """One line per finished step on stderr: ``[3/40] label``."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0

    def step(self, label: str) -> None:
        self.done += 1
        print(f"[{self.done:{len(str(self.total))}}/{self.total}] {label}", file=sys.stderr, flush=True)


def measure_single_process(
    args: argparse.Namespace, clients: tuple[Client, redis.Redis], progress: Progress
) -> list[Throughput]:
    """Every case, grouped by batch and message size."""
    results = []
    for size in args.message_sizes:
        for batch in args.batches:
            group = run_group(batch, size, clients, args.messages, args.case_seconds, args.slice_seconds)
            results += group
            progress.step(
                f"batch {batch}, {size} B: "
                + ", ".join(f"{run.case} {run.per_second:,.0f}" for run in group)
                + " msg/s"
            )
    return results


def measure_multiprocess(
    args: argparse.Namespace, address: tuple[str, int], progress: Progress
) -> list[dict[str, Any]]:
    """Every shard count, in ``repeats`` rounds; the median run of each counts."""
    workload = Workload(
        args.writers,
        args.readers,
        args.mp_write_batch,
        args.mp_read_batch,
        args.mp_message_bytes,
        args.mp_messages,
        args.mp_seconds,
    )
    runs = []
    for _ in range(args.repeats):
        for shards in args.shards:
            runs.append(run_sharded(address, shards, workload))
            progress.step(
                f"{args.writers} writers + {args.readers} readers, {shards} shards: {runs[-1]['per_second']:,.0f} msg/s"
            )
    return median_runs(runs, lambda run: run["shards"], lambda run: run["per_second"])


def end_to_end_levels(args: argparse.Namespace) -> list[Level]:
    return [Level("paced", args.e2e_rate), Level("saturating", None, args.e2e_connections)]


def counting_run(args: argparse.Namespace) -> CountingRun:
    return CountingRun(
        events=args.counting_events,
        zipf_items=args.counting_zipf_items,
        uniform_items=args.counting_uniform_items,
        post_batch=args.counting_post_batch,
        events_per_second=args.counting_rate,
        sustained_seconds=args.counting_seconds,
        processors=args.counting_processors,
        stats_items=args.counting_stats_items,
        stats_requests=args.counting_stats_requests,
    )


def run(args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Every part of the benchmark, on servers started here and always stopped."""
    started = time.monotonic()
    document: dict[str, Any] = {"command": command, "machine": machine_info()}
    groups = len(args.batches) * len(args.message_sizes)
    levels = end_to_end_levels(args)
    counting_sizes = counting_run(args)
    progress = Progress(
        groups + 2 + args.repeats * (len(args.shards) + len(APPS)) + 1 + len(levels) + counting_sizes.steps()
    )
    with ExitStack() as stack:
        memcached = stack.enter_context(servers.memcached())
        redis_server = stack.enter_context(servers.redis())
        clients = (Client(memcached.address), redis.Redis(*redis_server.address))
        stack.callback(clients[0].close)
        stack.callback(clients[1].close)
        results = measure_single_process(args, clients, progress)
        calls = count_calls(clients[0])
        progress.step(
            f"cache calls: {calls['write']:g} per write, {calls['cycle_100']:g} per cycle of 100 "
            f"({calls['round_trips']['cycle_100']:g} round trips)"
        )
        storage = bytes_per_message(args.storage_messages, args.storage_message_bytes, args.storage_batch)
        progress.step(
            f"memcache bytes per message: queue {storage['queue']['chunk_bytes_per_message']:g}, "
            f"raw {storage['raw']['chunk_bytes_per_message']:g} (slab chunks)"
        )
        multiprocess = measure_multiprocess(args, memcached.address, progress)
        http = track_vs_noop(
            memcached.address,
            Gunicorn(args.http_workers, args.http_threads),
            HttpLoad(args.http_seconds, args.http_connections),
            args.repeats,
            progress.step,
        )
    end_to_end = run_end_to_end(
        levels, EndToEnd(args.e2e_seconds, args.e2e_marker_interval, args.e2e_timeout), progress.step
    )
    counting = run_counting(counting_sizes, progress.step)
    counting["local_server"] = local_server(http, end_to_end)
    document["machine"]["load_average_at_end"] = os.getloadavg()[0]
    document.update(
        parameters={key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()},
        throughput=throughput_rows(results),
        cache_calls=calls,
        multiprocess=multiprocess,
        http=http,
        storage=storage,
        end_to_end=end_to_end,
        counting=counting,
        targets=[target.as_dict() for target in [*targets(results, calls, http, storage), *counting_targets(counting)]],
        elapsed_seconds=round(time.monotonic() - started, 1),
    )
    return document


def _stop_on_sigterm(signal_number: int, frame: object) -> None:
    raise SystemExit(128 + signal_number)  # unwinds through every server's finally


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        document = run(args, " ".join(["python -m bench", *argv]))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    except servers.ServerError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 2
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(document, indent=2) + "\n")
    plot(document, args.plot)
    text = render_text(document)
    if args.json:
        print(text, file=sys.stderr)
        print(json.dumps(document, indent=2))
    else:
        print(text)
    print(f"results: {args.results}, plot: {args.plot}, {document['elapsed_seconds']} s", file=sys.stderr)
    return 0
