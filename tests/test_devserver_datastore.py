"""The local server's Datastore stub: saved on demand, not on every commit, and
still transactional (a transaction whose group changed under it fails)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.appengine.api import apiproxy_stub_map, datastore_errors
from google.appengine.ext import ndb
from google.appengine.ext import testbed as testbed_module

import devserver
from tests.support.counting import count_now, keyed
from clicks import counters
from clicks.events import Event
from devserver.datastore import LocalDatastoreStub


class Tally(ndb.Model):
    count = ndb.IntegerProperty(default=0)


@pytest.fixture
def open_datastore() -> Iterator:
    """``open_datastore(path)``: a LocalDatastoreStub on ``path``, registered as Datastore
    (in place of the one opened before: a restart)."""
    beds = []

    def open_at(path: Path) -> LocalDatastoreStub:
        if beds:
            beds.pop().deactivate()
        bed = testbed_module.Testbed()
        bed.activate()
        bed.setup_env(app_id=devserver.APP_ID, overwrite=True)
        bed.init_memcache_stub()
        stub = LocalDatastoreStub(devserver.APP_ID, path)
        apiproxy_stub_map.apiproxy.RegisterStub("datastore_v3", stub)
        ndb.get_context().clear_cache()
        beds.append(bed)
        return stub

    yield open_at
    if beds:
        beds.pop().deactivate()


def test_a_missing_file_is_an_empty_datastore_without_a_warning(open_datastore, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        open_datastore(tmp_path / "datastore.db")

    assert counters.totals() == {"click": 0, "view": 0, "bots": 0, "ctr": None}
    assert caplog.records == []


def test_commits_are_written_by_save_not_before(open_datastore, tmp_path):
    path = tmp_path / "datastore.db"
    stub = open_datastore(path)

    count_now("batch-1", keyed([Event("click", "a")]))
    written_before_save = path.exists()
    saved = stub.save()

    assert (written_before_save, saved, path.exists()) == (False, True, True)


def test_save_without_changes_writes_nothing(open_datastore, tmp_path):
    stub = open_datastore(tmp_path / "datastore.db")
    count_now("batch-1", keyed([Event("click", "a")]))
    stub.save()

    assert stub.save() is False


def test_saved_data_is_there_after_a_restart(open_datastore, tmp_path):
    path = tmp_path / "datastore.db"
    stub = open_datastore(path)
    count_now("batch-1", keyed([Event("click", "a"), Event("view", "b")]))
    stub.save()

    open_datastore(path)

    assert (counters.totals(), counters.top_items()) == (
        {"click": 1, "view": 1, "bots": 0, "ctr": 1.0},
        [
            {"item": "a", "click": 1, "view": 0, "bots": 0, "ctr": None},
            {"item": "b", "click": 0, "view": 1, "bots": 0, "ctr": 0.0},
        ],
    )


def test_transaction_fails_when_its_group_changed_under_it(open_datastore, tmp_path):
    open_datastore(tmp_path / "datastore.db")
    key = ndb.Key(Tally, "t")
    Tally(key=key).put()

    request_environment = dict(os.environ)

    def increment() -> None:
        tally = key.get()
        tally.count += 1
        tally.put()

    def concurrent_request() -> None:
        # The SDK's os.environ is per request; on Python 3.13 a new thread starts with an empty one.
        os.environ.update(request_environment)
        ndb.transactional()(increment)()

    @ndb.transactional(retries=0)
    def increment_after_a_concurrent_one() -> None:
        tally = key.get()
        other = threading.Thread(target=concurrent_request)
        other.start()
        other.join()
        tally.count += 1
        tally.put()

    with pytest.raises(datastore_errors.TransactionFailedError):
        increment_after_a_concurrent_one()
    ndb.get_context().clear_cache()
    assert key.get().count == 1
