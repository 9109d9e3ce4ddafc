"""``/dashboard`` (admins): the counts, queue health, the link signer and the snippet on one page.

Totals, a chart over time, top items, queue health, the link signer and the
snippet, server-rendered; its script (static/dashboard.js) draws the chart from
``/stats``. ``/`` leads to it.
"""

from __future__ import annotations

import html
from pathlib import Path
from string import Template

from google.appengine.api import users

from handlers.admin import AdminHandler
from handlers.base import JsonHandler
from handlers.stats import overview

TEMPLATE = Template((Path(__file__).resolve().parent.parent / "templates" / "dashboard.html").read_text())

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
"""Scripts, styles and requests from this app only: the page has no inline script or style."""


def percent(ratio: float | None) -> str:
    return f"{ratio:.1%}" if ratio is not None else "–"


def number(count: int) -> str:
    return f"{count:,}"


def duration(seconds: int) -> str:
    """Such as "45 s", "12 min", "5 h" or "3 d": the largest unit that fits."""
    for unit, unit_seconds in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * unit_seconds:
            return f"{seconds // unit_seconds} {unit}"
    return f"{seconds} s"


class DashboardHandler(AdminHandler):
    """The dashboard page, rendered from the same data as ``/stats``."""

    sign_in_redirects = True

    def get(self) -> None:
        stats = overview(self.settings)
        totals, queue, last_commit = stats["totals"], stats["queue"], stats["last_commit"]
        rows = "\n".join(
            f'      <tr><td>{html.escape(entry["item"])}</td><td class="number">{number(entry["view"])}</td>'
            f'<td class="number">{number(entry["click"])}</td><td class="number">{percent(entry["ctr"])}</td>'
            f'<td class="number">{number(entry["bots"])}</td></tr>'
            for entry in stats["items"]
        )
        base_url = self.request.host_url
        user = users.get_current_user()
        values = {
            "who": f"Signed in as {user.email()}" if user else "",
            "view": number(totals["view"]),
            "click": number(totals["click"]),
            "ctr": percent(totals["ctr"]),
            "bots": number(totals["bots"]),
            "item_rows": rows or '      <tr><td colspan="5">Nothing counted yet.</td></tr>',
            "depth": number(queue["depth"]),
            "leased": number(queue["leased"]),
            "lost": number(queue["lost"]),
            "resets": number(queue["resets"]),
            "last_commit": (
                f"{last_commit['at']} (its oldest event was {duration(last_commit['lag_seconds'])} old)"
                if last_commit["at"]
                else "never"
            ),
            "snippet": f'<script defer src="{base_url}/t.js" data-item="ITEM"></script>',
            "pixel": f'<img src="{base_url}/p.gif?type=view&item=ITEM" width="1" height="1" alt="">',
        }
        page = TEMPLATE.substitute(
            {name: value if name == "item_rows" else html.escape(value) for name, value in values.items()}
        )
        self.response.content_type = "text/html"
        self.response.charset = "utf-8"
        self.response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        self.response.headers["Cache-Control"] = "no-store"
        self.response.text = page


class HomeHandler(JsonHandler):
    """``/``: to the dashboard."""

    def get(self) -> None:
        self.redirect("/dashboard")
