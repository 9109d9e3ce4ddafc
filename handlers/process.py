"""``/process`` (task queue) and ``/cron/process`` (cron): turn queued events into counts."""

from __future__ import annotations

from handlers import counters
from handlers.base import JsonHandler
from handlers.processing import drain, schedule_continuation, schedule_processing


class ProcessTaskHandler(JsonHandler):
    """Drain the queue into the counters; 503 (so the task is retried) if a batch failed.

    ``remaining`` counts the events not yet counted: queued, or in leases not acked.
    """

    def post(self) -> None:
        self.require_header("X-AppEngine-QueueName")
        report = drain(self.settings)
        if report.budget_spent:
            schedule_continuation(self.settings)
        stats = self.settings.queue.stats()
        remaining = stats.depth + stats.leased
        # Nothing is given back on success; a failed batch answers 503 with its count.
        self.write_json(200, {"processed": report.processed, "requeued": 0, "remaining": remaining})


class ProcessCronHandler(JsonHandler):
    """The safety net: schedule processing even when no event arrives to do it;
    and prune the batch markers no batch can need any more, a bounded number per run."""

    def get(self) -> None:
        self.require_header("X-Appengine-Cron", "true")
        scheduled = schedule_processing(self.settings)
        cutoff = self.settings.clock() - self.settings.marker_retention_seconds
        pruned = counters.prune_markers(cutoff, self.settings.markers_pruned_per_run)
        self.write_json(200, {"scheduled": scheduled, "pruned_markers": pruned})
