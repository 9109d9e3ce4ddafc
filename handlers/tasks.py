"""``/process`` and ``/fold`` (task queue), ``/cron/process`` (cron): turn queued events into counts."""

from __future__ import annotations

from clicks import counting, legacy_counters
from clicks.processing import (
    DrainReport,
    ProcessorLanes,
    drain,
    schedule_continuation,
    schedule_fold,
    schedule_processing,
)
from handlers.base import JsonHandler


class ProcessTaskHandler(JsonHandler):
    """Drain the queue into counted batches, in one of the free lanes; 503 (so the task
    is retried) if a batch failed. With every lane held, it processes nothing (``lane``: None).

    ``remaining`` counts the events not yet recorded: queued, or in leases not acked.
    """

    def post(self) -> None:
        self.require_header("X-AppEngine-QueueName")
        lanes = ProcessorLanes(self.settings)
        lane = lanes.hold()
        report = DrainReport(0, budget_spent=False)
        if lane is not None:
            try:
                if self.settings.queue.stats().depth > self.settings.batch_size:
                    lanes.fan_out()
                report = drain(self.settings)
            finally:
                lanes.free(lane)
        if report.budget_spent:
            schedule_continuation(self.settings)
        elif report.caught_up:
            schedule_processing(self.settings)  # events may still wait: they get this slot's task
        stats = self.settings.queue.stats()
        # Nothing is given back on success; a failed batch answers 503 with its count.
        self.write_json(
            200, {"processed": report.processed, "requeued": 0, "remaining": stats.depth + stats.leased, "lane": lane}
        )


class FoldTaskHandler(JsonHandler):
    """Fold recorded batches into the count store: one commit (and, until the old
    layout is copied, one page of it first); asks for the next slot's fold if batches remain."""

    def post(self) -> None:
        self.require_header("X-AppEngine-QueueName")
        now = self.settings.clock()
        copied = counting.migrate_legacy_page(now)
        report = counting.fold(now)
        if report.more or copied:
            schedule_fold(self.settings)
        self.write_json(200, {"folded": report.batches, "split": report.split, "more": report.more or copied})


class ProcessCronHandler(JsonHandler):
    """The safety net: schedule processing and a fold even when no event arrives to do it;
    delete the counted batches (and the old layout's markers) no batch can need any more,
    a bounded number per run."""

    def get(self) -> None:
        self.require_header("X-Appengine-Cron", "true")
        scheduled = schedule_processing(self.settings)
        schedule_fold(self.settings)
        cutoff = self.settings.clock() - self.settings.record_retention_seconds
        limit = self.settings.batches_pruned_per_run
        pruned = counting.prune_batches(cutoff, limit)
        if pruned < limit:
            pruned += legacy_counters.prune_markers(cutoff, limit - pruned)
        self.write_json(200, {"scheduled": scheduled, "pruned_batches": pruned})
