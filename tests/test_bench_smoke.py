"""``python -m bench --quick --json`` runs every part and prints JSON of the documented shape.

Only the shape is checked: benchmark timings are never asserted, nor is any
target met (BENCHMARKS.md reports them from real runs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from tests.support.processes import REPO_ROOT, skip_or_fail_in_ci

pytestmark = pytest.mark.benchmark

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

    assert {
        "command",
        "machine",
        "throughput",
        "cache_calls",
        "multiprocess",
        "http",
        "storage",
        "end_to_end",
        "counting",
        "targets",
    } <= set(document)
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
    assert set(calls["round_trips"]) == {"write", "write_multi_100", "read_multi_100", "read_multi_empty", "lease_ack_100", "cycle_100"}
    assert calls["round_trips"]["cycle_100"] == calls["cycle_100"]  # one memcached: one round trip per call

    assert [run["shards"] for run in document["multiprocess"]] == [1, 2]
    for run in document["multiprocess"]:
        assert run["messages_read"] == run["messages_written"] > 0
        assert len(run["incr_per_counter_key"]) == run["shards"]

    http = document["http"]
    for app in ("noop", "noop_wrapped", "track"):
        assert http[app]["requests"] > 0 and http[app]["non_2xx"] == 0
        assert 0 < http["latency_ms"][app]["p50"] <= http["latency_ms"][app]["p99"]
    assert http["track_to_noop"] > 0 and http["track_to_noop_wrapped"] > 0
    assert isinstance(http["track_p50_over_noop_wrapped_ms"], float)
    assert http["track_messages_written"] > 0
    track_calls = http["track_cache_calls"]
    assert track_calls["events"] > 0 and track_calls["shared_writes"] > 0
    assert track_calls["memcached_commands"]["total"] == sum(
        count for name, count in track_calls["memcached_commands"].items() if name != "total"
    )
    assert track_calls["commands_per_event"] > 0 and track_calls["commands_per_event_overall"] > 0
    assert len(track_calls["per_round"]) == document["parameters"]["repeats"]
    assert track_calls["events_per_shared_write"] >= 1
    user_agents = http["track_user_agents"]
    kinds = {"ordinary", "hostile", "repeated"}
    assert all(user_agents[kind] > 0 and user_agents["cpu_ms_per_request"][kind] > 0 for kind in kinds)
    assert user_agents["non_2xx"] == dict.fromkeys(kinds, 0)
    for ratio in ("hostile_to_ordinary", "cpu_hostile_to_ordinary", "hostile_to_repeated", "cpu_hostile_to_repeated"):
        assert user_agents[ratio] > 0, ratio

    storage = document["storage"]
    assert storage["messages"] > 0 and storage["target_measure"] in storage["queue_to_raw"]
    for way in ("queue", "raw"):
        assert storage[way]["items"] > 0
        assert storage[way]["bytes_per_message"] > storage["message_bytes"]
        assert storage[way]["chunk_bytes_per_message"] >= storage[way]["bytes_per_message"]
    assert storage["raw"]["messages_per_item"] == 1

    end_to_end = document["end_to_end"]
    assert isinstance(end_to_end["warm_up_counted"], bool)
    assert [level["level"] for level in end_to_end["levels"]] == ["paced", "saturating"]
    for level in end_to_end["levels"]:
        assert level["answered"] > 0 and level["counted"] >= 0 and isinstance(level["complete"], bool)
        assert level["markers"]["answered"] > 0 and level["markers"]["seen"] <= level["markers"]["answered"]
        assert set(level["lag_ms"]) == {"p50", "p99", "max"} and level["load"]["latency_p50_ms"] > 0
        assert level["server_cpu_per_second"]["during_load"] > 0

    server = document["counting"]["local_server"]
    saturating = end_to_end["levels"][1]
    assert (server["answered"], server["counted"]) == (saturating["answered"], saturating["counted"])
    assert server["track_alone_per_second"] == http["track"]["per_second"]

    targets = {target["name"]: target for target in document["targets"]}
    assert {
        "queue cycle / raw memcached, batch 10, 100 B",
        "/track p50 - no-op (wrapped) p50, ms",
        "/track req/s, new 8000-character User-Agents / a browser's",
        "cache calls per write",
        "cache calls per read_multi(100)",
        "round trips per write_multi+read_multi of 100",
        "round trips per lease(100)+ack",
    } <= set(targets)
    assert any(name.startswith("cache calls per /track event") for name in targets)
    assert any(name.startswith("memcache bytes per stored 100 B message") for name in targets)
    assert targets["queue cycle / raw memcached, batch 100, 100 B"]["met"] is None, "batch 100 was not run"
    assert all(target["met"] in (True, False, None) for target in targets.values())
    assert all((target["met"] is None) == (target["value"] is None) for target in targets.values())
    assert plot.stat().st_size > 0
