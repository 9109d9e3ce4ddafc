"""The development server's queue, kept beside its Datastore: ``<data_dir>/queue.json``.

``python main.py`` holds memcache, and with it the queue of events accepted but
not yet counted, in its one worker process. So that a stop or a crash does not
throw them away, every save of Datastore (every few seconds, and at the stop)
also writes the queue's memcache keys, exactly as they are (values, and how
long each has to live), to this file, and the next start puts them back before
serving. The queue then carries on where it was: its messages, its leases (a
batch a processor held comes back under its own lease id, which the batch's
Datastore marker knows), its counters (``written``, ``lost``... in ``/stats``).

Datastore and the queue are saved as one: the queue's keys are copied while
Datastore's calls wait, and the file names the Datastore version (its last
commit's timestamp) it goes with. Restoring a queue with another Datastore
could count a batch twice or never, so a start refuses a pair that does not
match. The two files are each written beside their place and renamed into it,
the queue's last: after a crash between the two renames, ``queue.json.next``
matches the new Datastore and is taken.

JSON, never pickle: values are base64, and only values stored as bytes or
integers are kept (nothing the queue writes is anything else).
"""

from __future__ import annotations

import base64
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.appengine.api import memcache

from devserver import sdk

FORMAT = "clickqueue local queue 1"
FILE_NAME = "queue.json"
NEXT_SUFFIX = ".next"
MAX_RELATIVE_EXPIRY_SECONDS = 30 * 86400
"""memcache reads a longer expiry as an absolute Unix time."""
KEPT_FLAGS = {0: "bytes", memcache.TYPE_INT: "int", memcache.TYPE_LONG: "int"}
"""The memcache API's flags for values stored as bytes and as integers (counters)."""


class LocalDataError(Exception):
    """The data folder holds a queue file that does not go with its Datastore, or one unreadable."""


@dataclass(frozen=True)
class SavedEntry:
    """One memcache key of the queue, as it was when saved."""

    key: str
    value: bytes
    kind: str
    """``bytes`` or ``int``: how the memcache API stored it."""
    expires_at: float
    """Unix time; 0 for never."""

    def as_json(self) -> list:
        return [self.key, base64.b64encode(self.value).decode(), self.kind, self.expires_at]

    @classmethod
    def from_json(cls, row: list) -> SavedEntry:
        key, value, kind, expires_at = row
        return cls(key, base64.b64decode(value, validate=True), kind, float(expires_at))


def copy_queue_entries(memcache_stub: Any, prefix: str, *, hold: bool = False) -> tuple[list[SavedEntry], int]:
    """The live entries of the SDK's memcache stub whose key starts with ``prefix``, and how
    many of them were left out (values of another type: none the queue writes).

    Reads the stub's own table under its lock: while it runs, no memcache call
    completes. ``hold`` keeps that lock: no memcache call completes any more (the
    process is about to end, and nothing may be stored that this copy missed)."""
    entries, foreign = [], 0
    encoded_prefix = prefix.encode()
    sdk.memcache_lock(memcache_stub).acquire()
    try:
        for key, entry in sdk.memcache_table(memcache_stub).items():
            if not key.startswith(encoded_prefix) or entry.CheckExpired() or entry.CheckLocked():
                continue
            kind = KEPT_FLAGS.get(entry.flags)
            if kind is None:
                foreign += 1
                continue
            expires_at = entry.expiration_time if entry.will_expire else 0.0
            entries.append(SavedEntry(key.decode(), bytes(entry.value), kind, expires_at))
    finally:
        if not hold:
            sdk.memcache_lock(memcache_stub).release()
    return entries, foreign


def restore(entries: list[SavedEntry], now: float) -> int:
    """Put ``entries`` back into memcache (through its API), those not expired; how many."""
    by_expiry: dict[int, dict[str, bytes | int]] = {}
    for entry in entries:
        if entry.expires_at == 0:
            expiry = 0
        elif entry.expires_at <= now:
            continue
        elif entry.expires_at - now > MAX_RELATIVE_EXPIRY_SECONDS:
            expiry = int(entry.expires_at)
        else:
            expiry = math.ceil(entry.expires_at - now)
        by_expiry.setdefault(expiry, {})[entry.key] = int(entry.value) if entry.kind == "int" else entry.value
    restored = 0
    for expiry, values in by_expiry.items():
        not_stored = memcache.Client().set_multi(values, time=expiry)
        if not_stored:
            raise LocalDataError(
                f"memcache refused {len(not_stored)} of the queue's saved keys, such as {not_stored[0]}"
            )
        restored += len(values)
    return restored


@dataclass(frozen=True)
class SavedQueue:
    """What ``queue.json`` holds."""

    datastore_version: int
    saved_at: float
    stopped: bool
    """Written by an orderly stop (else by a save while serving: what came after it was lost)."""
    stats: Mapping[str, int]
    """The queue's counts as the save began: its entries hold at least these."""
    entries: list[SavedEntry]

    def to_bytes(self) -> bytes:
        document = {
            "format": FORMAT,
            "datastore_version": self.datastore_version,
            "saved_at": self.saved_at,
            "stopped": self.stopped,
            "stats": dict(self.stats),
            "entries": [entry.as_json() for entry in self.entries],
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> SavedQueue:
        document = json.loads(raw)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT!r} file")
        return cls(
            int(document["datastore_version"]),
            float(document["saved_at"]),
            bool(document["stopped"]),
            {name: int(count) for name, count in document["stats"].items()},
            [SavedEntry.from_json(row) for row in document["entries"]],
        )


class QueueFile:
    """``queue.json`` in ``data_dir``: written beside its place, then renamed into it."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE_NAME
        self.next_path = data_dir / (FILE_NAME + NEXT_SUFFIX)

    def write_next(self, saved: SavedQueue) -> None:
        """Write ``queue.json.next`` and flush it to disk; ``commit_next`` puts it in place."""
        with open(self.next_path, "wb") as file:
            file.write(saved.to_bytes())
            file.flush()
            os.fsync(file.fileno())

    def commit_next(self) -> None:
        os.replace(self.next_path, self.path)
        _sync_folder(self.path.parent)

    def load(self, datastore_version: int) -> SavedQueue | None:
        """The saved queue that goes with Datastore at ``datastore_version`` (None if there is
        none: a first start); ``queue.json.next`` if it is the one (the last save ended
        between its two renames). Leftovers of a save that never completed are removed."""
        newer, current = self._read(self.next_path), self._read(self.path)
        if newer is not None and newer.datastore_version == datastore_version:
            self.commit_next()
            return newer
        self.next_path.unlink(missing_ok=True)
        if current is None or current.datastore_version == datastore_version:
            return current
        raise LocalDataError(
            f"{self.path} was saved with another datastore.db than the one beside it (Datastore version "
            f"{current.datastore_version}, not {datastore_version}): put the pair back, or move "
            f"{self.path.name} away to start without the {len(current.entries)} queue keys it holds"
        )

    def _read(self, path: Path) -> SavedQueue | None:
        if not path.exists():
            return None
        try:
            return SavedQueue.from_bytes(path.read_bytes())
        except (ValueError, KeyError, TypeError) as error:
            if path == self.next_path:
                return None  # a save that died while writing it: queue.json is the last complete one
            raise LocalDataError(f"{path} cannot be read: {error}") from error


def _sync_folder(folder: Path) -> None:
    """Make the renames in ``folder`` durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)

