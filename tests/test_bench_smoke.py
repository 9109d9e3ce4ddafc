"""``python -m bench --quick --json`` runs every part and prints JSON of the documented shape.

Only the shape is checked: benchmark timings are never asserted.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from conftest import REPO_ROOT, skip_or_fail_in_ci

THROUGHPUT_CASES = {
    "write",
    "write_multi",
    "read_multi",
    "lease_ack",
    "queue_cycle",
    "raw_memcached",
    "redis_list",
    "appengine_stub_cycle",
}


def test_quick_run_reports_every_part(tmp_path):
    for tool in ("memcached", "redis-server", "wrk"):
        if shutil.which(tool) is None:
            skip_or_fail_in_ci(f"{tool} is not installed (the benchmark starts its own)")
    plot = tmp_path / "throughput.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "--quick",
            "--json",
            "--batches",
            "1,10",
            "--message-sizes",
            "100",
            "--results",
            str(tmp_path / "results.json"),
            "--plot",
            str(plot),
        ],
        cwd=REPO_ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)

    assert {"command", "machine", "throughput", "cache_calls", "multiprocess", "http", "targets"} <= set(document)
    assert document["machine"]["cores"] >= 1
    rows = document["throughput"]
    assert {row["case"] for row in rows} == THROUGHPUT_CASES
    assert {(row["batch"], row["message_bytes"]) for row in rows} == {(1, 100), (10, 100)}
    for row in rows:
        assert row["messages"] > 0 and row["per_second"] > 0
        assert row["to_raw_memcached"] > 0
    assert [row["batch"] for row in rows if row["case"] == "write"] == [1]

    calls = document["cache_calls"]
    for name in (
        "write",
        "write_multi_100",
        "read_multi_100",
        "read_multi_empty",
        "lease_ack_100",
        "cycle_100",
        "incr_per_message_batch_1",
        "incr_per_message_batch_100",
    ):
        assert calls[name] > 0, name
    assert sum(calls["cycle_100_by_method"].values()) == calls["cycle_100"]

    assert [run["shards"] for run in document["multiprocess"]] == [1, 2]
    for run in document["multiprocess"]:
        assert run["messages_read"] == run["messages_written"] > 0
        assert len(run["incr_per_counter_key"]) == run["shards"]

    http = document["http"]
    for app in ("noop", "noop_wrapped", "track"):
        assert http[app]["requests"] > 0 and http[app]["non_2xx"] == 0
    assert http["track_to_noop"] > 0 and http["track_to_noop_wrapped"] > 0
    assert http["track_messages_written"] > 0

    assert {target["name"] for target in document["targets"]} >= {
        "cache calls per write",
        "cache calls per read_multi(100)",
        "/track req/s / no-op req/s",
    }
    assert all(isinstance(target["met"], bool) for target in document["targets"])
    assert plot.stat().st_size > 0
