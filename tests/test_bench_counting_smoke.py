"""The benchmark's "counting" section at small sizes: every measure runs, counts every
event exactly, and reports the documented shape; its text and targets render.

Durations and rates are never asserted, nor is any target met (BENCHMARKS.md reports
them from real runs); counts are, exactly.
"""

from __future__ import annotations

import os

import pytest

from bench.counting import (
    CountingRun,
    CountsNotExactError,
    MeasureFailedError,
    in_own_process,
    local_server,
    run_counting,
)
from bench.report import counting_section, counting_targets

SMALL = CountingRun(
    events=400,
    zipf_items=20,
    uniform_items=2_000,
    post_batch=50,
    events_per_second=40,
    sustained_seconds=11,
    processors=[1, 2],
    stats_items=300,
    stats_requests=2,
)
KINDS = {"CountedBatch", "CountShard", "PeriodTotals", "RankedItems", "LegacyMigration"}


@pytest.fixture(scope="module")
def counting():
    steps: list[str] = []
    results = run_counting(SMALL, steps.append)
    assert len(steps) == SMALL.steps()
    return results


def test_each_writes_run_counts_every_event_posted_exactly_once(counting):
    zipf, uniform = counting["writes_per_event"]

    assert (zipf["zipf"], uniform["zipf"]) == (True, False)
    assert (zipf["items"], uniform["items"]) == (SMALL.zipf_items, SMALL.uniform_items)
    for run in (zipf, uniform):
        assert run["events"] == run["counted"] == SMALL.events and run["exact"] is True
        assert 0 < run["distinct_items"] <= run["items"]


def test_each_writes_run_reports_its_writes_by_kind_and_per_event(counting):
    for run in counting["writes_per_event"]:
        assert set(run["by_kind"]) <= KINDS and sum(run["by_kind"].values()) == run["writes"] > 0
        assert run["per_event"] == round(run["writes"] / run["events"], 5)
        assert 0 < run["pruning_deletes"] <= run["by_kind"]["CountedBatch"]
        assert run["per_event_with_pruning"] == round((run["writes"] + run["pruning_deletes"]) / run["events"], 5)
        assert 0 < run["largest_commit"] <= run["writes"] and run["commits"] > 0
        assert set(run["per_second"]) == {"track", "process", "process_and_fold"}
        assert set(run["cpu_seconds"]) == set(run["seconds"]) == {"/track", "/process", "/fold"}


def test_the_sustained_run_names_the_entity_written_most_and_counts_exactly(counting):
    hot = counting["hottest_entity"]

    assert hot["events"] == hot["counted"] == SMALL.events_per_second * SMALL.sustained_seconds
    assert hot["exact"] is True and hot["seconds"] == SMALL.sustained_seconds
    assert hot["entity"].startswith("PeriodTotals:all") and hot["writes_in_window"] >= 1
    assert hot["writes_per_second"] == round(hot["writes_in_window"] / hot["window_seconds"], 2)


def test_every_processor_count_takes_every_event_once(counting):
    runs = counting["processors"]

    assert [run["processors"] for run in runs] == SMALL.processors
    for run in runs:
        assert len(run["processed_by"]) == run["processors"]
        assert sum(run["processed_by"]) == run["counted"] == run["events"] == SMALL.events
        assert run["exact"] is True and run["folds"] >= 1 and run["recorded_seconds"] <= run["seconds"]


def test_stats_is_timed_on_a_datastore_holding_every_item_filled_in(counting):
    stats = counting["stats"]

    assert stats["counted"] == stats["items"] == SMALL.stats_items and stats["exact"] is True
    assert stats["requests"] == SMALL.stats_requests and 0 < stats["p50_ms"] <= stats["max_ms"]


def loaded_server(answered_per_second: float, answered: int, counted: int, track_alone: float) -> dict:
    """``local_server`` of an end-to-end part whose saturating level answered and counted so much."""
    level = {
        "level": "saturating",
        "connections": 64,
        "answered_per_second": answered_per_second,
        "answered": answered,
        "counted": counted,
        "complete": True,
    }
    return local_server({"track": {"per_second": track_alone}}, {"levels": [level]})


def test_local_server_figures_divide_the_loaded_level_by_track_alone_and_answered():
    figures = loaded_server(600.0, answered=6_000, counted=5_700, track_alone=1_000.0)

    assert figures["answered_to_track_alone"] == 0.6 and figures["counted_to_answered"] == 0.95


def test_the_section_renders_and_every_target_is_judged(counting):
    document = {**counting, "local_server": loaded_server(1.0, answered=1, counted=1, track_alone=2.0)}

    text = counting_section(document)
    targets = counting_targets(document)

    for run in counting["writes_per_event"]:
        assert run["workload"] in text
    assert counting["hottest_entity"]["entity"] in text
    assert len(targets) == 7 and all(target.met is not None for target in targets)


def counts_wrong() -> dict:
    raise CountsNotExactError("3 events counted of 4")


def dies() -> dict:
    os._exit(3)


def test_a_measure_that_raises_fails_the_run_with_its_error():
    with pytest.raises(MeasureFailedError, match="CountsNotExactError: 3 events counted of 4"):
        in_own_process(counts_wrong)


def test_a_measure_whose_process_dies_fails_the_run_with_its_exit_code():
    with pytest.raises(MeasureFailedError, match="exit code 3"):
        in_own_process(dies)
