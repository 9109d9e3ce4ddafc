"""Signed tracked links: the app redirects only to URLs its admins signed (no open redirect).

``/go?item=ID&to=URL&sig=SIG`` counts a click and redirects to URL only if SIG
is the HMAC-SHA256 of (item, URL) under the app's link key.

The key is ``CLICKQUEUE_LINK_KEY`` if set (at least 32 characters: set it where
the deployment keeps secrets, never in the repository), else 32 random bytes
made on first use and kept in Datastore (``LinkKey``). Changing it voids every
link signed before.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import threading
from urllib.parse import urlencode, urlsplit

from google.appengine.ext import ndb

from clicks.http_errors import InvalidRequestError, quote_prefix

LINK_KEY_ENV = "CLICKQUEUE_LINK_KEY"
MIN_KEY_CHARACTERS = 32
MAX_TARGET_CHARACTERS = 1024
"""The longest URL a link may go to: percent-encoded in /go's query it stays
within the app's URL limit (2,048 bytes) for ordinary URLs."""


class LinkKey(ndb.Model):
    """The key that signs tracked links, made on first use (entity ``LinkKey/links``)."""

    key_bytes = ndb.BlobProperty(required=True)


class LinkSigner:
    """Signs and checks links with the app's key: ``configured_key``, else the one
    kept in Datastore (read once per process, made on first use)."""

    def __init__(self, configured_key: bytes | None = None) -> None:
        self._key = configured_key
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls) -> LinkSigner:
        """With ``CLICKQUEUE_LINK_KEY``'s key if it is set; ValueError, at start, if it is not a key."""
        return cls(_configured_key())

    def key(self) -> bytes:
        with self._lock:
            if self._key is None:
                self._key = _stored_key()
            return self._key

    def signature(self, item: str, target: str) -> str:
        digest = hmac.new(self.key(), f"{item}\n{target}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def check(self, item: str, target: str, signature: str | None) -> None:
        """Refuse (400) unless ``signature`` signs this item and target."""
        if signature is None:
            raise InvalidRequestError("sig is missing: only links signed by this app's admins redirect")
        if not hmac.compare_digest(signature.encode(), self.signature(item, target).encode()):
            raise InvalidRequestError("sig does not match item and to: only links signed by this app's admins redirect")

    def link(self, base_url: str, item: str, target: str) -> str:
        """The tracked link (``base_url`` is the app's, such as ``https://APP``)."""
        query = urlencode({"item": item, "to": target, "sig": self.signature(item, target)})
        return f"{base_url}/go?{query}"


def _configured_key() -> bytes | None:
    configured = os.environ.get(LINK_KEY_ENV)
    if configured is None:
        return None
    if len(configured) < MIN_KEY_CHARACTERS:
        raise ValueError(
            f"{LINK_KEY_ENV} holds {len(configured)} characters; a link key needs at least {MIN_KEY_CHARACTERS} "
            "(or leave it unset: the app then makes one and keeps it in Datastore)"
        )
    return configured.encode()


def _stored_key() -> bytes:
    # get_or_insert is a transaction: two processes making the first key agree on one.
    return LinkKey.get_or_insert("links", key_bytes=secrets.token_bytes(32)).key_bytes


def parse_target(value: str | None) -> str:
    """``value`` if it is an absolute http(s) URL a link may go to."""
    if value is None:
        raise InvalidRequestError("to is missing: give the URL the link goes to")
    try:
        parts = urlsplit(value)
    except ValueError:  # such as a bracketed host that is not an IPv6 address
        parts = None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or len(value) > MAX_TARGET_CHARACTERS
        or not value.isascii()
        or any(character.isspace() or not character.isprintable() for character in value)
    ):
        raise InvalidRequestError(
            f"to must be an absolute http or https URL of at most {MAX_TARGET_CHARACTERS} characters, "
            f"in ASCII (percent-encode the rest) and without spaces; got {quote_prefix(value)}"
        )
    return value
