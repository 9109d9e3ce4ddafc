"""queue.json, the local server's queue kept with its Datastore: written aside and renamed,
taken only with the Datastore version it was saved with, restored as it was."""

from __future__ import annotations

import time

import pytest
from google.appengine.api import memcache
from google.appengine.ext import testbed as testbed_module

from devserver.queue_file import LocalDataError, QueueFile, SavedEntry, SavedQueue, copy_queue_entries, restore

NOW = 2_000_000_000.0
ENTRIES = [
    SavedEntry("cq:events:state", b'{"generation": 1}', "bytes", 0.0),
    SavedEntry("cq:events:w:0", b"40", "int", 0.0),
    SavedEntry("cq:events:m:0:7", b"\x00tombstone", "bytes", NOW + 3600),
]


def saved(version: int, entries: list[SavedEntry] = ENTRIES) -> SavedQueue:
    return SavedQueue(version, NOW, True, {"written": 40}, entries)


def write(queue_file: QueueFile, queue: SavedQueue, *, committed: bool) -> None:
    queue_file.write_next(queue)
    if committed:
        queue_file.commit_next()


def test_a_saved_queue_reads_back_as_it_was_written(tmp_path):
    queue_file = QueueFile(tmp_path)
    write(queue_file, saved(7), committed=True)

    assert queue_file.load(7) == saved(7)
    assert not queue_file.next_path.exists()


def test_a_first_start_has_no_saved_queue(tmp_path):
    assert QueueFile(tmp_path).load(7) is None


def test_a_save_that_ended_between_its_two_renames_is_taken_whole(tmp_path):
    """datastore.db was renamed into place (version 8); queue.json still holds version 7's queue."""
    queue_file = QueueFile(tmp_path)
    write(queue_file, saved(7), committed=True)
    write(queue_file, saved(8, ENTRIES[:2]), committed=False)

    assert queue_file.load(8) == saved(8, ENTRIES[:2])
    assert (queue_file.path.read_bytes(), queue_file.next_path.exists()) == (saved(8, ENTRIES[:2]).to_bytes(), False)


@pytest.mark.parametrize(
    "next_bytes",
    [pytest.param(saved(8).to_bytes(), id="of-a-datastore-never-renamed"), pytest.param(b'{"form', id="cut-short")],
)
def test_a_save_that_ended_before_its_datastore_was_renamed_is_dropped(tmp_path, next_bytes):
    queue_file = QueueFile(tmp_path)
    write(queue_file, saved(7), committed=True)
    queue_file.next_path.write_bytes(next_bytes)

    assert queue_file.load(7) == saved(7)
    assert not queue_file.next_path.exists()


def test_a_queue_saved_with_another_datastore_stops_the_start(tmp_path):
    queue_file = QueueFile(tmp_path)
    write(queue_file, saved(7), committed=True)

    with pytest.raises(LocalDataError, match=r"saved with another datastore.db .* \(Datastore version 7, not 9\)"):
        queue_file.load(9)


def test_restored_entries_keep_their_values_and_when_they_expire(testbed):
    now = time.time()  # the stub's clock
    entries = [
        *ENTRIES[:2],
        SavedEntry("cq:events:m:0:7", b"\x00tombstone", "bytes", now + 3600),
        SavedEntry("cq:events:m:0:8", b"\x00taken", "bytes", now - 1),
    ]

    restored = restore(entries, now)

    copied, foreign = copy_queue_entries(testbed.get_stub(testbed_module.MEMCACHE_SERVICE_NAME), "cq:events:")
    by_key = {entry.key: entry for entry in copied}
    assert (restored, foreign, sorted(by_key)) == (3, 0, ["cq:events:m:0:7", "cq:events:state", "cq:events:w:0"])
    assert (by_key["cq:events:state"].value, by_key["cq:events:state"].expires_at) == (b'{"generation": 1}', 0.0)
    assert by_key["cq:events:m:0:7"].value == b"\x00tombstone"
    assert now + 3600 <= by_key["cq:events:m:0:7"].expires_at < now + 3600 + 1  # whole seconds, rounded up
    assert memcache.incr("cq:events:w:0") == 41  # a counter again


def test_values_the_queue_never_writes_are_neither_copied_nor_unpickled(testbed):
    memcache.set("cq:events:m:0:1", {"a pickled": "dict"})

    stub = testbed.get_stub(testbed_module.MEMCACHE_SERVICE_NAME)
    assert copy_queue_entries(stub, "cq:events:") == ([], 1)
