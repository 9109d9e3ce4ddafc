"""The test run ends: no thread left behind keeps the interpreter from exiting."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support.processes import REPO_ROOT

pytestmark = pytest.mark.processes

EXIT_DEADLINE_SECONDS = 300
"""How long the inner run may take, its tests and its exit (they take seconds)."""


def test_queue_tests_then_app_tests_exit_once_they_pass():
    """Backend tests start the SDK's RPC thread pool; the app's first ``wrap_wsgi_app``
    then reloads ``threading``. The run must still exit (Python 3.13 hung here)."""
    files = ["tests/test_queue.py", "tests/test_app_track.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files]
    try:
        done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=EXIT_DEADLINE_SECONDS)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"")[-2000:]
        pytest.fail(f"the run did not exit within {EXIT_DEADLINE_SECONDS} s; its output ended: {output!r}")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert " passed" in done.stdout.splitlines()[-1]
