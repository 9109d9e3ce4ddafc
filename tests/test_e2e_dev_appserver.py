"""End to end on the Cloud SDK's dev_appserver.py: the app as app.yaml deploys it
(gunicorn, the bundled services, real push tasks) counts events exactly.

Skipped when the Cloud SDK is absent, except under CI=true where it must run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from conftest import REPO_ROOT, free_port, skip_or_fail_in_ci, stop_process, wait_until
from e2e_support import EventPlan, send_concurrently, wait_for_counts, wait_until_serving

# The app runs from a copy without these, so dev_appserver neither watches nor
# writes (__pycache__, index.yaml) anything in the checkout.
NOT_DEPLOYED = shutil.ignore_patterns(
    ".git", ".ci", "tests", "bench", ".local-data", "__pycache__", ".pytest_cache", ".hypothesis", ".venv"
)
EVENT_COUNT = 300
FIRST_START_SECONDS = 300  # the first start pip-installs requirements.txt into a fresh virtualenv


def cloud_sdk_python() -> tuple[Path, Path]:
    """dev_appserver.py and the Python the Cloud SDK bundles to run it."""
    dev_appserver, gcloud = shutil.which("dev_appserver.py"), shutil.which("gcloud")
    if dev_appserver is None or gcloud is None:
        skip_or_fail_in_ci("the Cloud SDK's dev_appserver.py is not installed (component app-engine-python)")
    sdk_root = subprocess.run(
        [gcloud, "info", "--format=value(installation.sdk_root)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    python = Path(sdk_root, "platform", "bundledpythonunix", "bin", "python3")
    if not python.exists():
        skip_or_fail_in_ci(f"the Cloud SDK at {sdk_root} has no bundled Python to run dev_appserver.py")
    return Path(dev_appserver), python


def copy_app(destination: Path) -> Path:
    """Copy the deployable app, with gunicorn bound to loopback instead of every interface."""
    shutil.copytree(REPO_ROOT, destination, ignore=NOT_DEPLOYED)
    app_yaml = destination / "app.yaml"
    text = app_yaml.read_text()
    assert "-b :$PORT" in text, "app.yaml's entrypoint no longer binds -b :$PORT"
    app_yaml.write_text(text.replace("-b :$PORT", "-b 127.0.0.1:$PORT"))
    return app_yaml


def process_group_gone(group_id: int) -> bool:
    try:
        os.killpg(group_id, 0)
    except ProcessLookupError:
        return True
    return False


@contextmanager
def dev_appserver(tmp_path: Path, log_path: Path) -> Iterator[str]:
    """Run dev_appserver.py on free loopback ports in its own process group, until stopped."""
    script, sdk_python = cloud_sdk_python()
    app_yaml = copy_app(tmp_path / "app")
    port, admin_port, api_port = free_port(), free_port(), free_port()
    (tmp_path / "venv").mkdir()
    command = [
        str(sdk_python),
        str(script),
        str(app_yaml),
        "--host=127.0.0.1",
        f"--port={port}",
        "--admin_host=127.0.0.1",
        f"--admin_port={admin_port}",
        "--api_host=127.0.0.1",
        f"--api_port={api_port}",
        f"--runtime_python_path={sys.executable}",
        f"--python_virtualenv_path={tmp_path / 'venv'}",
        f"--storage_path={tmp_path / 'storage'}",
        "--support_datastore_emulator=False",
        "--automatic_restart=no",
        "--max_module_instances=2",  # each instance is gunicorn with 2 workers
        "--skip_sdk_update_check",
    ]
    env = {**os.environ, "CLOUDSDK_PYTHON": str(sdk_python), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", None)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(process, base_url, FIRST_START_SECONDS)
        yield base_url
    finally:
        stop_process(process, timeout_seconds=30)
        try:  # gunicorn and its workers are in the group too
            wait_until(lambda: process_group_gone(process.pid), 30, message="dev_appserver's children to exit")
        except AssertionError:
            os.killpg(process.pid, signal.SIGKILL)
            raise


def test_dev_appserver_counts_events_exactly(tmp_path, server_log):
    plan = EventPlan.random(EVENT_COUNT, item_count=25, seed=11)

    with dev_appserver(tmp_path, server_log) as base_url:
        statuses = send_concurrently(base_url, plan.requests(), clients=4)
        stats = wait_for_counts(base_url, plan, timeout_seconds=120)

    print(f"sent {EVENT_COUNT} events: {dict(statuses)}; /stats totals {stats['totals']}, queue {stats['queue']}")
    assert set(statuses) <= {202, 204}
    assert (stats["queue"]["depth"], stats["queue"]["lost"]) == (0, 0)
