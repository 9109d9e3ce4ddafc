"""The "counting" section: what counting an event costs in Datastore writes, how fast it
goes against recording, and whether every event is counted exactly once.

Each measure runs in a process of its own (spawned: its stubs, API hooks and
threads end with it), on the stubs ``python main.py`` runs (bench/growth.py's
``activate_stubs``), through the app's own handlers (WebTest), with the
processing, fold and cron tasks run by ``AppTasks`` when due on a simulated clock:

* writes per event: events are posted to ``/track`` in JSON batches, then
  processed and folded until no task is left, then the batches' records pruned
  as the cron job does once their retention has passed; every entity written or
  deleted counts (bench/datastore_writes.py). The same run times ``/track``,
  ``/process`` and ``/fold``.
* the hottest entity: a sustained rate of events a simulated second, the due
  tasks run each second; the entity written most often within any window.
* processors: N threads drain a filled queue as N processing tasks would, one
  more folds; counted events/s.
* ``/stats`` latency: ``python main.py`` serving a datastore that holds the
  counts of many items (bench/growth.py).

Every run checks that each item's clicks and views, and the totals, are exactly
what was posted, and raises ``CountsNotExactError`` otherwise. The figures for
``python main.py`` under load come from the end-to-end part (``local_server``).
"""

from __future__ import annotations

import cProfile
import multiprocessing
import random
import re
import tempfile
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench import growth
from bench.datastore_writes import DatastoreWrites, recording

ZIPF_EXPONENT = 1.1
CLICK_SHARE = 0.1
"""One event in ten is a click, the rest views."""
START = 1_767_225_600.0
"""The simulated clock's start: 2026-01-01T00:00Z, the start of an hour, so a run stays in one hour and day."""
WINDOW_SECONDS = 10
TIMED_PATHS = ("/track", "/process", "/fold")
ENTITY_KIND = re.compile(r"(?:^|/)([A-Za-z]\w*):")
"""The kinds along an entity path (``Kind:name/Kind:name``; the count store's names hold ``/`` but no ``:``)."""
STATS_FILL_CHUNK = 10_000
"""Items queued, drained and folded at a time while filling the datastore for ``/stats``."""
WARM_UP_EVENTS = 200
"""Events a measure posts, processes and folds on stubs of its own before it starts (``warm_up``)."""
POLL_SECONDS = 0.5
"""How often the parent checks that a measure's process is still alive while it waits."""
MAX_SIMULATED_SECONDS = 100_000
"""``AppTasks.run_until_idle`` gives up (and raises) after this long on the simulated clock."""


class CountsNotExactError(AssertionError):
    """The count store does not hold exactly the events posted."""


class MeasureFailedError(RuntimeError):
    """A measure's process raised (its traceback is in the message) or died."""


@dataclass(frozen=True)
class Workload:
    """``events`` events over ``items`` items, drawn Zipf(1.1) or uniformly, one in ten a click."""

    events: int
    items: int
    zipf: bool
    seed: int = 16

    @property
    def name(self) -> str:
        return f"{'Zipf(1.1)' if self.zipf else 'uniform'} over {self.items:,} items"

    def make_events(self) -> list[dict[str, str]]:
        rng = random.Random(self.seed)
        if self.zipf:
            weights = [1 / rank**ZIPF_EXPONENT for rank in range(1, self.items + 1)]
            picks = rng.choices(range(self.items), weights, k=self.events)
        else:
            picks = [rng.randrange(self.items) for _ in range(self.events)]
        clicks = round(self.events * CLICK_SHARE)
        types = ["click"] * clicks + ["view"] * (self.events - clicks)
        rng.shuffle(types)
        return [{"type": kind, "item": f"item-{pick}"} for kind, pick in zip(types, picks, strict=True)]


class SimulatedClock:
    """Time that moves only when ``advance`` says."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class AppTasks:
    """The app on the SDK stubs with its tasks run as App Engine would run them once
    due, on a simulated clock; the wall and CPU time spent in each path it calls."""

    TASK_QUEUES = ("process", "fold")
    """queue.yaml's queues, in the order their due tasks run: processing, then folds."""

    def __init__(self, app: Any, task_stub: Any, clock: Any) -> None:
        self.app, self.task_stub, self.clock = app, task_stub, clock
        self.seconds: Counter[str] = Counter()
        self.cpu_seconds: Counter[str] = Counter()
        """This process's CPU time (all its threads) in each path."""
        self.profiles: dict[str, cProfile.Profile] | None = None
        """A dict to fill with a profile of each path's calls (bench/profile.py); None: not profiled."""

    def _timed(self, path: str, call: Callable[[], Any]) -> Any:
        profile = None if self.profiles is None else self.profiles.setdefault(path, cProfile.Profile())
        started, started_cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        try:
            return call()
        finally:
            if profile is not None:
                profile.disable()
            self.seconds[path] += time.perf_counter() - started
            self.cpu_seconds[path] += time.process_time() - started_cpu

    def post(self, events: list[dict[str, str]], batch: int) -> None:
        """``events`` to ``/track``, ``batch`` to a JSON request."""
        for start in range(0, len(events), batch):
            body = {"events": events[start : start + batch]}
            self._timed("/track", lambda body=body: self.app.post_json("/track", body, status=202))

    def run_due_tasks(self) -> None:
        """Run every task due by now (2xx expected), processing first, then folds."""
        for queue_name in self.TASK_QUEUES:
            for task in self.task_stub.get_filtered_tasks(queue_names=[queue_name]):
                if task.eta_posix <= self.clock():
                    headers = {"X-AppEngine-QueueName": queue_name, "X-AppEngine-TaskName": task.name}
                    self._timed(task.url, lambda t=task, h=headers: self.app.post(t.url, t.payload or b"", headers=h))
                    self.task_stub.DeleteTask(queue_name, task.name)

    def run_until_idle(self) -> None:
        """A simulated second at a time, run the due tasks until none is queued."""
        deadline = self.clock() + MAX_SIMULATED_SECONDS
        while self.task_stub.get_filtered_tasks(queue_names=list(self.TASK_QUEUES)):
            if self.clock() > deadline:
                raise RuntimeError(f"tasks still queued after {MAX_SIMULATED_SECONDS} simulated seconds")
            self.clock.advance(1)
            self.run_due_tasks()

    def post_paced(self, events: list[dict[str, str]], per_second: int, batch: int) -> None:
        """Post ``per_second`` events a simulated second, running the due tasks each
        second, then run tasks until none is left."""
        for start in range(0, len(events), per_second):
            self.post(events[start : start + per_second], batch)
            self.clock.advance(1)
            self.run_due_tasks()
        self.run_until_idle()

    def prune(self, retention_seconds: float) -> None:
        """Once ``retention_seconds`` have passed, run the cron job a minute apart until it
        prunes nothing, then the tasks it asked for."""
        self.clock.advance(retention_seconds + 1)
        while True:
            answer = self._timed(
                "/cron/process", lambda: self.app.get("/cron/process", headers={"X-Appengine-Cron": "true"})
            )
            if not answer.json["pruned_batches"]:
                break
            self.clock.advance(60)
        self.run_until_idle()


@contextmanager
def stubs() -> Iterator[Any]:
    """The local server's stubs in this process, on an empty datastore, for the block: the testbed."""
    from google.appengine.ext import ndb

    with tempfile.TemporaryDirectory(prefix="clickqueue-bench-counting-") as directory:
        bed, _ = growth.activate_stubs(Path(directory), "local")
        try:
            ndb.get_context().clear_cache()  # this thread's context may hold another run's entities
            yield bed
        finally:
            bed.deactivate()


@contextmanager
def app_on_stubs() -> Iterator[tuple[AppTasks, Any]]:
    """The app (main.create_app) on fresh stubs and a simulated clock: its tasks, and its settings."""
    import webtest
    from google.appengine.ext import testbed

    import main
    from clicks.settings import Settings, default_queue

    with stubs() as bed:
        clock = SimulatedClock()
        settings = Settings(queue=default_queue(clock), clock=clock)
        app = webtest.TestApp(main.create_app(settings))
        yield AppTasks(app, bed.get_stub(testbed.TASKQUEUE_SERVICE_NAME), clock), settings


def expected_counts(events: list[dict[str, str]]) -> dict[str, tuple[int, int]]:
    """``{item: (clicks, views)}`` of ``events``."""
    counted = Counter((event["item"], event["type"]) for event in events)
    return {item: (counted[item, "click"], counted[item, "view"]) for item, _ in counted}


def check_exact(events: list[dict[str, str]]) -> int:
    """Raise ``CountsNotExactError`` unless the count store holds each item's clicks and
    views, and the totals, exactly as in ``events``; the events counted."""
    from clicks import counters

    expected = expected_counts(events)
    wrong = {}
    for item, counts in expected.items():
        stored = counters.item_counts(item)
        if (stored["click"], stored["view"]) != counts:
            wrong[item] = ((stored["click"], stored["view"]), counts)
    totals = counters.totals()
    counted = totals["click"] + totals["view"] + totals["bots"]
    if wrong or counted != len(events):
        sample = dict(list(wrong.items())[:5])
        raise CountsNotExactError(
            f"{counted} events counted of {len(events)}; {len(wrong)} items wrong, (stored, posted): {sample}"
        )
    return counted


def writes_summary(writes: DatastoreWrites, events: int) -> dict[str, Any]:
    """Entity writes (puts and deletes) per event, by kind, and the commits' sizes."""
    by_kind = Counter(ENTITY_KIND.findall(path)[-1] for _, path in writes.writes)
    return {
        "writes": len(writes.writes),
        "per_event": round(len(writes.writes) / events, 5),
        "by_kind": dict(by_kind.most_common()),
        "commits": len(writes.commit_sizes),
        "largest_commit": max(writes.commit_sizes, default=0),
    }


def per_second(events: int, seconds: float) -> float | None:
    return round(events / seconds, 1) if seconds else None


def warm_up() -> None:
    """A few events posted, processed and folded on stubs of their own, so that first
    calls (imports, the bot patterns, the index file) fall outside what is timed."""
    with app_on_stubs() as (tasks, _):
        tasks.post(Workload(WARM_UP_EVENTS, 10, zipf=True).make_events(), WARM_UP_EVENTS)
        tasks.run_until_idle()


def writes_per_event(workload: Workload, post_batch: int) -> dict[str, Any]:
    """Post every event of ``workload`` at once, process and fold them, prune the
    records: the entity writes and deletes that cost, and the time each path took."""
    events = workload.make_events()
    warm_up()
    with app_on_stubs() as (tasks, settings), recording(tasks.clock) as writes:
        tasks.post(events, post_batch)
        tasks.run_until_idle()
        counting = writes_summary(writes, len(events))
        writes.clear()
        tasks.prune(settings.record_retention_seconds)
        counted = check_exact(events)
        pruning = len(writes.writes)
    seconds = {path: round(tasks.seconds[path], 3) for path in TIMED_PATHS}
    counting_seconds = tasks.seconds["/process"] + tasks.seconds["/fold"]
    counting_cpu = tasks.cpu_seconds["/process"] + tasks.cpu_seconds["/fold"]
    return {
        "workload": workload.name,
        "items": workload.items,
        "zipf": workload.zipf,
        "events": len(events),
        "distinct_items": len(expected_counts(events)),
        "post_batch": post_batch,
        "counted": counted,
        "exact": True,
        **counting,
        "pruning_deletes": pruning,
        "per_event_with_pruning": round((counting["writes"] + pruning) / len(events), 5),
        "seconds": seconds,
        "cpu_seconds": {path: round(tasks.cpu_seconds[path], 3) for path in TIMED_PATHS},
        "per_second": {
            "track": per_second(len(events), tasks.seconds["/track"]),
            "process": per_second(len(events), tasks.seconds["/process"]),
            "process_and_fold": per_second(len(events), counting_seconds),
        },
        "process_to_track": round(tasks.seconds["/track"] / tasks.seconds["/process"], 3),
        "process_and_fold_to_track": round(tasks.seconds["/track"] / counting_seconds, 3),
        "process_and_fold_to_track_by_cpu": round(tasks.cpu_seconds["/track"] / counting_cpu, 3),
    }


def hottest_entity(workload: Workload, events_per_second: int, post_batch: int) -> dict[str, Any]:
    """``events_per_second`` of ``workload``'s events each simulated second, tasks run when
    due: the entity written most often within any ``WINDOW_SECONDS``."""
    events = workload.make_events()
    with app_on_stubs() as (tasks, _), recording(tasks.clock) as writes:
        tasks.post_paced(events, events_per_second, post_batch)
        counted = check_exact(events)
    entity, most = writes.most_in_window(WINDOW_SECONDS)
    return {
        "workload": workload.name,
        "events": len(events),
        "events_per_second": events_per_second,
        "seconds": -(-len(events) // events_per_second),
        "window_seconds": WINDOW_SECONDS,
        "entity": entity,
        "writes_in_window": most,
        "writes_per_second": round(most / WINDOW_SECONDS, 2),
        "counted": counted,
        "exact": True,
        **writes_summary(writes, len(events)),
    }


def queue_events(settings: Any, events: list[dict[str, str]]) -> None:
    """Write ``events``, dated now, to ``settings.queue`` as ``/track`` would, without the app.

    Without it on purpose: wrapping the app (``wrap_wsgi_app``) makes ``os.environ``
    request-local, and on Python 3.13 threads started afterwards do not inherit it (the
    SDK's thread hook patches a function 3.13's threads no longer start through), so
    their Datastore calls find no app id."""
    at = int(time.time())
    for start in range(0, len(events), settings.batch_size):
        settings.queue.write_multi([{**event, "at": at} for event in events[start : start + settings.batch_size]])


def on_processors(workload: Workload, processors: int) -> dict[str, Any]:
    """Fill the queue with ``workload``'s events, then ``processors`` threads drain it as
    processing tasks do, while one more folds once a slot (1 s), as the fold task does,
    until all is folded: how fast the processors recorded it, and how fast it was counted."""
    from clicks import counting
    from clicks.processing import drain
    from clicks.settings import Settings, default_queue

    events = workload.make_events()
    with stubs():  # a warm-up without the app, see ``queue_events``
        settings = Settings()
        queue_events(settings, Workload(WARM_UP_EVENTS, 10, zipf=True).make_events())
        drain(settings)
        while counting.fold(time.time()).more:
            pass
    with stubs():
        settings = Settings()
        queue_events(settings, events)
        processing_done = threading.Event()

        def process(_: int) -> int:
            own, processed = replace(settings, queue=default_queue()), 0
            while (report := drain(own)).processed or report.budget_spent:
                processed += report.processed
            return processed

        def fold() -> int:
            commits = 0
            while True:
                last_round = processing_done.is_set()
                report = counting.fold(time.time())
                commits += report.batches > 0 or report.split is not None
                if last_round and not report.more:
                    return commits
                time.sleep(settings.slot_seconds - time.time() % settings.slot_seconds)  # the next slot's fold

        started = time.perf_counter()
        with ThreadPoolExecutor(processors + 1) as pool:
            folding = pool.submit(fold)
            try:
                processed_by = list(pool.map(process, range(processors)))
            finally:
                processing_done.set()
                recorded_seconds = time.perf_counter() - started
            folds = folding.result()
        seconds = time.perf_counter() - started
        counted = check_exact(events)
    if sum(processed_by) != len(events):
        raise CountsNotExactError(f"the processors took {processed_by} events of {len(events)}")
    return {
        "processors": processors,
        "events": len(events),
        "recorded_seconds": round(recorded_seconds, 3),
        "recorded_per_second": per_second(counted, recorded_seconds),
        "seconds": round(seconds, 3),
        "per_second": per_second(counted, seconds),
        "processed_by": processed_by,
        "folds": folds,
        "counted": counted,
        "exact": True,
    }


def stats_latency(items: int, requests: int) -> dict[str, Any]:
    """``GET /stats`` on ``python main.py`` serving the counts of ``items`` items (one view
    each, queued, drained and folded in this process first): p50 and slowest."""
    from clicks.settings import Settings

    with tempfile.TemporaryDirectory(prefix="clickqueue-bench-stats-") as directory:
        bed, save = growth.activate_stubs(Path(directory), "local")
        try:
            settings = Settings(time_budget_seconds=3600)
            for first in range(0, items, STATS_FILL_CHUNK):
                growth.add_items(settings, first, min(STATS_FILL_CHUNK, items - first))
            save()
        finally:
            bed.deactivate()
        timed = growth.measure_stats(Path(directory), requests)
    if timed["counted"] != items:
        raise CountsNotExactError(f"/stats counts {timed['counted']} events of the {items} filled in")
    return {
        "items": items,
        "requests": requests,
        "p50_ms": round(timed["median_ms"], 2),
        "max_ms": round(timed["max_ms"], 2),
        "counted": timed["counted"],
        "exact": True,
    }


@dataclass(frozen=True)
class CountingRun:
    """The sizes of one run of the section."""

    events: int
    zipf_items: int
    uniform_items: int
    post_batch: int
    events_per_second: int
    sustained_seconds: int
    processors: list[int]
    stats_items: int
    stats_requests: int

    def steps(self) -> int:
        return 4 + len(self.processors)


def run_counting(run: CountingRun, on_step: Callable[[str], None]) -> dict[str, Any]:
    """Every measure of the section, one after the other, each in a fresh spawned process."""
    zipf = Workload(run.events, run.zipf_items, zipf=True)
    results: dict[str, Any] = {"writes_per_event": []}
    for workload in (zipf, Workload(run.events, run.uniform_items, zipf=False)):
        done = in_own_process(writes_per_event, workload, run.post_batch)
        results["writes_per_event"].append(done)
        on_step(
            f"counting, {done['workload']}: {done['per_event']:g} entity writes per event "
            f"({done['per_event_with_pruning']:g} with pruning), exact"
        )
    sustained = Workload(run.events_per_second * run.sustained_seconds, run.zipf_items, zipf=True)
    hot = results["hottest_entity"] = in_own_process(hottest_entity, sustained, run.events_per_second, run.post_batch)
    on_step(f"counting at {run.events_per_second:,}/s: {hot['entity']} written {hot['writes_per_second']:g}/s")
    results["processors"] = []
    for processors in run.processors:
        results["processors"].append(in_own_process(on_processors, zipf, processors))
        rate = results["processors"][-1]["per_second"]
        on_step(f"counting, processors (threads): {processors}, {rate:,.0f} events/s, exact")
    results["stats"] = in_own_process(stats_latency, run.stats_items, run.stats_requests)
    on_step(f"/stats with {run.stats_items:,} items counted: p50 {results['stats']['p50_ms']:g} ms")
    return results


def _answer(measure: Callable[..., dict[str, Any]], args: tuple, answer: Connection) -> None:
    """In the spawned process: send what ``measure(*args)`` returns, or the traceback it raised."""
    try:
        answer.send((True, measure(*args)))
    except BaseException:  # noqa: BLE001 (sent to the parent, which raises it)
        answer.send((False, traceback.format_exc()))


def in_own_process(measure: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """``measure(*args)`` in a spawned process, stopped by PID if this one stops waiting
    (an error, Ctrl-C, SIGTERM); its error is raised here as ``MeasureFailedError``."""
    context = multiprocessing.get_context("spawn")
    receiving, sending = context.Pipe(duplex=False)
    process = context.Process(target=_answer, args=(measure, args, sending), name=measure.__name__, daemon=True)
    process.start()
    sending.close()
    try:
        while not receiving.poll(POLL_SECONDS) and process.is_alive():
            pass
        try:
            succeeded, value = receiving.recv()
        except EOFError:  # it ended without sending
            process.join()
            raise MeasureFailedError(
                f"{measure.__name__} ended, exit code {process.exitcode}, without an answer"
            ) from None
    finally:
        receiving.close()
        if process.is_alive():
            process.terminate()
        process.join()
    if not succeeded:
        raise MeasureFailedError(f"{measure.__name__} failed:\n{value}")
    return value


def local_server(http: dict[str, Any], end_to_end: dict[str, Any], level: str = "saturating") -> dict[str, Any]:
    """``python main.py`` under the end-to-end part's saturating load: answered/s against
    ``/track`` alone (the HTTP part's app), and counted against answered once it settled."""
    loaded = next(run for run in end_to_end["levels"] if run["level"] == level)
    alone = http["track"]["per_second"]
    return {
        "level": level,
        "connections": loaded["connections"],
        "answered_per_second": loaded["answered_per_second"],
        "track_alone_per_second": alone,
        "answered_to_track_alone": round(loaded["answered_per_second"] / alone, 3) if alone else None,
        "answered": loaded["answered"],
        "counted": loaded["counted"],
        "complete": loaded["complete"],
        "counted_to_answered": round(loaded["counted"] / loaded["answered"], 3) if loaded["answered"] else None,
    }
