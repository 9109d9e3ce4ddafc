"""In a real headless Chromium (Debian's chromium and chromium-driver, driven by
Selenium; nothing is downloaded): a page with the one-line snippet counts its view
and clicks, and the dashboard charts what /stats answers, with no console errors.

The app is ``python main.py`` (open to its local admin); the test pages come from a
server of their own on another port, another origin, which the app allows. The
dashboard's screenshot is saved in artifacts/screenshots/ (docs/dashboard.md shows docs/dashboard.png).
Skipped where Chromium or its driver is missing, except under CI=true.
"""

from __future__ import annotations

import html
import http.server
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from google.appengine.api import apiproxy_stub_map
from google.appengine.ext import ndb
from google.appengine.ext import testbed as testbed_module

import devserver
from tests.support.counting import count_now, keyed
from tests.support.processes import REPO_ROOT, free_port, skip_or_fail_in_ci, wait_until
from tests.support.e2e import counted_events, get_json, local_server, wait_until_drained
from clicks import counters
from clicks.events import Event
from clicks.origins import ALLOWED_ORIGINS_ENV
from devserver.datastore import LocalDatastoreStub

pytestmark = pytest.mark.browser

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "artifacts" / "screenshots"
DESKTOP_CHROME = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"
"""The browser's User-Agent here: headless Chromium's own names HeadlessChrome, which
the bot list knows (test_headless_chromium_counts_as_a_bot)."""
COUNTED_SECONDS = 30
STRANGER_SITE = "stranger.test"
"""A host name the browser resolves to 127.0.0.1: its pages are of another site than the app's
(127.0.0.1 and the test pages' other port are one site)."""
"""How long counting may take: a slot's task runs when its 1-second slot ends."""


# -- the pages, on an origin of their own -------------------------------------------------------


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>A page</title>
<script>
  window.sentBodies = [];
  if ({no_beacon}) {{ delete Navigator.prototype.sendBeacon; }}
  else {{
    const send = navigator.sendBeacon.bind(navigator);
    navigator.sendBeacon = (url, body) => {{ window.sentBodies.push(body); return send(url, body); }};
  }}
</script>
<script defer src="{app}/t.js"{data_item}></script>
</head><body>
<h1>A page</h1>
<button id="signup" data-track-click="signup">Sign up</button>
<button id="untracked">Not tracked</button>
<a id="next" href="/after-the-link" data-track-click="next-link">Next</a>
{image}
</body></html>
"""


def page_handler(app_url: str) -> type[http.server.BaseHTTPRequestHandler]:
    class PageHandler(http.server.BaseHTTPRequestHandler):
        """Any path: the test page. ``?item=X`` gives the snippet ``data-item="X"``;
        ``?no_beacon=1`` takes ``navigator.sendBeacon`` away first; ``?image_item=X``
        adds an ``<img>`` of ``/track`` counting a view of X."""

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
            item = query.get("item", [None])[0]
            image_item = query.get("image_item", [None])[0]
            send_html(
                self,
                PAGE.format(
                    app=app_url,
                    no_beacon="true" if query.get("no_beacon") else "false",
                    data_item=f' data-item="{html.escape(item)}"' if item is not None else "",
                    image=(
                        f'<img alt="" src="{app_url}/track?type=view&amp;item={html.escape(image_item)}">'
                        if image_item is not None
                        else ""
                    ),
                ),
            )

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """Quiet."""

    return PageHandler


def send_html(handler: http.server.BaseHTTPRequestHandler, page: str) -> None:
    body = page.encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "text/html; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def fixed_page_handler(page: str) -> type[http.server.BaseHTTPRequestHandler]:
    class FixedPageHandler(http.server.BaseHTTPRequestHandler):
        """Any path: ``page``."""

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            send_html(self, page)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """Quiet."""

    return FixedPageHandler


@dataclass
class PageServer:
    server: http.server.ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def start_pages(app_url: str, handler: type[http.server.BaseHTTPRequestHandler] | None = None) -> PageServer:
    """The test pages (``page_handler``'s, or ``handler``'s) on 127.0.0.1, a port of their own."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler or page_handler(app_url))
    thread = threading.Thread(target=server.serve_forever, name="test-pages", daemon=True)
    thread.start()
    return PageServer(server, thread)


# -- history, so the chart has a shape ----------------------------------------------------------

HISTORY_DAYS = 30
HISTORY_ITEMS = {"pricing": 24.0, "blog:launch": 15.0, "docs:start": 9.0, "signup-cta": 4.0}


def seed_history(data_dir: Path, now: float) -> None:
    """30 days of hourly views, clicks and bots, as the local server's saved Datastore."""
    rng = random.Random(10)
    data_dir.mkdir(parents=True, exist_ok=True)
    events = []
    for hour in range(HISTORY_DAYS * 24, 0, -1):
        at = int(now) - hour * 3600
        daily = 0.35 + 0.65 * max(0.0, 1 - abs((at // 3600) % 24 - 14) / 9)  # busiest mid-afternoon UTC
        growth = 0.5 + 0.5 * (1 - hour / (HISTORY_DAYS * 24))
        for item, weight in HISTORY_ITEMS.items():
            views = int(weight * daily * growth * rng.uniform(0.7, 1.3))
            events += [Event("view", item, at=at)] * views
            events += [Event("click", item, at=at) for _ in range(views) if rng.random() < 0.12]
            events += [Event("view", item, at=at, bot=True) for _ in range(2) if rng.random() < 0.15]
    bed = testbed_module.Testbed()
    bed.activate()
    try:
        bed.setup_env(app_id=devserver.APP_ID, overwrite=True)
        bed.init_memcache_stub()  # ndb's
        stub = LocalDatastoreStub(devserver.APP_ID, data_dir / "datastore.db")
        apiproxy_stub_map.apiproxy.RegisterStub("datastore_v3", stub)
        ndb.get_context().clear_cache()
        count_now("history", keyed(events))
        stub.save()
    finally:
        bed.deactivate()


# -- the browser, the app and the pages -----------------------------------------------------------


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """Headless Chromium driven through Debian's chromedriver, its path given: nothing is downloaded."""
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        skip_or_fail_in_ci(
            f"Chromium or its driver is missing ({CHROMIUM}, {CHROMEDRIVER}: Debian chromium, chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}",
        "--window-size=1280,1500",
        f"--user-agent={DESKTOP_CHROME}",
        f"--host-resolver-rules=MAP {STRANGER_SITE} 127.0.0.1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


@dataclass(frozen=True)
class Tracker:
    app: str
    pages: str
    seeded_events: int
    """The events the seeded history counts, before any reached the queue."""


@pytest.fixture(scope="module")
def tracker(tmp_path_factory) -> Iterator[Tracker]:
    """``python main.py`` on 30 days of history, allowing the test pages' origin; and the pages."""
    directory = tmp_path_factory.mktemp("browser")
    seed_history(directory / "data", time.time())
    port = free_port()
    app_url = f"http://127.0.0.1:{port}"
    pages = start_pages(app_url)
    try:
        with local_server(
            directory / "data", directory / "server.log", port=port, environment={ALLOWED_ORIGINS_ENV: pages.origin}
        ) as (base_url, _):
            yield Tracker(base_url, pages.origin, counted_events(get_json(base_url, "/stats")))
    finally:
        pages.stop()
        print((directory / "server.log").read_text(errors="replace")[-4000:])


def counts_of(tracker: Tracker, item: str) -> dict:
    return get_json(tracker.app, "/stats?" + urllib.parse.urlencode({"item": item}))


def wait_for_item(tracker: Tracker, item: str, **expected: int) -> dict:
    """Wait until ``item``'s counts include ``expected`` (such as ``view=1``)."""

    def counted():
        counts = counts_of(tracker, item)
        return counts if all(counts[name] == value for name, value in expected.items()) else None

    return wait_until(counted, COUNTED_SECONDS, interval_seconds=0.2, message=f"{item} to count {expected}")


def sent_batches(browser) -> list[list[dict]]:
    """The events of each request the page's snippet sent with sendBeacon."""
    return [json.loads(body)["events"] for body in browser.execute_script("return window.sentBodies")]


def console_errors(browser) -> list[dict]:
    """The errors logged to the console since the last call."""
    return [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def open_dashboard(browser, tracker: Tracker) -> None:
    console_errors(browser)  # what earlier pages logged
    wait_until_drained(tracker.app, COUNTED_SECONDS, tracker.seeded_events)  # the chart and a /stats read after it then see the same counts
    browser.get(f"{tracker.app}/dashboard")
    chart_shown(browser, "24h")


# -- the snippet ---------------------------------------------------------------------------------


def test_page_counts_its_view_and_clicks_sent_together(browser, tracker):
    from selenium.webdriver.common.by import By

    browser.get(f"{tracker.pages}/blog/hello-world")
    browser.execute_script(
        "for (let n = 0; n < 3; n++) document.getElementById('signup').click();"
        "document.getElementById('untracked').click();"
    )  # three clicks within one batching window
    browser.find_element(By.ID, "signup").click()

    view = wait_for_item(tracker, "blog:hello-world", view=1, click=0, bots=0)
    clicks = wait_for_item(tracker, "signup", click=4, view=0, bots=0)
    batches = sent_batches(browser)
    assert (view["view"], clicks["click"]) == (1, 4)
    assert [{"type": "click", "item": "signup"}] * 3 in [
        [event for event in batch if event["type"] == "click"][:3] for batch in batches
    ]
    assert sum(len(batch) for batch in batches) == 5, batches


def test_tracked_link_click_is_sent_as_the_page_goes(browser, tracker):
    from selenium.webdriver.common.by import By

    browser.get(f"{tracker.pages}/before-the-link")
    browser.find_element(By.ID, "next").click()

    wait_for_item(tracker, "next-link", click=1)
    wait_for_item(tracker, "before-the-link", view=1)
    wait_for_item(tracker, "after-the-link", view=1)  # the page it lands on counts its own view
    assert browser.current_url == f"{tracker.pages}/after-the-link"


# -- the dashboard --------------------------------------------------------------------------------


def chart_shown(browser, range_name: str) -> dict:
    """Once the dashboard drew ``range_name``: the URL it read, and the chart's columns."""
    wait_until(
        lambda: browser.execute_script("return document.body.getAttribute('data-chart-range')") == range_name,
        COUNTED_SECONDS,
        message=f"the dashboard to draw {range_name}",
    )
    return browser.execute_script(
        "const d = window.clickqueueDashboard; return {url: d.url, data: d.chart.data.map(c => Array.from(c))};"
    )


def columns_of(stats: dict) -> list[list]:
    """/stats's series as the chart's columns: bucket start (seconds), views, clicks, bots."""
    from datetime import datetime

    series = stats["series"]
    return [
        [datetime.fromisoformat(point["start"]).timestamp() for point in series],
        [point["view"] for point in series],
        [point["click"] for point in series],
        [point["bots"] for point in series],
    ]


@pytest.mark.parametrize(
    ("range_name", "bucket", "points"), [("24h", "hour", 24), ("7d", "hour", 168), ("30d", "day", 30)]
)
def test_dashboard_chart_shows_what_stats_answers(browser, tracker, range_name, bucket, points):
    from selenium.webdriver.common.by import By

    open_dashboard(browser, tracker)
    if range_name != "24h":
        browser.find_element(By.CSS_SELECTOR, f'[data-range="{range_name}"]').click()

    shown = chart_shown(browser, range_name)
    stats = get_json(tracker.app, shown["url"])

    assert stats["bucket"] == bucket
    assert shown["data"] == columns_of(stats)
    assert len(shown["data"][0]) == points
    assert sum(shown["data"][1]) > 0, "the history's views are on the chart"
    assert browser.find_element(By.CSS_SELECTOR, f'[data-range="{range_name}"]').get_attribute("aria-pressed") == "true"
    assert console_errors(browser) == []


def test_dashboard_lists_what_stats_lists_and_is_saved_as_a_screenshot(browser, tracker):
    from selenium.webdriver.common.by import By

    open_dashboard(browser, tracker)
    stats = get_json(tracker.app, "/stats")
    rows = [
        [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#top-items tbody tr")
    ]

    assert [row[0] for row in rows] == [entry["item"] for entry in stats["items"]]
    assert browser.find_element(By.ID, "total-view").text == f"{stats['totals']['view']:,}"
    assert console_errors(browser) == []
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    assert browser.save_screenshot(str(SCREENSHOTS / "dashboard.png"))


def test_dashboard_signs_a_link_that_counts_its_click_and_lands(browser, tracker):
    from selenium.webdriver.common.by import By

    open_dashboard(browser, tracker)
    landing = f"{tracker.pages}/landing?item=landing-page"
    browser.find_element(By.NAME, "item").send_keys("newsletter-link")
    browser.find_element(By.NAME, "to").send_keys(landing)
    browser.find_element(By.CSS_SELECTOR, "#sign-link button").click()
    link = wait_until(lambda: browser.find_element(By.ID, "signed-link").text, COUNTED_SECONDS, message="a link")

    browser.get(link)

    assert browser.current_url == landing
    wait_for_item(tracker, "newsletter-link", click=1)
    wait_for_item(tracker, "landing-page", view=1)


# -- more of the snippet (after the dashboard's screenshot, which then shows fewer test items) --


@pytest.mark.parametrize(
    ("path", "item"),
    [
        pytest.param("/", "index", id="root"),
        pytest.param("/blog/2024/hello%20world/", "blog:2024:hello-world", id="nested-with-a-space"),
        pytest.param("/a//b", "a::b", id="double-slash"),
        pytest.param("/caf%C3%A9/men%C3%BC.html", "caf-:men-.html", id="not-ascii"),
        pytest.param("/100%25/%E0%A4%A", "100-25:-E0-A4-A", id="malformed-percent-encoding-left-encoded"),
        pytest.param("/docs/" + "x" * 200, "docs:" + "x" * 123, id="cut-to-128"),
        pytest.param("/ignored?item=Spring%20Sale!", "Spring-Sale-", id="data-item-mapped-alike"),
        pytest.param("/ignored?item=campaign:spring-2025", "campaign:spring-2025", id="data-item-as-it-is"),
    ],
)
def test_item_comes_from_data_item_or_the_path_by_the_documented_rule(browser, tracker, path, item):
    browser.get(tracker.pages + path)

    wait_for_item(tracker, item, view=1)


def test_events_go_by_fetch_keepalive_where_sendbeacon_is_missing(browser, tracker):
    from selenium.webdriver.common.by import By

    browser.get(f"{tracker.pages}/no-beacon?no_beacon=1&item=fetched-page")
    browser.find_element(By.ID, "signup").click()

    wait_for_item(tracker, "fetched-page", view=1)
    assert browser.execute_script("return 'sendBeacon' in navigator") is False


def test_page_on_an_origin_not_allowed_counts_nothing(browser, tracker):
    stranger = start_pages(tracker.app)
    try:
        browser.get(f"{stranger.origin}/?item=from-a-stranger")
        browser.get(f"{tracker.pages}/?item=allowed-after-the-stranger")  # its view is sent after the stranger's
        wait_for_item(tracker, "allowed-after-the-stranger", view=1)
    finally:
        stranger.stop()

    assert counts_of(tracker, "from-a-stranger")["view"] == 0


STRANGER_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>Another site</title>
<script>window.settled = 0; function settle() {{ window.settled += 1; }}</script></head><body>
<img alt="" onload="settle()" onerror="settle()" src="{app}/track?type=view&amp;item=image-on-another-site">
<img alt="" onload="settle()" onerror="settle()" referrerpolicy="no-referrer"
     src="{app}/track?type=view&amp;item=image-naming-no-page">
<img alt="" onload="settle()" onerror="settle()" src="{link_as_image}">
<img alt="" onload="settle()" onerror="settle()" src="{app}/p.gif?type=view&amp;item=pixel-on-another-site">
<script>
  fetch("{app}/track?type=click&item=fetch-from-another-site", {{mode: "no-cors"}}).then(settle, settle);
</script>
<a id="follow" href="{link}">A tracked link</a>
</body></html>
"""
STRANGER_REQUESTS = 5


def signed_link_to(tracker: Tracker, item: str, target: str) -> str:
    return get_json(tracker.app, "/links?" + urllib.parse.urlencode({"item": item, "to": target}))["link"]


def test_another_sites_images_and_fetches_count_nothing_its_links_and_pixels_do(browser, tracker):
    from selenium.webdriver.common.by import By

    browser.get(f"{tracker.pages}/?item=page-with-an-image&image_item=image-on-an-allowed-page")
    page = STRANGER_PAGE.format(
        app=tracker.app,
        link_as_image=html.escape(signed_link_to(tracker, "link-as-image", f"{tracker.pages}/?item=not-landed")),
        link=html.escape(signed_link_to(tracker, "link-followed", f"{tracker.pages}/?item=landed-from-another-site")),
    )
    stranger = start_pages(tracker.app, fixed_page_handler(page))
    try:
        browser.get(f"http://{STRANGER_SITE}:{stranger.port}/")
        wait_until(
            lambda: browser.execute_script("return window.settled") == STRANGER_REQUESTS,
            COUNTED_SECONDS,
            message="the other site's images and fetch to be answered",
        )
        browser.find_element(By.ID, "follow").click()
        wait_for_item(tracker, "landed-from-another-site", view=1)
    finally:
        stranger.stop()
    wait_for_item(tracker, "image-on-an-allowed-page", view=1)
    wait_until_drained(tracker.app, COUNTED_SECONDS, tracker.seeded_events)

    counted = {
        item: counts_of(tracker, item)["view"] + counts_of(tracker, item)["click"]
        for item in (
            "image-on-another-site",
            "image-naming-no-page",
            "fetch-from-another-site",
            "link-as-image",
            "pixel-on-another-site",
            "link-followed",
        )
    }
    assert counted == {
        "image-on-another-site": 0,
        "image-naming-no-page": 0,
        "fetch-from-another-site": 0,
        "link-as-image": 0,
        "pixel-on-another-site": 1,  # unchecked: mail clients show it within their own pages
        "link-followed": 1,
    }


def test_headless_chromium_counts_as_a_bot(browser, tracker):
    headless = DESKTOP_CHROME.replace("Chrome/", "HeadlessChrome/")
    browser.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": headless})
    try:
        browser.get(f"{tracker.pages}/?item=seen-by-a-robot")
        counts = wait_for_item(tracker, "seen-by-a-robot", bots=1)
    finally:
        browser.execute_cdp_cmd("Network.setUserAgentOverride", {"userAgent": DESKTOP_CHROME})

    assert (counts["view"], counts["click"]) == (0, 0)
