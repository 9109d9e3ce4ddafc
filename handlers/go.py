"""``/go``: a signed tracked link, counted and redirected; ``/links``: where admins sign them.

See clicks/links.py.
"""

from __future__ import annotations

from contextlib import suppress

from clicks.events import Event, parse_item, single_param
from clicks.http_errors import QueueFullError
from clicks.links import parse_target
from clicks.origins import PageCheck
from handlers.admin import AdminHandler
from handlers.recording import RecordingHandler


class GoHandler(RecordingHandler):
    """``GET /go?item=ID&to=URL&sig=SIG``: counts a click on ID and answers 302 to URL;
    400, recording nothing, unless SIG signs (ID, URL). A link is followed from pages of
    any site; an ``<img>``, ``fetch`` or frame of it on another site's page records nothing (403).
    While the queue is full it still redirects, recording nothing."""

    page_check = PageCheck.PAGE_OR_LINK

    def get(self) -> None:
        params = self.query_params()
        item = parse_item(single_param(params, "item"))
        target = parse_target(single_param(params, "to"))
        self.settings.links.check(item, target, single_param(params, "sig"))
        with suppress(QueueFullError):  # the visitor still gets where the link leads; the gate counts it refused
            self.record([Event("click", item)])
        self.response.status_int = 302
        self.response.headers["Location"] = target
        self.response.headers["Cache-Control"] = "no-store"  # each click comes back here
        del self.response.content_type


class SignLinkHandler(AdminHandler):
    """``GET /links?item=ID&to=URL`` (admins): ``{"item", "to", "link"}``, the signed tracked link."""

    def get(self) -> None:
        params = self.query_params()
        item = parse_item(single_param(params, "item"))
        target = parse_target(single_param(params, "to"))
        link = self.settings.links.link(self.request.host_url, item, target)
        self.write_json(200, {"item": item, "to": target, "link": link})
