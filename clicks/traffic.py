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


USER_AGENT_CHARACTERS_EXAMINED = 256
"""How much of a User-Agent the bot check reads: the list's examples are up to 285
characters long, and name their bot within the first 211. Past this, a User-Agent costs
no more: a client sending 8 KB ones cannot make the check dearer. A bot that names
itself only later counts as a person."""

MAX_TEXTS_PER_PATTERN = 64
"""A pattern that matches at most this many texts is matched as those texts, in the trie."""

SPECIAL = frozenset("\\.*+?[](){}|^$")


class _NotFinite(ValueError):
    """A pattern that is not plain text with ``[...]`` sets, ``(...|...)`` groups and ``|``."""


def _texts(pattern: str) -> list[str]:
    """Every text ``pattern`` matches, where it is plain text (``\\/`` and the like
    escaped), character sets of plain characters (``[bB]``), groups and alternatives
    (``(Bot|SiteAudit)``); ``_NotFinite`` for anything else (``\\d+``, ``[\\s\\S]*``, ``$``)."""
    texts, end = _alternatives(pattern, 0)
    if end != len(pattern):
        raise _NotFinite(pattern)
    return texts


def _alternatives(pattern: str, at: int) -> tuple[list[str], int]:
    texts, at = _sequence(pattern, at)
    while at < len(pattern) and pattern[at] == "|":
        more, at = _sequence(pattern, at + 1)
        texts += more
    return texts, at


def _sequence(pattern: str, at: int) -> tuple[list[str], int]:
    texts = [""]
    while at < len(pattern) and pattern[at] not in "|)":
        choices, at = _atom(pattern, at)
        texts = [text + choice for text in texts for choice in choices]
        if len(texts) > MAX_TEXTS_PER_PATTERN:
            raise _NotFinite(pattern)
    return texts, at


def _atom(pattern: str, at: int) -> tuple[list[str], int]:
    """The texts of the one element at ``at``, and where the next one starts."""
    character = pattern[at]
    if character == "(" and not pattern.startswith("(?", at):
        texts, at = _alternatives(pattern, at + 1)
        if at >= len(pattern) or pattern[at] != ")":
            raise _NotFinite(pattern)
        return texts, _unquantified(pattern, at + 1)
    if character == "[":
        close = pattern.find("]", at + 1)
        members = pattern[at + 1 : close]
        if close < 0 or not members or set(members) & SPECIAL or "-" in members:
            raise _NotFinite(pattern)
        return sorted(set(members)), _unquantified(pattern, close + 1)
    if character == "\\" and at + 1 < len(pattern) and not pattern[at + 1].isalnum():
        return [pattern[at + 1]], _unquantified(pattern, at + 2)
    if character in SPECIAL:
        raise _NotFinite(pattern)
    return [character], _unquantified(pattern, at + 1)


def _unquantified(pattern: str, at: int) -> int:
    if at < len(pattern) and pattern[at] in "*+?{":
        raise _NotFinite(pattern)
    return at


TRIE_GROUPS = 4
"""Of the ~60 first characters, how many groups the trie's first step tests in turn (4 was fastest)."""


def _trie_expression(words: list[str]) -> str:
    """One regular expression matching exactly ``words``, as a trie: where the
    engine would try every word at each position, it follows one branch a character."""
    trie: dict = {}
    for word in words:
        node = trie
        for character in word:
            node = node.setdefault(character, {})
        node[""] = {}

    def expression(node: dict) -> str:
        branches = [re.escape(character) + expression(child) for character, child in sorted(node.items()) if character]
        if not branches:
            return ""
        joined = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        return f"(?:{joined})?" if "" in node else joined

    # The first characters, in TRIE_GROUPS groups, each behind a look at its set: at each
    # position the engine tries a few sets and one group's branches, not all of them.
    first = sorted(character for character in trie if character)
    groups = [first[start :: TRIE_GROUPS] for start in range(min(TRIE_GROUPS, len(first)))]
    return "|".join(
        f"(?=[{''.join(map(re.escape, group))}])(?:{'|'.join(re.escape(c) + expression(trie[c]) for c in group)})"
        for group in groups
    )


@functools.cache
def bot_pattern() -> re.Pattern[str]:
    """crawler-user-agents' patterns less ``GENERIC_HTTP_CLIENT_PATTERNS``, as one
    compiled regular expression (on first use: about 50 ms).

    Tried one after the other at each position, its ~1,500 patterns cost about
    3 µs a character of User-Agent. Those that match a few texts only (all but
    about ten: plain text, ``[bB]ot``, ``(Bot|SiteAudit)``) become the texts of one
    trie, the anchored ones (``^...``) of another tried at the start only; the rest
    stay as they are: about 0.1 µs a character."""
    anywhere, at_start, others = [], [], []
    for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA:
        pattern = entry["pattern"]
        if pattern in GENERIC_HTTP_CLIENT_PATTERNS:
            continue
        anchored = pattern.startswith("^")
        try:
            (at_start if anchored else anywhere).extend(_texts(pattern[1:] if anchored else pattern))
        except _NotFinite:
            others.append(f"(?:{pattern})")
    tries = [_trie_expression(anywhere)] if anywhere else []
    tries += [f"^(?:{_trie_expression(at_start)})"] if at_start else []
    return re.compile("|".join([*tries, *others]))


USER_AGENTS_REMEMBERED = 4096
"""User-Agent strings whose verdict a process keeps: a few browser versions send
most traffic, and matching one costs about 0.1 ms."""


def is_bot(user_agent: str) -> bool:
    """Whether the first ``USER_AGENT_CHARACTERS_EXAMINED`` characters name a known bot."""
    return bot_verdict(user_agent[:USER_AGENT_CHARACTERS_EXAMINED])


@functools.lru_cache(maxsize=USER_AGENTS_REMEMBERED)
def bot_verdict(examined: str) -> bool:
    """``is_bot`` of a User-Agent already cut to the characters examined, remembered."""
    return bot_pattern().search(examined) is not None


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
