"""examples/ run as a user runs them, and print what they say they print.

The library tour runs as a script, on the checkout's ``clickqueue``, against a real
memcached and against the App Engine SDK's memcache stub; .ci/check-wheel runs it
again from the installed wheel.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.support.processes import REPO_ROOT, MemcachedServer

pytestmark = pytest.mark.processes

LIBRARY_TOUR = REPO_ROOT / "examples" / "library_tour.py"
TOUR_OUTPUT = (
    'lease attempt 1: [{"type": "click", "item": "a"}, {"type": "view", "item": "a"}]\n'
    'stats: {"depth": 0, "written": 2, "read": 2, "requeued": 0, "skipped": 0, "gapped": 0, "lost": 0,'
    ' "retried": 0, "collided": 0, "leased": 0, "resets": 0}\n'
)


def run_library_tour(tmp_path, *arguments: str, environment: dict[str, str] | None = None) -> str:
    """The tour's standard output; it runs outside the checkout, importing the checkout's library."""
    done = subprocess.run(
        [sys.executable, str(LIBRARY_TOUR), *arguments],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT), **(environment or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_library_tour_on_memcached_leases_both_events_and_counts_them(
    tmp_path, memcached_server: MemcachedServer, how: str
):
    address = f"{memcached_server.host}:{memcached_server.port}"
    if how == "argument":
        output = run_library_tour(tmp_path, "--memcached", address, environment={"MEMCACHED": "127.0.0.1:1"})
    else:
        output = run_library_tour(tmp_path, environment={"MEMCACHED": address})

    assert output == TOUR_OUTPUT


def test_library_tour_runs_again_on_the_same_memcached_with_counts_from_zero(tmp_path, memcached_server):
    address = f"{memcached_server.host}:{memcached_server.port}"
    run_library_tour(tmp_path, "--memcached", address)

    assert run_library_tour(tmp_path, "--memcached", address) == TOUR_OUTPUT


def test_library_tour_on_the_app_engine_memcache_stub_prints_the_same(tmp_path):
    assert run_library_tour(tmp_path, "--appengine-stub") == TOUR_OUTPUT
