"""An app deployed with the counters layout before the count store keeps its counts:
the migration copies them, page by page, exactly once, and every read answers as the
old code answered on the same data (tests/data/legacy-layout, written by that code)."""

from __future__ import annotations

import gzip
import json
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.appengine.api import apiproxy_stub_map
from google.appengine.ext import ndb
from google.appengine.ext import testbed as testbed_module

from tests.support.processes import APP_ID, REPO_ROOT
from clicks import counters, counting, legacy_counters
from clicks.events import Event
from devserver.datastore import LocalDatastoreStub

LEGACY = REPO_ROOT / "tests" / "data" / "legacy-layout"
READS = json.loads((LEGACY / "reads.json").read_text())
START = 1_740_787_200  # 2025-03-01T00:00Z, as make_legacy_layout.py
NOW = START + 10 * 86400


@pytest.fixture
def legacy_datastore(tmp_path) -> Iterator[Path]:
    """The stubs, with the local server's Datastore holding the old layout's data (a copy)."""
    path = tmp_path / "datastore.db"
    with gzip.open(LEGACY / "datastore.db.gz") as packed, path.open("wb") as unpacked:
        shutil.copyfileobj(packed, unpacked)
    bed = testbed_module.Testbed()
    bed.activate()
    bed.setup_env(app_id=APP_ID, overwrite=True)
    bed.init_memcache_stub()
    apiproxy_stub_map.apiproxy.RegisterStub("datastore_v3", LocalDatastoreStub(APP_ID, path))
    ndb.get_context().clear_cache()
    yield path
    bed.deactivate()


def migrate_and_fold(step_fails=lambda: False) -> int:
    """Run fold tasks (a page copied, then a fold) until nothing is left; a step that
    ``step_fails`` raises after its commit, as a task whose answer was lost. How many steps."""
    steps = 0
    while True:
        steps += 1
        copied = counting.migrate_legacy_page(NOW)
        if step_fails():
            continue
        report = counting.fold(NOW)
        if step_fails():
            continue
        ndb.get_context().clear_cache()  # the next task is another request
        if not copied and not report.more:
            return steps


def reads_now() -> dict:
    items = READS["items"]
    return {
        "totals": counters.totals(),
        "top_items": counters.top_items(),
        "items": {item: counters.item_counts(item) for item in items},
        "series": {
            name: counters.series(
                None if name.startswith("*/") else name.rsplit("/", 1)[0],
                name.rsplit("/", 1)[1],
                points[0]["start"],
                points[-1]["start"] + counters.BUCKET_SECONDS[name.rsplit("/", 1)[1]],
            )
            for name, points in READS["series"].items()
        },
    }


def test_migrated_counts_read_exactly_as_the_old_layout_read(legacy_datastore):
    migrate_and_fold()

    assert json.loads(json.dumps(reads_now())) == READS


def test_migration_repeated_after_every_commit_copies_each_page_once(legacy_datastore):
    rng = random.Random(7)

    migrate_and_fold(step_fails=lambda: rng.random() < 0.5)

    assert json.loads(json.dumps(reads_now())) == READS


def test_migration_resumes_where_a_restart_left_it(legacy_datastore):
    for _ in range(3):
        counting.migrate_legacy_page(NOW)
    pages_before_restart = legacy_counters.migration_key().get().pages
    ndb.get_context().clear_cache()

    migrate_and_fold()

    assert pages_before_restart == 3
    assert json.loads(json.dumps(reads_now())) == READS


def test_migration_of_a_datastore_without_old_counters_copies_nothing(testbed):
    assert counting.migrate_legacy_page(NOW) is False
    assert counting.unfolded_batches(10) == []
    assert legacy_counters.migration_key().get().done


def test_batch_the_old_layout_counted_counts_only_its_new_messages(legacy_datastore):
    migrate_and_fold()
    before = counters.item_counts("pricing")
    delivered_again = {
        "in-flight-1": Event("click", "pricing", at=START + 100),
        "in-flight-2": Event("view", "pricing", at=START + 100),
        "in-flight-3": Event("view", "pricing", at=START + 100),
    }

    recorded = counting.count_batch("lease-in-flight", delivered_again, NOW)
    counting.fold(NOW)

    assert recorded == 1
    assert counters.item_counts("pricing")["view"] == before["view"] + 1
    assert counters.item_counts("pricing")["click"] == before["click"]


def test_old_markers_applied_before_the_cutoff_are_pruned_and_later_ones_kept(legacy_datastore):
    markers = legacy_counters.AppliedBatch.query(ancestor=legacy_counters.root_key()).fetch()
    applied = sorted(counters.posix_seconds(marker.applied_at) for marker in markers)
    cutoff = applied[len(applied) // 2]

    pruned = legacy_counters.prune_markers(cutoff, limit=1000)

    left = legacy_counters.AppliedBatch.query(ancestor=legacy_counters.root_key()).fetch()
    assert pruned == sum(1 for at in applied if at < cutoff) > 0
    assert len(left) == len(markers) - pruned
    assert all(counters.posix_seconds(marker.applied_at) >= cutoff for marker in left)
