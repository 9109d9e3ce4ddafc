"""``python -m bench.user_agents`` and ``python -m bench.local_saves``, tiny runs: they print
their figures in the documented shape. Only the shape is checked: benchmark timings are never
asserted."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from tests.support.processes import REPO_ROOT, skip_or_fail_in_ci


def run_module(*arguments: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", *arguments], cwd=REPO_ROOT, capture_output=True, text=True, timeout=240, check=True
    )
    return done.stdout.splitlines()


def test_a_tiny_user_agents_run_reports_each_kind_and_the_ratios():
    for tool in ("memcached", "wrk"):
        if shutil.which(tool) is None:
            skip_or_fail_in_ci(f"{tool} is not installed (the benchmark starts its own)")

    lines = run_module("bench.user_agents", "--rounds", "1", "--seconds", "1")

    assert lines[0].startswith("round 1: ordinary ")
    assert re.fullmatch(
        r"/track User-Agents, req/s \(gunicorn CPU per request\): .* new ones / a browser's [\d.]+x \([\d.]+x\), "
        r"/ repeated [\d.]+x \([\d.]+x\) \(medians of the rounds\)",
        lines[-1],
    )


def test_a_tiny_local_saves_run_reports_each_save():
    lines = run_module("bench.local_saves", "--events", "5000", "--saves", "1")

    assert lines[0] == "sent 5,000 events in " + lines[0].split(" in ")[1]
    assert all(re.fullmatch(r"save: [\d.]+ s, [\d,]+ events not yet counted", line) for line in lines[1:-1])
    assert len(lines) >= 4  # the start's save and the stop's, at least
    assert lines[-1].startswith("longest save: ")
