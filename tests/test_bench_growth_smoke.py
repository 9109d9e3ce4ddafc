"""``python -m bench.growth`` at tiny sizes prints JSON of the documented shape.

Only the shape is checked: benchmark timings are never asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.benchmark


def test_tiny_growth_run_reports_drain_rates_and_stats_latency():
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.growth",
            "--checkpoints",
            "0,100",
            "--probe-events",
            "20",
            "--repeats",
            "2",
            "--stats-requests",
            "2",
            "--json",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )

    result = json.loads(done.stdout)
    assert [rate["checkpoint"] for rate in result["drain"]] == [0, 100]
    assert all(rate["events"] == 20 and rate["per_cpu_second"] > 0 for rate in result["drain"])
    assert result["stats"]["items_listed"] == 100
