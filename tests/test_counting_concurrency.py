"""Counting with several processors at once, on the SDK's stubs: processing threads
drain the queue while writer threads write to it and a fold thread folds, and every
event is counted exactly once, by item."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter

from tests.support.threads import InThread, run_on_threads
from clicks import counters, counting
from clicks.processing import drain
from clicks.settings import default_queue

WRITERS = 2
PROCESSORS = 4
EVENTS_PER_WRITER = 6_000
WRITE_CHUNK = 100
ITEMS = 97


def writer_events(writer: int) -> list[dict[str, str]]:
    return [
        {"type": ("click", "view", "view")[n % 3], "item": f"item-{(writer * 31 + n) % ITEMS}"}
        for n in range(EVENTS_PER_WRITER)
    ]


def test_processors_on_threads_count_every_event_exactly_while_writers_write(app_settings):
    settings = dataclasses.replace(app_settings, batch_size=250)
    writers_done, processors_done = threading.Event(), threading.Event()
    written = Counter()
    processed_by = Counter()

    def write(writer: int) -> None:
        queue = default_queue(settings.clock)
        events = writer_events(writer)
        for start in range(0, len(events), WRITE_CHUNK):
            queue.write_multi(events[start : start + WRITE_CHUNK])

    def process(processor: int) -> None:
        own = dataclasses.replace(settings, queue=default_queue(settings.clock))
        while True:
            last_round = writers_done.is_set()
            processed = drain(own).processed
            processed_by[processor] += processed
            if processed == 0 and last_round:
                return

    def fold(_: int) -> None:
        while True:
            last_round = processors_done.is_set()
            if not counting.fold(settings.clock()).more and last_round:
                return

    processing = InThread(lambda: (run_on_threads(process, PROCESSORS), processors_done.set()))
    processing.start()
    folding = InThread(lambda: fold(0))
    folding.start()
    run_on_threads(write, WRITERS)
    writers_done.set()
    processing.join(timeout=300)  # well past the threads' own deadline: thousands of events under CI load
    folding.join(timeout=300)
    assert (processing.outcome(), folding.outcome()) == ((None, None), None)

    for writer in range(WRITERS):
        written.update((event["type"], event["item"]) for event in writer_events(writer))
    stored = {
        item: (counters.item_counts(item)["click"], counters.item_counts(item)["view"])
        for item in {item for _, item in written}
    }
    assert stored == {item: (written["click", item], written["view", item]) for _, item in written}
    assert counters.totals()["click"] + counters.totals()["view"] == WRITERS * EVENTS_PER_WRITER
    assert counting.unfolded_batches(1) == []
    assert sum(processed_by.values()) == WRITERS * EVENTS_PER_WRITER
    assert len(+processed_by) > 1, f"one processor did all the work: {processed_by}"
    assert settings.queue.stats().depth == 0
