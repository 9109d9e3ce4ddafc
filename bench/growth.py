"""``python -m bench.growth``: the local server as data grows, to 50,000 distinct items.

Drain rate: events for new distinct items (the costliest case: each one grows
the count store's shards) are written to the queue, drained with the processing
task's own ``drain`` and folded with the fold task's ``fold``, in-process on the
stubs ``python main.py`` uses, at 0, 10,000 and 50,000 items already stored (the
median of a few drains each). ``/stats`` latency: ``python main.py`` is then started on the saved
datastore and ``GET /stats`` is timed over HTTP.

``--datastore sdk`` drains on the SDK's Datastore stub as it comes (the file
rewritten after every commit), for comparison; it has no HTTP step, since
``python main.py`` always runs the local stub.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from bench import servers
from bench.e2e import counted_events

REPO_ROOT = servers.REPO_ROOT
CHECKPOINTS = [0, 10_000, 50_000]
WRITE_CHUNK = 500


@dataclass(frozen=True)
class DrainRate:
    items_before: int
    events: int
    seconds: float
    cpu_seconds: float
    """This process's CPU time: the drain runs on in-process stubs, so it is the
    work done, much less disturbed by other processes than wall time on a shared machine."""

    @property
    def per_second(self) -> float:
        """Events per CPU second."""
        return self.events / self.cpu_seconds

    @property
    def per_wall_second(self) -> float:
        return self.events / self.seconds


def activate_stubs(data_dir: Path, datastore: str):
    """Memcache and Datastore stubs in this process: the local server's, or the SDK's own."""
    from google.appengine.api import apiproxy_stub_map
    from google.appengine.ext import testbed

    import devserver
    from devserver.datastore import LocalDatastoreStub

    bed = testbed.Testbed()
    bed.activate()
    bed.setup_env(app_id=devserver.APP_ID, overwrite=True)
    bed.init_memcache_stub()
    bed.init_taskqueue_stub(root_path=str(REPO_ROOT))
    data_file = data_dir / "datastore.db"
    if datastore == "local":
        stub = LocalDatastoreStub(devserver.APP_ID, data_file)
        apiproxy_stub_map.apiproxy.RegisterStub("datastore_v3", stub)
        return bed, stub.save
    bed.init_datastore_v3_stub(datastore_file=str(data_file), save_changes=True)
    return bed, None


def add_items(settings, first: int, count: int) -> DrainRate:
    """Queue one view for each of ``count`` new items, drain and fold them all; the time that took."""
    from clicks import counting
    from clicks.processing import drain

    names = [f"item-{n:06}" for n in range(first, first + count)]
    for start in range(0, count, WRITE_CHUNK):
        settings.queue.write_multi([{"type": "view", "item": name} for name in names[start : start + WRITE_CHUNK]])
    started, started_cpu = time.perf_counter(), time.process_time()
    report = drain(settings)
    while counting.fold(settings.clock()).more:
        pass
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    if report.processed != count or report.budget_spent:
        raise RuntimeError(f"drained {report.processed} of {count} events")
    return DrainRate(first, count, seconds, cpu_seconds)


def measure_drain(
    data_dir: Path, datastore: str, checkpoints: list[int], probe_events: int, repeats: int
) -> list[DrainRate]:
    """At each checkpoint, the median of ``repeats`` drains of ``probe_events`` new items each."""
    gaps = [later - earlier for earlier, later in zip(checkpoints, checkpoints[1:])]
    if gaps and repeats * probe_events > min(gaps):
        raise ValueError("the drains at one checkpoint would reach the next")
    from clicks.settings import Settings

    bed, save = activate_stubs(data_dir, datastore)
    settings = Settings(time_budget_seconds=3600)
    rates, stored = [], 0
    for checkpoint in checkpoints:
        if checkpoint > stored:
            add_items(settings, stored, checkpoint - stored)
            stored = checkpoint
        probes = []
        for _ in range(repeats):
            probes.append(add_items(settings, stored, probe_events))
            stored += probe_events
        rate = sorted(probes, key=lambda probe: probe.per_second)[len(probes) // 2]
        rates.append(rate)
        print(
            f"drain at {checkpoint:>6} items: {rate.per_second:5.0f} events per CPU second"
            f" ({rate.per_wall_second:.0f} per wall second; median of {repeats})",
            file=sys.stderr,
        )
    if save is not None:
        save()
    bed.deactivate()
    return rates


def measure_stats(data_dir: Path, requests: int) -> dict[str, float]:
    """Time ``GET /stats`` on ``python main.py`` serving ``data_dir``: median and slowest, in
    ms; the items it lists and the events its totals count."""
    with servers.local_app_server(data_dir) as server:
        url = f"http://{servers.HOST}:{server.port}/stats"
        timings = []
        for _ in range(requests + 1):  # the first one warms up
            started = time.perf_counter()
            with urllib.request.urlopen(url, timeout=60) as response:
                stats = json.loads(response.read())
            timings.append((time.perf_counter() - started) * 1000)
    result = {
        "median_ms": statistics.median(timings[1:]),
        "max_ms": max(timings[1:]),
        "items_listed": len(stats["items"]),
        "counted": counted_events(stats),
    }
    print(f"/stats: median {result['median_ms']:.1f} ms, slowest {result['max_ms']:.1f} ms", file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.growth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--datastore", choices=["local", "sdk"], default="local", help="which Datastore stub drains")
    parser.add_argument(
        "--checkpoints",
        type=lambda text: [int(part) for part in text.split(",")],
        default=CHECKPOINTS,
        help="items stored before each timed drain, comma-separated",
    )
    parser.add_argument("--probe-events", type=int, default=2000, help="events (new items) in each timed drain")
    parser.add_argument("--repeats", type=int, default=5, help="drains per checkpoint (the median is reported)")
    parser.add_argument("--stats-requests", type=int, default=50, help="GET /stats requests timed")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT))

    with tempfile.TemporaryDirectory(prefix="clickqueue-growth-") as directory:
        data_dir = Path(directory)
        rates = measure_drain(data_dir, args.datastore, args.checkpoints, args.probe_events, args.repeats)
        stats = measure_stats(data_dir, args.stats_requests) if args.datastore == "local" else None
    result = {
        "datastore": args.datastore,
        "drain": [
            {
                "checkpoint": checkpoint,
                **asdict(rate),
                "per_cpu_second": round(rate.per_second),
                "per_wall_second": round(rate.per_wall_second),
            }
            for checkpoint, rate in zip(args.checkpoints, rates)
        ],
        "stats": stats,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
