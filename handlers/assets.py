"""``/t.js`` and ``/static/...``: the page snippet and the dashboard's files, served with an ETag.

The snippet, the dashboard's script and style and the vendored chart library,
from ``static/``.

A fixed set of files, read once: no path from a request ever reaches the file
system. Browsers revalidate with ``If-None-Match`` (a 304 when unchanged) once
``max-age`` has passed, so a new deployment reaches pages within that time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from clicks.http_errors import NotFoundError, quote_prefix
from handlers.base import JsonHandler

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
SNIPPET = "t.js"
CACHE_SECONDS = 3600

CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}

SERVED = (
    SNIPPET,
    "dashboard.js",
    "dashboard.css",
    "vendor/uplot-1.6.32/uPlot.iife.min.js",
    "vendor/uplot-1.6.32/uPlot.min.css",
)
"""The files under static/ that are served (``/t.js``, the rest under ``/static/``)."""


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str

    @property
    def etag(self) -> str:
        return hashlib.sha256(self.body).hexdigest()[:32]


@cache
def asset(name: str) -> Asset:
    return Asset((STATIC_DIR / name).read_bytes(), CONTENT_TYPES[Path(name).suffix])


class AssetHandler(JsonHandler):
    """One file of ``SERVED``: public, cacheable, usable from any site (it holds no data)."""

    def get(self, name: str = SNIPPET) -> None:
        if name not in SERVED:
            raise NotFoundError(f"no such file: {quote_prefix(name)}")
        served = asset(name)
        self.response.content_type = served.content_type
        self.response.headers["Cache-Control"] = f"public, max-age={CACHE_SECONDS}"
        self.response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
        self.response.etag = served.etag
        self.response.conditional_response = True  # webob answers a matching If-None-Match with 304
        self.response.body = served.body
