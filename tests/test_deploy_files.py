"""The deploy files, read by App Engine's own parsers: a bad edit fails here, not at deploy.

app.yaml, queue.yaml, cron.yaml and index.yaml go through the validators that
appengine-python-standard ships (gcloud and dev_appserver carry copies of the
same modules), and the settings the code relies on are checked against the
code's own values. Those validators skip the cron schedule's grammar (groc)
when it is not importable, as in appengine-python-standard; the Cloud SDK's
dev_appserver has it, so the schedule is parsed there, with the SDK's Python.
What `gcloud app deploy` uploads (.gcloudignore) is listed by gcloud itself.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import timedelta

import pytest
from tests.support.cloud_sdk import cloud_sdk, copy_upload, files_for_upload
from tests.support.processes import REPO_ROOT
from google.appengine.api import appinfo, croninfo, queueinfo, yaml_errors
from google.appengine.datastore import datastore_index


def read(name: str) -> str:
    return (REPO_ROOT / name).read_text()


def processing_queue(settings) -> queueinfo.QueueEntry:
    entries = queueinfo.LoadSingleQueue(read("queue.yaml")).queue
    return next(entry for entry in entries if entry.name == settings.task_queue_name)


# -- app.yaml -------------------------------------------------------------------------------------


def test_app_yaml_targets_a_python_3_runtime_with_the_bundled_services():
    app = appinfo.LoadSingleAppInfo(read("app.yaml"))

    # .ci/run tests on this runtime's Python (python313 -> 3.13): keep the form python3NN.
    assert re.fullmatch(r"python3\d\d", app.runtime), app.runtime
    assert int(app.runtime.removeprefix("python3")) >= 11, "the README's minimum Python is 3.11"
    assert app.app_engine_apis is True, "memcache, the task queue and ndb are bundled services"


@pytest.mark.parametrize(
    ("environment", "bind"),
    [({}, ":8081"), ({"GUNICORN_BIND_HOST": "127.0.0.1"}, "127.0.0.1:8081")],
    ids=["app-engine", "dev_appserver"],
)
def test_entrypoint_run_by_bash_serves_main_app_with_gunicorn(environment, bind):
    """App Engine feeds the entrypoint to `bash -c` (dev_appserver to `sh -c`): gunicorn
    binds every interface on $PORT there, and loopback when GUNICORN_BIND_HOST says so."""
    from gunicorn.config import Config

    entrypoint = appinfo.LoadSingleAppInfo(read("app.yaml")).entrypoint
    assert entrypoint.startswith("exec gunicorn "), entrypoint  # the parser prefixes `exec`
    words = subprocess.run(
        ["bash", "-c", "printf '%s\\n' " + entrypoint.removeprefix("exec ")],
        env={"PORT": "8081", **environment},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    assert words[0] == "gunicorn"
    options = Config().parser().parse_args(words[1:])
    assert options.bind == [bind]
    assert options.args == ["main:app"]
    assert "gunicorn" in read("requirements.txt"), "App Engine installs only requirements.txt"


def test_main_app_is_a_wsgi_app_gunicorn_can_load(testbed):
    from gunicorn.util import import_app

    assert callable(import_app("main:app"))


def test_every_url_goes_to_the_app_the_admin_pages_for_admins_only():
    """`login: admin` is available to Python 3 apps with app_engine_apis: true."""
    handlers = appinfo.LoadSingleAppInfo(read("app.yaml")).handlers
    assert [(handler.url, handler.script, handler.login) for handler in handlers] == [
        ("/(dashboard|stats|links)", "auto", "admin"),
        ("/.*", "auto", "optional"),
    ]


def test_every_url_is_served_over_https_only():
    """Browsers send Sec-Fetch-Site, which tells another site's <img> or fetch of /track,
    only to HTTPS (clicks/origins.py): a plain-http request is redirected first."""
    handlers = appinfo.LoadSingleAppInfo(read("app.yaml")).handlers

    assert [handler.secure for handler in handlers] == [appinfo.SECURE_HTTPS] * len(handlers)


def test_login_admin_covers_exactly_the_apps_admin_paths():
    """App Engine matches a handler's url against the whole path (query string aside)."""
    import main

    admin_url = appinfo.LoadSingleAppInfo(read("app.yaml")).handlers[0].url
    paths = [route.template for route in main.ROUTES]
    assert [path for path in paths if re.fullmatch(admin_url, path)] == list(main.ADMIN_PATHS)


def test_allowed_origins_setting_in_app_yaml_parses():
    from clicks.origins import ALLOWED_ORIGINS_ENV, AllowedOrigins

    setting = appinfo.LoadSingleAppInfo(read("app.yaml")).env_variables[ALLOWED_ORIGINS_ENV]
    assert AllowedOrigins.parse(setting) == AllowedOrigins(), "the sample allows only its own pages"


# -- queue.yaml -----------------------------------------------------------------------------------


def test_processing_queue_exists_under_the_name_the_app_adds_tasks_to(app_settings):
    assert processing_queue(app_settings).name == app_settings.task_queue_name


def test_processing_queue_runs_as_many_tasks_as_the_app_has_processor_lanes(app_settings):
    """Each batch is an entity group of its own (clicks/counting.py): processors do not contend."""
    assert processing_queue(app_settings).max_concurrent_requests == app_settings.processors


def test_processing_queue_rate_keeps_up_with_one_task_per_slot(app_settings):
    """/track asks for one named task per slot; continuations come on top."""
    queue = processing_queue(app_settings)
    assert (queue.rate, queue.bucket_size) == ("20/s", 20)
    assert queueinfo.ParseRate(queue.rate) >= 1 / app_settings.slot_seconds


def test_processing_queue_retries_failed_batches_with_backoff_until_cron_takes_over(app_settings):
    """A failed batch answers 503 and its task is retried with backoff; a task may give
    up after an hour because cron schedules processing every minute (cron.yaml)."""
    retry = processing_queue(app_settings).retry_parameters
    assert (retry.min_backoff_seconds, retry.max_backoff_seconds, retry.max_doublings) == (1, 60, 5)
    assert retry.task_retry_limit is None, "retried until the age limit"
    assert queueinfo.ParseTaskAgeLimit(retry.task_age_limit) == 3600


# -- cron.yaml ------------------------------------------------------------------------------------


def test_cron_job_calls_the_app_route_that_schedules_processing(app):
    jobs = croninfo.LoadSingleCron(read("cron.yaml")).cron
    assert [job.url for job in jobs] == ["/cron/process"]
    assert app.get(jobs[0].url, headers={"X-Appengine-Cron": "true"}).status_int == 200


# Run by the Cloud SDK's Python on dev_appserver's own module path, where croninfo
# finds the groc grammar; prints each job's next runs, or the parser's error.
SDK_CRON_PARSER = """
import datetime, json, sys
sdk = sys.argv[1]
sys.path[:0] = [sdk]
import wrapper_util
sys.path[:0] = wrapper_util.Paths(sdk).script_paths("dev_appserver.py")
from google.appengine.api import croninfo, yaml_errors
from google.appengine.cron import groctimespecification
assert croninfo.groctimespecification is not None, "croninfo cannot load the groc grammar"
try:
    jobs = croninfo.LoadSingleCron(sys.stdin.read()).cron
except yaml_errors.EventError as error:
    print(json.dumps({"error": type(error).__name__, "message": str(error)}))
    sys.exit()
start = datetime.datetime(2025, 1, 1)
print(json.dumps({"runs": [
    [run.isoformat() for run in groctimespecification.GrocTimeSpecification(job.schedule).GetMatches(start, 3)]
    for job in jobs
]}))
"""


def parse_cron_with_the_sdk(text: str) -> dict:
    sdk = cloud_sdk()
    done = subprocess.run(
        [str(sdk.python), "-c", SDK_CRON_PARSER, str(sdk.app_engine)],
        input=text,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def test_cron_schedule_parses_and_runs_more_often_than_a_task_may_give_up(app_settings):
    [runs] = parse_cron_with_the_sdk(read("cron.yaml"))["runs"]
    assert runs == ["2025-01-01T00:01:00", "2025-01-01T00:02:00", "2025-01-01T00:03:00"]
    age_limit = timedelta(
        seconds=queueinfo.ParseTaskAgeLimit(processing_queue(app_settings).retry_parameters.task_age_limit)
    )
    assert timedelta(minutes=1) < age_limit


@pytest.mark.parametrize("schedule", ["every minute", "every 0 minutes", "evry 1 minutes"])
def test_bad_cron_schedule_fails_the_sdk_parser(schedule):
    text = read("cron.yaml")
    assert "schedule: every 1 minutes" in text
    result = parse_cron_with_the_sdk(text.replace("schedule: every 1 minutes", f"schedule: {schedule}"))
    assert result["error"] == "EventError"
    assert f"schedule '{schedule}' failed to parse" in result["message"]


# -- index.yaml -----------------------------------------------------------------------------------


def test_index_yaml_parses():
    """Whether it holds every index the app's queries need is proven by the dev_appserver
    test, which runs them with --require_indexes=yes."""
    indexes = datastore_index.ParseIndexDefinitions(read("index.yaml")).indexes
    assert [index.kind for index in indexes] == ["CountedBatch", "PeriodTotals", "AppliedBatch"]


# -- a bad edit to any file fails its parser ------------------------------------------------------

PARSERS: dict[str, Callable[[str], object]] = {
    "app.yaml": appinfo.LoadSingleAppInfo,
    "queue.yaml": queueinfo.LoadSingleQueue,
    "cron.yaml": croninfo.LoadSingleCron,
    "index.yaml": datastore_index.ParseIndexDefinitions,
}


@pytest.mark.parametrize(
    ("file_name", "original", "broken", "error"),
    [
        pytest.param(
            "app.yaml", "runtime: python3", "runtime: Python 3.", "for runtime does not match", id="app-runtime"
        ),
        pytest.param("app.yaml", "runtime:", "# runtime:", 'You must specify a "runtime" field', id="app-no-runtime"),
        pytest.param("app.yaml", "handlers:", "handler:", "Unexpected attribute 'handler'", id="app-misspelt-key"),
        pytest.param("app.yaml", "  login: admin", "  login: admins", "for login not in", id="app-login"),
        pytest.param("queue.yaml", "rate: 20/s", "rate: 20/x", "for rate does not match", id="queue-rate"),
        pytest.param(
            "queue.yaml",
            "max_concurrent_requests: 1",
            "max_concurrent_requests: one",
            "could not be converted to type int",
            id="queue-concurrency",
        ),
        pytest.param(
            "queue.yaml",
            "min_backoff_seconds: 1",
            "min_backoff: 1",
            "Unexpected attribute 'min_backoff'",
            id="queue-retry",
        ),
        pytest.param(
            "queue.yaml",
            "task_age_limit: 1h",
            "task_age_limit: 1 hour",
            "must end with a time unit",
            id="queue-age-limit",
        ),
        pytest.param("cron.yaml", "url: /cron/process", "url: cron/process", "for url does not match", id="cron-url"),
        pytest.param("cron.yaml", "schedule:", "schedul:", "Unexpected attribute 'schedul'", id="cron-misspelt-key"),
        pytest.param(
            "index.yaml",
            "name: counted_at",
            "name: counted_at\n    direction: down",
            "for direction not in",
            id="index-direction",
        ),
        pytest.param(
            "index.yaml",
            "ancestor: yes",
            "ancestor: maybe",
            "for ancestor is not of the expected type",
            id="index-ancestor",
        ),
        pytest.param(
            "index.yaml", "- kind: CountedBatch", "- knd: CountedBatch", "Unexpected attribute 'knd'", id="index-kind"
        ),
    ],
)
def test_bad_edit_fails_the_app_engine_parser(file_name, original, broken, error):
    text = read(file_name)
    assert original in text, f"{file_name} no longer holds {original!r}: update this case"
    PARSERS[file_name](text)  # the file as it is parses
    with pytest.raises(yaml_errors.EventError, match=re.escape(error)):
        PARSERS[file_name](text.replace(original, broken, 1))


# -- .gcloudignore: what `gcloud app deploy` uploads ----------------------------------------------

APP_FILES = frozenset({"main.py", "requirements.txt", "app.yaml", "queue.yaml", "cron.yaml", "index.yaml"})
APP_DIRECTORIES = frozenset({"clickqueue", "clicks", "handlers", "static", "templates"})
"""main.py imports the three packages; handlers read static/ and templates/."""

LEFTOVERS = [
    ".venv/bin/python",
    ".venv-3.13/bin/python",
    "artifacts/screenshots/dashboard.png",
    "mutants/main.py",
    ".local-data/datastore.db",
    "bench/results/run.json",
    "handlers/__pycache__/base.cpython-311.pyc",
    ".pytest_cache/README.md",
    ".hypothesis/examples/0",
    "dist/clickqueue-0.2.0-py3-none-any.whl",
    "notes.txt",
]
"""Files a checkout gathers that git does not track: a fresh CI clone has .venv/ and artifacts/."""


def tracked_files() -> list[str]:
    """The checkout's files that git tracks and that exist in the working tree."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    return [name for name in listed.stdout.split("\0") if name and (REPO_ROOT / name).is_file()]


def is_deployed(name: str) -> bool:
    return (name in APP_FILES or name.split("/", 1)[0] in APP_DIRECTORIES) and not name.endswith(".md")


@pytest.fixture
def checkout_copy(tmp_path):
    """The tracked files as they are in the working tree, plus the leftovers, in a folder of
    their own: what gcloud uploads from a checkout, whatever else lies in this one."""
    copy = tmp_path / "checkout"
    for name in tracked_files():
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / name, copy / name)
    for name in LEFTOVERS:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        (copy / name).write_text("a leftover\n")
    return copy


def test_deploy_uploads_the_app_files_and_nothing_else(checkout_copy):
    expected = {name for name in tracked_files() if is_deployed(name)}

    assert files_for_upload(checkout_copy) == expected
    assert {"main.py", "app.yaml", "handlers/base.py", "static/t.js", "templates/dashboard.html"} <= expected


# Run in a copy of the upload: loads the app as gunicorn does, reads every file it serves,
# and prints the top-level modules it loaded from that copy.
LOAD_THE_APP = """
import os, sys, gunicorn.util
gunicorn.util.import_app("main:app")
from handlers import assets
for name in assets.SERVED:
    assets.asset(name)
here = os.getcwd() + os.sep
loaded = {name: getattr(module, "__file__", None) or "" for name, module in sys.modules.items()}
print(sorted({name.split(".")[0] for name, path in loaded.items() if path.startswith(here)}))
"""


def test_uploaded_files_alone_load_the_app_and_everything_it_serves(checkout_copy, tmp_path):
    """The deployed app imports only what is uploaded (not devserver/, not dev.py) and
    reads its template and every static file it serves from there."""
    upload = tmp_path / "upload"
    copy_upload(checkout_copy, upload)
    done = subprocess.run([sys.executable, "-E", "-s", "-c", LOAD_THE_APP], cwd=upload, capture_output=True, text=True)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "['clickqueue', 'clicks', 'handlers', 'main']\n"
