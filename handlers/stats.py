"""``/stats``: counts from Datastore and the queue's own counters."""

from __future__ import annotations

from handlers import counters
from handlers.base import JsonHandler
from handlers.events import parse_item, single_param


class StatsHandler(JsonHandler):
    """Totals, the top items and queue stats; or, with ``?item=``, one item's counts."""

    def get(self) -> None:
        requested_item = single_param(self.query_params(), "item")
        if requested_item is not None:
            item = parse_item(requested_item)
            self.write_json(200, {"item": item, **counters.item_counts(item)})
            return
        self.write_json(
            200,
            {
                "totals": counters.totals(),
                "items": counters.top_items(),
                "queue": self.settings.queue.stats().as_dict(),
            },
        )
