"""End to end on the Cloud SDK's dev_appserver.py: the app as app.yaml deploys it
(gunicorn, the bundled services, real push tasks) counts events exactly, and every
Datastore query it makes is served by an index in index.yaml.

The server is started by the dev_appserver command of docs/local-development.md,
run by bash as it is written there, with only free ports, a fresh storage folder and
a fresh virtualenv folder added. That command passes --require_indexes=yes, so a query
whose index is missing from index.yaml fails here instead of in production.
Skipped when the Cloud SDK is absent, except under CI=true where it must run.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import pytest
from tests.support.cloud_sdk import cloud_sdk, copy_upload
from tests.support.processes import REPO_ROOT, free_port, wait_until
from tests.support.e2e import EventPlan, HttpRequest, send, send_concurrently, send_raw, wait_for_counts, wait_until_serving

pytestmark = pytest.mark.dev_appserver

EVENT_COUNT = 300
FIRST_START_SECONDS = 300  # the first start pip-installs requirements.txt into a fresh virtualenv

ADMIN_EMAIL = "admin@example.com"
ADMIN = (("Cookie", f"dev_appserver_login={ADMIN_EMAIL}:True:1"),)
"""dev_appserver's sign-in cookie of an admin, as its login page sets it (email:admin:user id)."""

PRUNE_MARKERS = HttpRequest("GET", "/cron/process", headers=(("X-Appengine-Cron", "true"),))

QUERY_REQUESTS = [
    pytest.param(HttpRequest("GET", "/stats", headers=ADMIN), id="stats-top-items"),
    pytest.param(HttpRequest("GET", "/stats?bucket=hour", headers=ADMIN), id="stats-series-of-all-items"),
    pytest.param(HttpRequest("GET", "/stats?bucket=day&item=a", headers=ADMIN), id="stats-series-of-an-item"),
    pytest.param(PRUNE_MARKERS, id="cron-prunes-counted-batches-and-old-markers"),
]
"""Every request that makes the app run a Datastore query. The fold's query of the
batches not yet folded runs in every /fold task, which
test_dev_appserver_counts_events_exactly exercises."""


def documented_command() -> str:
    """The shell lines of the dev_appserver section of docs/local-development.md, exactly as written."""
    page = (REPO_ROOT / "docs" / "local-development.md").read_text()
    section = page.split("## Under the Cloud SDK: dev_appserver.py", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "the dev_appserver section of docs/local-development.md has no sh block"
    return block.group(1).rstrip("\n")


class DevAppserver:
    """The documented dev_appserver command, serving a copy of the app on free loopback ports."""

    def __init__(self, work_dir: Path) -> None:
        self.app_dir = work_dir / "app"
        self.log_path = work_dir / "dev_appserver.log"
        self.port = free_port()
        # What `gcloud app deploy` uploads, copied: the deployed files alone run here, and
        # dev_appserver neither watches nor writes anything in the checkout.
        copy_upload(REPO_ROOT, self.app_dir)
        (work_dir / "venv").mkdir()
        overrides = [
            f"--port={self.port}",
            f"--admin_port={free_port()}",
            f"--api_port={free_port()}",
            f"--storage_path={work_dir / 'storage'}",
            f"--python_virtualenv_path={work_dir / 'venv'}",
        ]
        command = documented_command()
        assert "dev_appserver.py app.yaml" in command and "--require_indexes=yes" in command, command
        # `python3` in the documented command is the interpreter running these tests.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
        environment = {**os.environ, "PATH": path}
        environment.pop("APPENGINE_USE_CLOUDTASK_PUSH_QUEUE", None)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                ["bash", "-c", f"{command} {' '.join(overrides)}"],
                cwd=self.app_dir,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.base_url = f"http://localhost:{self.port}"

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        """End the process group: dev_appserver and, for each instance, gunicorn and its workers.

        SIGTERM goes out again every few seconds: dev_appserver may restart an instance
        while it shuts down (it saw a file change), and gunicorn takes up to 30 s to end.
        """
        group = self.process.pid
        deadline = time.monotonic() + 60
        next_sigterm = time.monotonic()
        while not self._group_gone():
            if time.monotonic() > deadline:
                left = subprocess.run(
                    ["ps", "-o", "pid,etime,args", "-g", str(group)], check=False, capture_output=True, text=True
                )
                os.killpg(group, signal.SIGKILL)
                raise AssertionError(f"dev_appserver's processes outlived SIGTERM:\n{left.stdout}")
            if time.monotonic() >= next_sigterm:
                with suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGTERM)
                next_sigterm = time.monotonic() + 5
            time.sleep(0.2)

    def _group_gone(self) -> bool:
        self.process.poll()  # reap the leader: a zombie still counts as a member of its group
        try:
            os.killpg(self.process.pid, 0)
        except ProcessLookupError:
            return True
        return False


@pytest.fixture(scope="module")
def dev_appserver(tmp_path_factory) -> Iterator[DevAppserver]:
    cloud_sdk()
    server = DevAppserver(tmp_path_factory.mktemp("dev_appserver"))
    try:
        wait_until_serving(server.process, server.base_url, FIRST_START_SECONDS, headers=ADMIN)
        yield server
    finally:
        server.stop()
        print(server.log_tail())  # shown when a test of this module failed


def test_dev_appserver_counts_events_exactly(dev_appserver):
    plan = EventPlan.random(EVENT_COUNT, item_count=25, seed=11)

    statuses = send_concurrently(dev_appserver.base_url, plan.requests(), clients=4)
    assert set(statuses) <= {202, 204}, f"answers to the {EVENT_COUNT} events: {dict(statuses)}"
    stats = wait_for_counts(dev_appserver.base_url, plan, timeout_seconds=120, headers=ADMIN)

    print(f"sent {EVENT_COUNT} events: {dict(statuses)}; /stats totals {stats['totals']}, queue {stats['queue']}")
    assert (stats["queue"]["depth"], stats["queue"]["lost"]) == (0, 0)


@pytest.mark.parametrize("request_with_query", QUERY_REQUESTS)
def test_query_is_served_by_an_index_in_index_yaml(dev_appserver, request_with_query):
    response = send(dev_appserver.base_url, request_with_query)
    assert response.status == 200, dev_appserver.log_tail()


def test_query_without_its_index_is_refused(dev_appserver):
    """The control: with --require_indexes=yes, dev_appserver refuses a query whose index
    is not in index.yaml (it rereads the file when it changes)."""
    index_yaml = dev_appserver.app_dir / "index.yaml"
    indexes = index_yaml.read_text()
    try:
        index_yaml.write_text("indexes: []\n")
        response = send(dev_appserver.base_url, PRUNE_MARKERS)
    finally:
        index_yaml.write_text(indexes)
    assert response.status == 500
    wait_until(lambda: "NeedIndexError" in dev_appserver.log_path.read_text(), 30, message="NeedIndexError in the log")
    wait_until(
        lambda: send(dev_appserver.base_url, PRUNE_MARKERS).status == 200, 30, message="pruning with index.yaml restored"
    )


def gunicorn_addresses(server: DevAppserver) -> list[str]:
    """The addresses the app's gunicorn (dev_appserver's instance port) logged it listens on."""
    return re.findall(r"Listening at: (\S+)", server.log_path.read_text(errors="replace"))


def test_gunicorn_listens_on_loopback_only(dev_appserver):
    listening = gunicorn_addresses(dev_appserver)
    assert listening, "gunicorn logged no listening address"
    assert all(address.startswith("http://127.0.0.1:") for address in listening), listening


# -- what dev_appserver strips from outside requests, as docs/dashboard.md states ----------------

SPOOFED_ADMIN = {"X-Appengine-User-Email": ADMIN_EMAIL, "X-Appengine-User-Id": "1", "X-Appengine-User-Is-Admin": "1"}


def test_public_port_signs_users_in_itself_whatever_user_headers_are_sent(dev_appserver):
    response = send_raw(dev_appserver.base_url, "GET", "/stats", SPOOFED_ADMIN, None)

    assert response.status == 302
    assert urllib.parse.urlsplit(response.headers["Location"]).path == "/_ah/login"


@pytest.mark.parametrize(
    ("method", "path", "header"),
    [("POST", "/process", ("X-AppEngine-QueueName", "process")), ("GET", "/cron/process", ("X-Appengine-Cron", "true"))],
)
def test_public_port_passes_task_and_cron_headers_sent_from_outside(dev_appserver, method, path, header):
    name, value = header
    refused = send_raw(dev_appserver.base_url, method, path, {}, None)
    passed = send_raw(dev_appserver.base_url, method, path, {name: value}, None)

    assert (refused.status, passed.status) == (403, 200)


def test_instance_port_takes_user_headers_as_sent(dev_appserver):
    instance = gunicorn_addresses(dev_appserver)[-1]

    response = send_raw(instance, "GET", "/stats", {**SPOOFED_ADMIN, "X-Appengine-Api-Ticket": "any"}, None)

    assert response.status == 200
    assert "queue" in response.json()


# -- admin pages: app.yaml's login: admin, and dev_appserver's sign-in page -----------------------


@pytest.mark.parametrize("path", ["/dashboard", "/stats", "/links?item=a&to=https://example.com/"])
def test_admin_page_without_sign_in_redirects_to_the_sign_in_page(dev_appserver, path):
    response = send_raw(dev_appserver.base_url, "GET", path, {}, None)

    assert response.status == 302
    location = urllib.parse.urlsplit(response.headers["Location"])
    assert location.path == "/_ah/login"
    assert urllib.parse.parse_qs(location.query)["continue"] == [f"{dev_appserver.base_url}{path}"]


def test_sign_in_page_signs_an_admin_in_and_the_dashboard_renders(dev_appserver):
    base_url = dev_appserver.base_url
    continue_url = f"{base_url}/dashboard"
    form = send_raw(base_url, "GET", "/_ah/login?" + urllib.parse.urlencode({"continue": continue_url}), {}, None)
    sign_in = "/_ah/login?" + urllib.parse.urlencode(
        {"email": ADMIN_EMAIL, "admin": "True", "action": "Login", "continue": continue_url}
    )

    signed_in = send_raw(base_url, "GET", sign_in, {}, None)
    cookie = signed_in.headers["Set-Cookie"].split(";", 1)[0]
    dashboard = send_raw(base_url, "GET", "/dashboard", {"Cookie": cookie}, None)

    assert (form.status, b'name="email"' in form.body) == (200, True)
    assert (signed_in.status, signed_in.headers["Location"]) == (302, continue_url)
    assert dashboard.status == 200
    assert dashboard.headers["Content-Type"] == "text/html; charset=utf-8"
    assert f"Signed in as {ADMIN_EMAIL}".encode() in dashboard.body


def test_signed_in_user_who_is_not_an_admin_is_refused(dev_appserver):
    cookie = {"Cookie": "dev_appserver_login=reader@example.com:False:2"}

    response = send_raw(dev_appserver.base_url, "GET", "/dashboard", cookie, None)

    assert response.status == 401
    assert b"reader@example.com is not authorized" in response.body


@pytest.mark.parametrize(
    ("path", "status"),
    [("/t.js", 200), ("/p.gif?type=view&item=public", 200), ("/track?type=view&item=public", 204)],
)
def test_tracking_paths_need_no_sign_in(dev_appserver, path, status):
    assert send_raw(dev_appserver.base_url, "GET", path, {}, None).status == status
