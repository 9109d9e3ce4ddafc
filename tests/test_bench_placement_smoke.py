"""``python -m bench.placement`` at a tiny duration prints one row per placement.

Only the shape is checked: benchmark timings are never asserted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from tests.support.processes import REPO_ROOT, skip_or_fail_in_ci

pytestmark = pytest.mark.benchmark


def test_a_tiny_placement_run_reports_the_cycle_and_raw_memcached_in_each_placement():
    if shutil.which("memcached") is None:
        skip_or_fail_in_ci("memcached is not installed (the benchmark starts its own)")
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("placements across cores need 2 cores")
    done = subprocess.run(
        [sys.executable, "-m", "bench.placement", "--seconds", "0.2"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    rows = done.stdout.splitlines()[1:]
    assert [row.split("  ")[0].strip() for row in rows] == ["scheduler", "two cores", "one core"]
    assert all(row.rstrip().endswith("x") for row in rows)
