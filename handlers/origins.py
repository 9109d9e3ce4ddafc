"""Which web pages may send events from their visitors' browsers: the allowed-origins setting.

Browsers name the page's origin in an ``Origin`` header on the POSTs that
``/t.js`` sends. Requests without one (curl, servers, ``<img>`` and link
clicks) are not browsers' cross-origin calls and are not checked: the setting
keeps other sites from counting into this app through their visitors, it
cannot stop anyone from sending events by hand.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

ALLOWED_ORIGINS_ENV = "CLICKQUEUE_ALLOWED_ORIGINS"
ANY_ORIGIN = "*"
ORIGIN_PATTERN = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?")


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

    def allows(self, origin: str | None, own_host: str) -> bool:
        """Whether a request with this ``Origin`` header (None: none) to host ``own_host`` may record events."""
        if origin is None or self.any_origin:
            return True
        origin = origin.lower()
        return origin in self.origins or _host(urlsplit(origin).netloc) == _host(own_host.lower())


def _host(netloc: str) -> str:
    """``host[:port]`` without a default port: the app sees its own host with or
    without one, and behind App Engine's front end it may not know its scheme."""
    return re.sub(r":(80|443)$", "", netloc)
