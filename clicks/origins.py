"""Which web pages may send events from their visitors' browsers: the allowed-origins setting.

A browser names the page a request comes from in ``Origin`` (the POSTs that
``/t.js`` sends, any CORS request). Otherwise it says whether the request comes
from another site in ``Sec-Fetch-Site`` (every current browser, to HTTPS and
loopback) and, unless the page forbids it, names the page in ``Referer``: an
``<img>`` or a no-cors ``fetch`` from another site is told by these. Requests
with none of the three (curl, servers) are not browsers' and are not checked:
the setting keeps other sites from counting into this app through their
visitors, it cannot stop anyone from sending events by hand.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from clicks.http_errors import OriginNotAllowedError

ALLOWED_ORIGINS_ENV = "CLICKQUEUE_ALLOWED_ORIGINS"
ANY_ORIGIN = "*"
ORIGIN_PATTERN = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?")
OWN_PAGE_SITES = ("same-origin", "none")
"""``Sec-Fetch-Site`` of a request from the app's own pages, or of one the person made
(typed, a bookmark, a link opened from a mail program)."""
DEFAULT_PORTS = {"http": 80, "https": 443}


class PageCheck(enum.Enum):
    """How much of a browser request's page a recording path checks."""

    ORIGIN = "origin"
    """Only an ``Origin`` header: the pixel, which mail clients show within pages of any site."""
    PAGE = "page"
    """The page, however the browser tells it (``Origin``, ``Sec-Fetch-Site``, ``Referer``): ``/track``."""
    PAGE_OR_LINK = "page-or-link"
    """As PAGE, but a person following a link from any page counts (a top-level
    navigation, or a browser that does not say what it fetches): ``/go``."""


@dataclass(frozen=True)
class AllowedOrigins:
    """The origins (``scheme://host[:port]``) whose pages may send events, besides
    the app's own; ``any_origin`` lets every page send them."""

    origins: frozenset[str] = frozenset()
    any_origin: bool = False

    @classmethod
    def parse(cls, setting: str) -> AllowedOrigins:
        """From the setting's text: origins separated by commas or spaces, or ``*``."""
        entries = {entry.lower().rstrip("/") for entry in re.split(r"[\s,]+", setting) if entry}
        if ANY_ORIGIN in entries:
            return cls(any_origin=True)
        for entry in entries:
            if not ORIGIN_PATTERN.fullmatch(entry):
                raise ValueError(
                    f"{ALLOWED_ORIGINS_ENV}: {entry!r} is not an origin: write scheme://host[:port], "
                    "such as https://www.example.com, or * for any"
                )
        return cls(frozenset(entries))

    @classmethod
    def from_environment(cls) -> AllowedOrigins:
        return cls.parse(os.environ.get(ALLOWED_ORIGINS_ENV, ""))

    def refusal(self, headers: Mapping[str, str], own_host: str, check: PageCheck) -> OriginNotAllowedError | None:
        """Why a request with these headers (webob's: names in any case) to ``own_host`` may
        not record events, as the error to answer; None if it may."""
        origin = headers.get("Origin")
        if origin is not None:
            return None if self.allows(origin, own_host) else OriginNotAllowedError(origin)
        site = headers.get("Sec-Fetch-Site")
        if check is PageCheck.ORIGIN or self.any_origin or site in OWN_PAGE_SITES:
            return None
        if check is PageCheck.PAGE_OR_LINK and (site is None or _is_top_level_navigation(headers)):
            return None
        referer = headers.get("Referer")
        if referer is not None:
            page = _origin_of(referer)
            return None if page is not None and self.allows(page, own_host) else OriginNotAllowedError(page or referer)
        if site is not None:  # another site's page, which the browser may not name (referrerpolicy)
            return OriginNotAllowedError(None, site)
        return None

    def allows(self, origin: str | None, own_host: str) -> bool:
        """Whether a page of this origin (None: none named) may record events on host ``own_host``."""
        if origin is None or self.any_origin:
            return True
        origin = origin.lower()
        return origin in self.origins or _host(urlsplit(origin).netloc) == _host(own_host.lower())


def _host(netloc: str) -> str:
    """``host[:port]`` without a default port: the app sees its own host with or
    without one, and behind App Engine's front end it may not know its scheme."""
    return re.sub(r":(80|443)$", "", netloc)


def _is_top_level_navigation(headers: Mapping[str, str]) -> bool:
    """A person following a link (or a page sending them there): not an ``<img>``, a
    ``fetch`` or a frame."""
    return headers.get("Sec-Fetch-Mode") == "navigate" and headers.get("Sec-Fetch-Dest") == "document"


def _origin_of(url: str) -> str | None:
    """``scheme://host[:port]`` of an absolute http(s) URL (a ``Referer``); None for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:  # a port that is not a number, a bracketed host that is not IPv6
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        return None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port not in (None, DEFAULT_PORTS[parts.scheme]) else "")
