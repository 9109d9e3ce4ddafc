"""End to end: ``python main.py`` on real HTTP with concurrent clients counts
exactly, stops cleanly on SIGTERM, and keeps its counts across a restart."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import REPO_ROOT, free_port, stop_process
from e2e_support import EventPlan, get_json, send_concurrently, wait_for_counts, wait_until_serving

CLIENTS = 16


@contextmanager
def local_server(data_dir: Path, log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``python main.py`` on a free port in its own process group; SIGTERM it at the end."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "CLICKQUEUE_DATA_DIR": str(data_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "main.py"],
            cwd=REPO_ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, base_url, timeout_seconds=60)
        yield base_url, process
    finally:
        stop_process(process)


def test_local_server_counts_concurrent_events_exactly(tmp_path, server_log):
    plan = EventPlan.random(1200, item_count=60, seed=3)
    requests = plan.requests()

    with local_server(tmp_path / "data", server_log) as (base_url, _):
        statuses = send_concurrently(base_url, requests, CLIENTS)
        stats = wait_for_counts(base_url, plan, timeout_seconds=120)

    print(f"sent {len(plan.events)} events in {len(requests)} requests: {dict(statuses)}")
    print(f"/stats: totals {stats['totals']}, queue {stats['queue']}")
    assert statuses == Counter(202 if r.content_type == "application/json" else 204 for r in requests)
    assert (stats["queue"]["depth"], stats["queue"]["lost"]) == (0, 0)


def test_local_server_keeps_counts_across_a_sigterm_restart(tmp_path, server_log):
    plan = EventPlan.random(100, item_count=10, seed=5)
    data_dir = tmp_path / "data"
    with local_server(data_dir, server_log) as (base_url, first):
        send_concurrently(base_url, plan.requests(), CLIENTS)
        wait_for_counts(base_url, plan, timeout_seconds=60)

    with local_server(data_dir, server_log) as (base_url, second):
        restarted = get_json(base_url, "/stats")

    assert (first.returncode, second.returncode) == (0, 0), "a server did not stop cleanly on SIGTERM"
    assert (restarted["totals"], restarted["items"]) == (plan.expected_totals(), plan.expected_items())
