"""Admin pages (/dashboard, /stats, /links) answer admins only, checked in the app
with the Users API; the tracking paths stay public. The dashboard page, and the
files it and /t.js are served from."""

from __future__ import annotations

import hashlib
import re

import pytest
from google.appengine.api import users

from tests.support.counting import count_now, keyed
from tests.support.processes import REPO_ROOT
from clicks import counters
from clicks.events import Event
from handlers.assets import SERVED, STATIC_DIR

ADMIN_PATHS = ["/dashboard", "/stats", "/stats?item=a", "/stats?bucket=day", "/links?item=a&to=https://example.com/"]


@pytest.fixture
def visitor(make_app, app_settings):
    """The app as someone not signed in reaches it."""
    return make_app(app_settings, admin=False)


@pytest.fixture
def signed_in_visitor(make_app, app_settings, testbed):
    """The app as a signed-in user who is not an admin reaches it."""
    testbed.setup_env(user_email="reader@example.com", user_id="42", overwrite=True)
    return make_app(app_settings, admin=False)


@pytest.mark.parametrize("path", ADMIN_PATHS[1:])
def test_admin_api_refuses_a_visitor_and_names_the_sign_in_page(visitor, path):
    response = visitor.get(path, status=403)

    sign_in = users.create_login_url(f"http://localhost{path}")
    assert response.json == {"error": f"only the app's admins may see this; sign in at {sign_in}"}


def test_dashboard_sends_a_visitor_to_the_sign_in_page_and_back(visitor):
    response = visitor.get("/dashboard", status=302)

    assert response.headers["Location"] == users.create_login_url("http://localhost/dashboard")


@pytest.mark.parametrize("path", ADMIN_PATHS)
def test_admin_pages_refuse_a_signed_in_user_who_is_not_an_admin(signed_in_visitor, path):
    response = signed_in_visitor.get(path, status=403)

    assert response.json == {"error": "only the app's admins may see this; sign in as one"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/track?type=view&item=a", 204, id="track"),
        pytest.param("/p.gif?type=view&item=a", 200, id="pixel"),
        pytest.param("/t.js", 200, id="snippet"),
        pytest.param("/static/dashboard.js", 200, id="static"),
        pytest.param("/", 302, id="home"),
    ],
)
def test_tracking_paths_stay_public(visitor, path, status):
    visitor.get(path, status=status)


def test_home_leads_to_the_dashboard(app):
    response = app.get("/", status=302)

    assert response.headers["Location"] == "http://localhost/dashboard"


# -- the dashboard page --------------------------------------------------------------------------


def test_dashboard_renders_totals_top_items_and_queue_health(app):
    count_now(
        "batch-1",
        keyed([Event("view", "pricing")] * 4 + [Event("click", "pricing")] + [Event("view", "pricing", bot=True)]),
    )
    app.post_json("/track", {"events": [{"type": "view", "item": "queued"}] * 2}, status=202)

    page = app.get("/dashboard", status=200)

    assert page.headers["Content-Type"] == "text/html; charset=utf-8"
    assert page.html.find(id="total-view").text == "4"
    assert page.html.find(id="total-click").text == "1"
    assert page.html.find(id="total-ctr").text == "25.0%"
    assert page.html.find(id="total-bots").text == "1"
    rows = [[cell.text for cell in row.find_all("td")] for row in page.html.find(id="top-items").tbody.find_all("tr")]
    assert rows == [["pricing", "4", "1", "25.0%", "1"]]
    health = dict(
        zip(
            (term.text for term in page.html.find(id="queue-health").find_all("dt")),
            (value.text for value in page.html.find(id="queue-health").find_all("dd")),
        )
    )
    assert (health["Waiting (depth)"], health["Lost"], health["Resets"]) == ("2", "0", "0")


def test_dashboard_allows_only_its_own_scripts_and_styles(app):
    page = app.get("/dashboard", status=200)

    assert page.headers["Content-Security-Policy"].startswith("default-src 'self';")
    assert not page.html.find_all("script", src=False), "an inline script"
    assert not page.html.find_all("style") and not page.html.find_all(style=True), "an inline style"
    scripts = [tag["src"] for tag in page.html.find_all("script")]
    styles = [tag["href"] for tag in page.html.find_all("link", rel="stylesheet")]
    assert all(url.startswith("/static/") for url in scripts + styles), scripts + styles
    assert [tag["href"] for tag in page.html.find_all("link", rel="icon")] == ["data:,"], "no favicon request"


def test_dashboard_shows_the_snippet_for_this_app(app):
    page = app.get("/dashboard", status=200)

    assert '<script defer src="http://localhost/t.js" data-item="ITEM"></script>' in page.html.get_text()


# -- /t.js and /static/ ---------------------------------------------------------------------------


def test_snippet_is_javascript_cacheable_with_an_etag(app):
    response = app.get("/t.js", status=200)

    assert response.headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert response.headers["Cache-Control"] == "public, max-age=3600"
    assert response.headers["ETag"]
    assert response.body == (STATIC_DIR / "t.js").read_bytes()


def test_snippet_not_changed_answers_304_without_a_body(app):
    etag = app.get("/t.js").headers["ETag"]

    response = app.get("/t.js", headers={"If-None-Match": etag}, status=304)

    assert response.body == b""


@pytest.mark.parametrize("name", SERVED[1:])
def test_static_files_are_served(app, name):
    response = app.get(f"/static/{name}", status=200)

    assert response.body == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize(
    "path",
    ["/static/nothing.js", "/static/../handlers/base.py", "/static/%2e%2e/app.yaml", "/static/vendor/README.md"],
)
def test_other_paths_under_static_are_not_found(app, path):
    response = app.get(path, status=404)

    assert set(response.json) == {"error"}


def vendored_files() -> list[tuple[str, str]]:
    """(path under static/vendor/, SHA-256) from the table in static/vendor/README.md."""
    table = (STATIC_DIR / "vendor" / "README.md").read_text()
    folder = re.search(r"^## (\S+)$", table, re.MULTILINE).group(1)
    return [(f"{folder}/{name}", digest) for name, digest in re.findall(r"→ `([^`]+)` \| `([0-9a-f]{64})`", table)]


def test_vendored_chart_library_is_the_pinned_release_with_its_licence():
    files = vendored_files()

    assert [name for name, _ in files] == [
        "uplot-1.6.32/uPlot.iife.min.js",
        "uplot-1.6.32/uPlot.min.css",
        "uplot-1.6.32/LICENSE",
    ]
    for name, digest in files:
        assert hashlib.sha256((STATIC_DIR / "vendor" / name).read_bytes()).hexdigest() == digest, name
    assert "MIT License" in (STATIC_DIR / "vendor" / "uplot-1.6.32" / "LICENSE").read_text()


def test_dashboard_template_names_the_served_vendored_files():
    template = (REPO_ROOT / "templates" / "dashboard.html").read_text()
    referenced = re.findall(r'(?:src|href)="/static/([^"]+)"', template)

    assert set(referenced) <= set(SERVED)
    assert {name for name in SERVED if name.startswith("vendor/")} <= set(referenced)
