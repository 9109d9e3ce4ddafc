"""Who sent a request that records an event: a person, a known bot, or a browser prefetching.

Bots are matched by their User-Agent against crawler-user-agents, a maintained
list of bot, crawler and link-preview patterns, less the generic HTTP clients:
a backend sending events with curl or python-requests is the API working as
meant. A User-Agent that names no bot (or is absent) is a person's, so a bot
that passes for a browser is counted as one: this cannot catch it.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping

import crawleruseragents

GENERIC_HTTP_CLIENT_PATTERNS = frozenset(
    {
        "^curl",
        "[wW]get",
        "^HTTPie\\/",
        "^PHP-Curl-Class",
        "python-requests",
        "Python-urllib",
        "httpx",
        "aiohttp",
        "Go-http-client",
        "okhttp",
        "^Apache-HttpClient",
        "AHC\\/",
        "HttpUrlConnection",
        "Jetty",
        "axios",
        "node-fetch",
        "sindresorhus\\/got",
        "libwww-perl",
    }
)
"""Patterns of crawler-user-agents (tagged ``http-library``) that name general
HTTP client libraries and tools, not crawlers: dropped from the list. Its other
``http-library`` entries (Scrapy, HTTrack, colly...) are crawlers, and stay."""


class Sender(enum.Enum):
    PERSON = "person"
    BOT = "bot"
    PREFETCH = "prefetch"


@functools.cache
def bot_pattern() -> re.Pattern[str]:
    """crawler-user-agents' patterns less ``GENERIC_HTTP_CLIENT_PATTERNS``, as one
    regular expression (compiled on first use: about 20 ms)."""
    patterns = [
        entry["pattern"]
        for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA
        if entry["pattern"] not in GENERIC_HTTP_CLIENT_PATTERNS
    ]
    return re.compile("|".join(f"(?:{pattern})" for pattern in patterns))


USER_AGENTS_REMEMBERED = 4096
"""User-Agent strings whose verdict a process keeps: a few browser versions send
most traffic, and matching one against every pattern costs ~0.1 ms."""


@functools.lru_cache(maxsize=USER_AGENTS_REMEMBERED)
def is_bot(user_agent: str) -> bool:
    return bot_pattern().search(user_agent) is not None


def is_prefetch(headers: Mapping[str, str]) -> bool:
    """A speculative fetch the person may never see: ``Sec-Purpose: prefetch``
    (Chromium's prefetch and prerender), or ``Purpose: prefetch`` (older browsers)."""
    purposes = [headers.get("Sec-Purpose", ""), headers.get("Purpose", "")]
    return any(purpose.split(";")[0].strip().lower() == "prefetch" for purpose in purposes)


def sender(headers: Mapping[str, str]) -> Sender:
    """Who sent a request with these headers (webob's, which match names in any case)."""
    if is_prefetch(headers):
        return Sender.PREFETCH
    if is_bot(headers.get("User-Agent", "")):
        return Sender.BOT
    return Sender.PERSON
