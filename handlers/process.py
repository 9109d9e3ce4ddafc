"""``/process`` (task queue) and ``/cron/process`` (cron): turn queued events into counts."""

from __future__ import annotations

from handlers.base import JsonHandler
from handlers.processing import drain, schedule_continuation, schedule_processing


class ProcessTaskHandler(JsonHandler):
    """Drain the queue into the counters; 503 (so the task is retried) if a batch failed."""

    def post(self) -> None:
        self.require_header("X-AppEngine-QueueName")
        report = drain(self.settings)
        if report.budget_spent:
            schedule_continuation(self.settings)
        remaining = self.settings.queue.stats().depth
        # Nothing is given back on success; a failed batch answers 503 with its count.
        self.write_json(200, {"processed": report.processed, "requeued": 0, "remaining": remaining})


class ProcessCronHandler(JsonHandler):
    """The safety net: schedule processing even when no event arrives to do it."""

    def get(self) -> None:
        self.require_header("X-Appengine-Cron", "true")
        self.write_json(200, {"scheduled": schedule_processing(self.settings)})
