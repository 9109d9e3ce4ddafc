"""Bots, crawlers and link-preview scrapers are told from people by crawler-user-agents'
patterns; generic HTTP clients are not bots; prefetches are not views. Checked
against a table of real User-Agent strings."""

from __future__ import annotations

import re

import crawleruseragents
import pytest
from hypothesis import given
from hypothesis import strategies as st

from clicks.traffic import (
    GENERIC_HTTP_CLIENT_PATTERNS,
    USER_AGENT_CHARACTERS_EXAMINED,
    USER_AGENTS_REMEMBERED,
    Sender,
    bot_pattern,
    bot_verdict,
    is_bot,
    sender,
)

BROWSERS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36 "
    "Edg/126.0.0.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.6478.122 Mobile "
    "Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 "
    "Safari/537.36 OPR/111.0.0.0",
    "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/25.0 "
    "Chrome/121.0.0.0 Mobile Safari/537.36",
]

BOTS = [
    # link-preview scrapers: they fetch a shared URL within seconds
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
    "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)",
    "Twitterbot/1.0",
    "WhatsApp/2.23.20.0",
    "facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)",
    "TelegramBot (like TwitterBot)",
    "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
    # crawlers
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)",
    "Mozilla/5.0 (compatible; YandexBot/3.0; +http://yandex.com/bots)",
    "Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)",
    "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; +https://openai.com/gptbot)",
    "Scrapy/2.11.2 (+https://scrapy.org)",
    # a browser driven by a program
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/126.0.0.0 Safari/537.36",
]

GENERIC_HTTP_CLIENTS = [
    "curl/8.5.0",
    "Wget/1.21.3",
    "python-requests/2.32.3",
    "Python-urllib/3.11",
    "python-httpx/0.27.0",
    "Python/3.11 aiohttp/3.9.5",
    "Go-http-client/1.1",
    "Go-http-client/2.0",
    "okhttp/4.12.0",
    "axios/1.7.2",
    "node-fetch/1.0 (+https://github.com/bitinn/node-fetch)",
    "Apache-HttpClient/4.5.14 (Java/17.0.2)",
    "HTTPie/3.2.2",
    "libwww-perl/6.72",
    "",
]


@pytest.mark.parametrize("user_agent", BROWSERS)
def test_browser_is_a_person(user_agent):
    assert is_bot(user_agent) is False


@pytest.mark.parametrize("user_agent", BOTS)
def test_bot_crawler_or_preview_scraper_is_a_bot(user_agent):
    assert is_bot(user_agent) is True


@pytest.mark.parametrize("user_agent", GENERIC_HTTP_CLIENTS)
def test_generic_http_client_is_not_a_bot(user_agent):
    assert is_bot(user_agent) is False


def test_a_user_agents_verdict_is_remembered_for_the_next_request_with_it():
    bot_verdict.cache_clear()
    assert [is_bot(BROWSERS[0]), is_bot(BROWSERS[0]), is_bot(BOTS[0])] == [False, False, True]
    assert (bot_verdict.cache_info().hits, bot_verdict.cache_info().misses) == (1, 2)
    assert bot_verdict.cache_info().maxsize == USER_AGENTS_REMEMBERED


def test_user_agents_alike_in_the_characters_examined_share_one_verdict():
    bot_verdict.cache_clear()
    examined = "Mozilla/5.0 " + "x" * USER_AGENT_CHARACTERS_EXAMINED

    assert [is_bot(examined + " one"), is_bot(examined + " two")] == [False, False]
    assert (bot_verdict.cache_info().hits, bot_verdict.cache_info().currsize) == (1, 1)


BOT_ENTRIES = [
    entry
    for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA
    if entry["pattern"] not in GENERIC_HTTP_CLIENT_PATTERNS
]


def test_every_example_user_agent_of_the_list_is_a_bot():
    """The list's own examples (up to 285 characters) all name their bot within the characters examined."""
    examples = [example for entry in BOT_ENTRIES for example in entry.get("instances", [])]

    assert [example for example in examples if not is_bot(example)] == []
    assert max(map(len, examples)) > USER_AGENT_CHARACTERS_EXAMINED  # so the cut is tried on some


@pytest.mark.parametrize(
    ("padding", "expected"),
    [
        pytest.param(
            USER_AGENT_CHARACTERS_EXAMINED - len("Mozilla/5.0  bingbot"), True, id="ends-at-the-last-examined"
        ),
        pytest.param(USER_AGENT_CHARACTERS_EXAMINED - len("Mozilla/5.0  bingbo"), False, id="ends-one-past"),
        pytest.param(8000, False, id="after-8000-characters"),
    ],
)
def test_only_the_first_characters_of_a_user_agent_are_examined(padding, expected):
    """The cost of a request's bot check is bounded, whatever its User-Agent's length."""
    assert is_bot("Mozilla/5.0 " + "x" * padding + " bingbot/2.0") is expected


PATTERNS_AS_ONE_ALTERNATION = re.compile("|".join(f"(?:{entry['pattern']})" for entry in BOT_ENTRIES))
"""The list's patterns as written, tried one by one at each position: what the matcher must agree with."""
PATTERN_PIECES = sorted(
    {piece for entry in BOT_ENTRIES for piece in re.split(r"[\\^$()\[\]|*+?]", entry["pattern"]) if piece}
)


@given(st.lists(st.one_of(st.sampled_from(PATTERN_PIECES), st.text(max_size=4)), max_size=12).map("".join))
def test_the_compiled_matcher_finds_a_bot_exactly_where_the_patterns_do(text):
    assert (bot_pattern().search(text) is not None) == (PATTERNS_AS_ONE_ALTERNATION.search(text) is not None)


@pytest.mark.parametrize("pattern", sorted(GENERIC_HTTP_CLIENT_PATTERNS))
def test_each_trimmed_pattern_is_in_the_maintained_list(pattern):
    """A pattern renamed upstream would come back untrimmed: this says which one to update."""
    assert pattern in {entry["pattern"] for entry in crawleruseragents.CRAWLER_USER_AGENTS_DATA}


@pytest.mark.parametrize("user_agent", GENERIC_HTTP_CLIENTS[:-1])
def test_generic_http_clients_are_bots_in_the_untrimmed_list(user_agent):
    """What the trimming changes: without it, a backend's events would all count as bots."""
    assert crawleruseragents.is_crawler(user_agent) is True


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Sec-Purpose": "prefetch"}, id="sec-purpose-prefetch"),
        pytest.param({"Sec-Purpose": "prefetch;prerender"}, id="sec-purpose-prerender"),
        pytest.param({"Sec-Purpose": "prefetch; anonymous-client-ip"}, id="sec-purpose-private-prefetch"),
        pytest.param({"Purpose": "prefetch"}, id="purpose-prefetch"),
        pytest.param({"Purpose": "Prefetch", "User-Agent": BROWSERS[0]}, id="purpose-any-case"),
    ],
)
def test_prefetch_is_neither_a_person_nor_a_bot(headers):
    assert sender(headers) is Sender.PREFETCH


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({"User-Agent": BROWSERS[0]}, Sender.PERSON, id="browser"),
        pytest.param({"User-Agent": BOTS[0]}, Sender.BOT, id="bot"),
        pytest.param({}, Sender.PERSON, id="no-user-agent"),
        pytest.param({"User-Agent": BROWSERS[0], "Sec-Purpose": "prerender"}, Sender.PERSON, id="other-purpose"),
    ],
)
def test_sender_of_a_request(headers, expected):
    assert sender(headers) is expected
