"""The run's results: targets, the text table, the JSON document and the plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import user_agents
from bench.single import CASES
from bench.workload import Throughput

RAW_CASE = "raw_memcached"
REDIS_CASE = "redis_list"
CYCLE_CASE = "queue_cycle"
PLOTTED_CASES = {
    CYCLE_CASE: ("queue write_multi+read_multi", "tab:blue"),
    RAW_CASE: ("raw memcached set+get+delete", "tab:gray"),
    REDIS_CASE: ("Redis LPUSH+RPOP count", "tab:red"),
}
"""Plotted case: (legend label, colour); the line style tells the message size apart."""
SIZE_STYLES = ("-o", "--s", ":^")


def ratio(results: list[Throughput], case: str, reference: str, batch: int, size: int) -> float | None:
    """``case`` msg/s over ``reference`` msg/s at the same batch and message size."""
    by_key = {(run.case, run.batch, run.message_bytes): run.per_second for run in results}
    numerator, denominator = by_key.get((case, batch, size)), by_key.get((reference, batch, size))
    return round(numerator / denominator, 3) if numerator is not None and denominator else None


def throughput_rows(results: list[Throughput]) -> list[dict[str, Any]]:
    return [
        {**run.as_dict(), "to_raw_memcached": ratio(results, run.case, RAW_CASE, run.batch, run.message_bytes)}
        for run in results
    ]


@dataclass(frozen=True)
class Target:
    name: str
    value: float | None
    """None: not measured in this run (a batch size or part left out)."""
    limit: float
    at_least: bool
    """True: value must reach ``limit``; False: it must not exceed it."""

    @property
    def met(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "limit": self.limit, "at_least": self.at_least, "met": self.met}


def targets(
    results: list[Throughput],
    calls: dict[str, Any],
    http: dict[str, Any],
    storage: dict[str, Any],
) -> list[Target]:
    """The throughput targets (ratios for each message size measured), the bot check's bound on
    /track, then the cache-call and round-trip targets."""
    sizes = sorted({run.message_bytes for run in results})

    def cycle_versus(reference: str, label: str, batch: int, limit: float) -> list[Target]:
        return [
            Target(
                f"queue cycle / {label}, batch {batch}, {size} B",
                ratio(results, CYCLE_CASE, reference, batch, size),
                limit,
                at_least=True,
            )
            for size in sizes
        ]

    connections = http["wrk"]["connections"]
    measure = storage["target_measure"]
    return [
        *cycle_versus(RAW_CASE, "raw memcached", 100, 1.5),
        *cycle_versus(RAW_CASE, "raw memcached", 10, 1.0),
        *cycle_versus(REDIS_CASE, "Redis list", 100, 1.0),
        Target(
            f"/track / no-op inside wrap_wsgi_app, req/s, {connections} connections",
            http["track_to_noop_wrapped"],
            0.8,
            at_least=True,
        ),
        Target(
            f"cache calls per /track event, {connections} connections (memcached commands)",
            http["track_cache_calls"]["commands_per_event"],
            0.25,
            at_least=False,
        ),
        Target("/track p50 - no-op (wrapped) p50, ms", http["track_p50_over_noop_wrapped_ms"], 5, at_least=False),
        Target(
            f"/track req/s, new {http['track_user_agents']['hostile_user_agent_characters']}-character User-Agents "
            "/ a browser's",
            http["track_user_agents"]["hostile_to_ordinary"],
            0.8,
            at_least=True,
        ),
        Target(
            f"memcache bytes per stored {storage['message_bytes']} B message / raw per-key ({measure})",
            storage["queue_to_raw"][measure],
            0.6,
            at_least=False,
        ),
        Target("cache calls per write", calls["write"], 2, at_least=False),
        Target("cache calls per read_multi(100)", calls["read_multi_100"], 4, at_least=False),
        Target("cache calls per write_multi+read_multi of 100", calls["cycle_100"], 6, at_least=False),
        Target("round trips per write", calls["round_trips"]["write"], 2, at_least=False),
        Target("round trips per write_multi+read_multi of 100", calls["round_trips"]["cycle_100"], 4, at_least=False),
        Target("round trips per lease(100)+ack", calls["round_trips"]["lease_ack_100"], 4, at_least=False),
    ]


def counting_targets(counting: dict[str, Any]) -> list[Target]:
    """The counting targets: writes per event (with the records' pruning), the hottest
    entity, counting against recording, ``python main.py`` under load, ``/stats``."""
    zipf, uniform = counting["writes_per_event"]
    hot, server, stats = counting["hottest_entity"], counting["local_server"], counting["stats"]
    return [
        Target(
            f"entity writes per counted event, {zipf['workload']}, {zipf['events']:,} events",
            zipf["per_event_with_pruning"],
            0.05,
            at_least=False,
        ),
        Target(
            f"entity writes per counted event, {uniform['workload']}, {uniform['events']:,} events",
            uniform["per_event_with_pruning"],
            0.5,
            at_least=False,
        ),
        Target(
            f"most writes to one entity per second over any {hot['window_seconds']} s, "
            f"{hot['events_per_second']:,} events/s",
            hot["writes_per_second"],
            1,
            at_least=False,
        ),
        Target(
            "counting (/process + /fold) events/s / /track events/s, one process",
            zipf["process_and_fold_to_track"],
            0.25,
            at_least=True,
        ),
        Target(
            f"python main.py, {server['connections']} connections: answered/s / /track alone",
            server["answered_to_track_alone"],
            0.6,
            at_least=True,
        ),
        Target("python main.py: counted / answered, once settled", server["counted_to_answered"], 0.95, at_least=True),
        Target(f"/stats p50 with {stats['items']:,} items counted, ms", stats["p50_ms"], 200, at_least=False),
    ]


def _format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def render_text(document: dict[str, Any]) -> str:
    """The human-readable report of a run: one table per section."""
    rows = document["throughput"]
    batches = sorted({row["batch"] for row in rows})
    sections = []
    for size in sorted({row["message_bytes"] for row in rows}):
        cells: dict[str, dict[int, str]] = {}
        for row in rows:
            if row["message_bytes"] == size:
                share = row["to_raw_memcached"]
                cells.setdefault(row["case"], {})[row["batch"]] = (
                    f"{row['per_second']:,.0f} ({share:.2f}x)" if share is not None else f"{row['per_second']:,.0f}"
                )
        table = _format_table(
            [f"{size} B messages, msg/s (x raw)", *(f"batch {b}" for b in batches)],
            [[case, *(cells[case].get(b, "-") for b in batches)] for case in CASES if case in cells],
        )
        sections.append(table)
    calls = document["cache_calls"]
    sections.append(
        _format_table(
            ["cache calls (CountingCache)", "per operation", "round trips"],
            [
                [name, f"{value:g}", f"{calls['round_trips'][name]:g}" if name in calls.get("round_trips", {}) else "-"]
                for name, value in calls.items()
                if isinstance(value, (int, float))
            ],
        )
        + "\ncycle_100 by method: "
        + ", ".join(f"{method} {count:g}" for method, count in calls["cycle_100_by_method"].items())
    )
    sections.append(
        _format_table(
            [
                "shards",
                "writers+readers",
                "msg/s",
                "write msg/s",
                "incr/msg",
                "incr per counter key",
                "max key incr/s",
                "cas/read",
                "retried",
                "lost",
                "evictions",
                "read=written",
            ],
            [
                [
                    str(run["shards"]),
                    f"{run['writers']}+{run['readers']}",
                    f"{run['per_second']:,.0f}",
                    f"{run['write_per_second']:,.0f}",
                    f"{run['incr_per_message']:.3f}",
                    "/".join(str(count) for count in run["incr_per_counter_key"]),
                    f"{run['max_counter_key_incr_per_second']:,.0f}",
                    f"{run['cas_per_read_multi']:.2f}",
                    str(run["retried"]),
                    str(run["lost"]),
                    str(run["evictions"]),
                    "yes"
                    if run["messages_read"] == run["messages_written"]
                    else f"NO {run['messages_read']}/{run['messages_written']}",
                ]
                for run in document["multiprocess"]
            ],
        )
    )
    sections += [
        http_section(document["http"]),
        storage_section(document["storage"]),
        end_to_end_section(document["end_to_end"]),
        counting_section(document["counting"]),
        targets_section(document["targets"]),
    ]
    return "\n\n".join(sections) + "\n"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}ms"


def http_section(http: dict[str, Any]) -> str:
    """req/s and latency of each app; the ratios, the latency difference, and /track's cache commands."""
    calls = http["track_cache_calls"]
    commands = calls["memcached_commands"]
    by_counter = ", ".join(f"{name} {count}" for name, count in commands.items() if name != "total" and count)
    table = _format_table(
        ["HTTP GET /track?type=click&item=x", "req/s", "requests", "non-2xx", "socket errors", "p50", "p99"],
        [
            [
                name,
                f"{http[name]['per_second']:,.0f}",
                str(http[name]["requests"]),
                str(http[name]["non_2xx"]),
                str(http[name]["socket_errors"]),
                _ms(http["latency_ms"][name]["p50"]),
                _ms(http["latency_ms"][name]["p99"]),
            ]
            for name in ("noop", "noop_wrapped", "track")
        ],
    )
    ratios = (
        f"/track / no-op: {http['track_to_noop']:.2f}x req/s, p50 {http['track_p50_over_noop_ms']:+.1f} ms; "
        f"/track / no-op wrapped: {http['track_to_noop_wrapped']:.2f}x req/s, "
        f"p50 {http['track_p50_over_noop_wrapped_ms']:+.1f} ms (medians of the rounds)"
    )
    cache = (
        f"/track cache calls: {_number(calls['commands_per_event'])} memcached commands per event (median of "
        f"the rounds); in all {commands['total']} for {calls['events']} events = "
        f"{_number(calls['commands_per_event_overall'])} ({by_counter}); "
        f"{_number(calls['events_per_shared_write'])} events per shared write"
    )
    user_agent_line = user_agents.describe(http["track_user_agents"])
    return f"{table}\n{ratios}\n{cache}\n{user_agent_line}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def storage_section(storage: dict[str, Any]) -> str:
    """Bytes per stored message, the queue's frames against one key per message."""
    measures = ("bytes", "chunk_bytes", "total_malloced")
    rows = [
        [
            f"{name} ({'write_multi' if name == 'queue' else 'set_many'} of {storage['batch']})",
            f"{storage[name]['items']:,}",
            _number(storage[name]["messages_per_item"]),
            *(f"{storage[name][f'{measure}_per_message']:,.1f}" for measure in measures),
        ]
        for name in ("queue", "raw")
    ]
    rows.append(["queue / raw", "", "", *(f"{storage['queue_to_raw'][measure]:.3f}x" for measure in measures)])
    return (
        _format_table(
            [
                f"memcached, {storage['messages']:,} messages of {storage['message_bytes']} B",
                "items",
                "msg/item",
                "bytes/msg",
                "chunk bytes/msg",
                "malloced/msg",
            ],
            rows,
        )
        + f"\ntarget measure: {storage['target_measure']}"
    )


def end_to_end_section(end_to_end: dict[str, Any]) -> str:
    """Each level: what was answered and counted, how fast, and the lag to /stats."""
    rows = [
        [
            level["level"] + (f" {level['rate']:g}/s" if level["rate"] is not None else ""),
            level["load"]["client"],
            f"{level['answered']:,}",
            f"{level['counted']:,}" + ("" if level["complete"] else " (NOT ALL)"),
            f"{level['answered_per_second']:,.0f}",
            f"{level['end_to_end_per_second']:,.0f}",
            f"{level['counted_per_second_during_load']:,.0f}",
            f"{level['tail_seconds']:.1f}s",
            _ms(level["load"]["latency_p50_ms"]),
            _ms(level["lag_ms"]["p50"]),
            _ms(level["lag_ms"]["p99"]),
            f"{level['markers']['seen']}/{level['markers']['answered']}",
            f"{level['server_cpu_per_second']['during_load']:.2f}/{level['server_cpu_per_second']['in_tail']:.2f}",
        ]
        for level in end_to_end["levels"]
    ]
    return _format_table(
        [
            f"end to end, {end_to_end['seconds']:g} s of load",
            "client",
            "answered",
            "counted",
            "answered/s",
            "counted/s",
            "during load",
            "tail",
            "/track p50",
            "lag p50",
            "lag p99",
            "markers",
            "server CPU load/tail",
        ],
        rows,
    ) + ("" if end_to_end["warm_up_counted"] else "\nthe warm-up events were NOT counted")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def counting_section(counting: dict[str, Any]) -> str:
    """Writes per event and the rates of each in-process run, the hottest entity, the
    processors, ``/stats``, and ``python main.py`` under load."""
    runs = counting["writes_per_event"]
    writes = _format_table(
        [
            "counting in one process (stubs)",
            "events",
            "items seen",
            "writes",
            "per event",
            "+ pruning",
            "commits",
            "largest",
            "/track ev/s",
            "/process ev/s",
            "+ /fold ev/s",
            "exact",
        ],
        [
            [
                run["workload"],
                f"{run['events']:,}",
                f"{run['distinct_items']:,}",
                f"{run['writes']:,}",
                f"{run['per_event']:g}",
                f"{run['per_event_with_pruning']:g}",
                str(run["commits"]),
                str(run["largest_commit"]),
                _rate(run["per_second"]["track"]),
                _rate(run["per_second"]["process"]),
                _rate(run["per_second"]["process_and_fold"]),
                "yes" if run["exact"] else "NO",
            ]
            for run in runs
        ],
    )
    kinds = "\n".join(
        f"writes by kind, {run['workload']}: " + ", ".join(f"{kind} {count}" for kind, count in run["by_kind"].items())
        + f"; pruning deletes {run['pruning_deletes']}"
        for run in runs
    )
    hot = counting["hottest_entity"]
    hottest = (
        f"at {hot['events_per_second']:,} events/s for {hot['seconds']} s (simulated clock): the entity written most, "
        f"{hot['entity']}, {hot['writes_in_window']} times in {hot['window_seconds']} s = "
        f"{hot['writes_per_second']:g}/s; {hot['per_event']:g} writes per event; "
        f"exact: {'yes' if hot['exact'] else 'NO'}"
    )
    processors = _format_table(
        ["processors (threads)", "events", "recorded/s", "counted/s", "events each", "fold commits", "exact"],
        [
            [
                str(run["processors"]),
                f"{run['events']:,}",
                _rate(run["recorded_per_second"]),
                _rate(run["per_second"]),
                "/".join(str(count) for count in run["processed_by"]),
                str(run["folds"]),
                "yes" if run["exact"] else "NO",
            ]
            for run in counting["processors"]
        ],
    )
    stats, server = counting["stats"], counting["local_server"]
    lines = (
        f"/stats on python main.py with {stats['items']:,} items counted: p50 {_ms(stats['p50_ms'])}, "
        f"slowest {_ms(stats['max_ms'])} of {stats['requests']}; counted {stats['counted']:,}\n"
        f"python main.py, {server['level']} ({server['connections']} connections): "
        f"{_rate(server['answered_per_second'])} answered/s = {_number(server['answered_to_track_alone'])}x "
        f"/track alone ({_rate(server['track_alone_per_second'])}/s); counted {server['counted']:,} of "
        f"{server['answered']:,} answered = {_number(server['counted_to_answered'])}"
        + ("" if server["complete"] else " (NOT all counted in time)")
    )
    return f"{writes}\n{kinds}\n{hottest}\n\n{processors}\n{lines}"


def targets_section(targets_run: list[dict[str, Any]]) -> str:
    return _format_table(
        ["target", "value", "limit", "result"],
        [
            [
                target["name"],
                _number(target["value"]),
                (">= " if target["at_least"] else "<= ") + f"{target['limit']:g}",
                {True: "met", False: "MISSED", None: "not measured"}[target["met"]],
            ]
            for target in targets_run
        ],
    )


def plot(document: dict[str, Any], path: Path) -> None:
    """Six panels: the single-process cycle against batch size (log-log), /track against the
    no-op apps, memcache bytes per message, the end-to-end levels, and counting: writes
    per event, and events/s counted against recorded."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, panels = pyplot.subplots(3, 2, figsize=(14, 14))
    _plot_throughput(panels[0][0], document["throughput"])
    _plot_http(panels[0][1], document["http"])
    _plot_storage(panels[1][0], document["storage"])
    _plot_end_to_end(panels[1][1], document["end_to_end"])
    _plot_counting_writes(panels[2][0], document["counting"])
    _plot_counting_rates(panels[2][1], document["counting"])
    machine = document["machine"]
    figure.suptitle(
        f"clickqueue benchmark, load average {machine['load_average_at_start']:.1f} at start, "
        f"{machine.get('load_average_at_end', 0):.1f} at end, {machine['cores']} cores"
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    pyplot.close(figure)


def _plot_throughput(axes: Any, rows: list[dict[str, Any]]) -> None:
    """Messages/s against batch size (log-log): the queue cycle, raw memcached and Redis."""
    from matplotlib import ticker

    sizes = sorted({row["message_bytes"] for row in rows})
    for case, (label, colour) in PLOTTED_CASES.items():
        for index, size in enumerate(sizes):
            points = sorted(
                (row["batch"], row["per_second"])
                for row in rows
                if row["case"] == case and row["message_bytes"] == size
            )
            batches, rates = zip(*points, strict=True)
            axes.plot(batches, rates, SIZE_STYLES[index % len(SIZE_STYLES)], color=colour, label=f"{label}, {size} B")
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xticks(sorted({row["batch"] for row in rows}))
    axes.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:,.0f}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xlabel("batch size (messages per call)")
    axes.set_ylabel("messages/s")
    axes.set_title("Write+read cycle in one process on loopback", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)


def _bar_labels(axes: Any, bars: Any, labels: list[str]) -> None:
    for bar, label in zip(bars, labels, strict=True):
        axes.annotate(
            label,
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=7,
            xytext=(0, 2),
            textcoords="offset points",
        )


def _plot_http(axes: Any, http: dict[str, Any]) -> None:
    """req/s of each app, p50 and p99 latency written on the bars."""
    apps = ("noop", "noop_wrapped", "track")
    bars = axes.bar(apps, [http[app]["per_second"] for app in apps], color=["tab:gray", "tab:olive", "tab:blue"])
    _bar_labels(
        axes,
        bars,
        [
            f"{http[app]['per_second']:,.0f} req/s\np50 {_ms(http['latency_ms'][app]['p50'])}"
            f"\np99 {_ms(http['latency_ms'][app]['p99'])}"
            for app in apps
        ],
    )
    calls = http["track_cache_calls"]
    axes.set_ylabel("requests/s")
    axes.set_ylim(0, max(bar.get_height() for bar in bars) * 1.35)
    axes.set_title(
        f"GET /track under gunicorn, wrk {http['wrk']['connections']} connections: "
        f"{http['track_to_noop_wrapped']:.2f}x no-op wrapped,\n"
        f"{_number(calls['commands_per_event'])} memcached commands per event",
        fontsize=10,
    )


def _plot_storage(axes: Any, storage: dict[str, Any]) -> None:
    """Bytes per stored message, queue against raw, in each measure."""
    measures = ("bytes", "chunk_bytes", "total_malloced")
    width = 0.38
    for offset, (name, colour) in enumerate((("queue", "tab:blue"), ("raw", "tab:gray"))):
        values = [storage[name][f"{measure}_per_message"] for measure in measures]
        bars = axes.bar(
            [index + (offset - 0.5) * width for index in range(len(measures))],
            values,
            width,
            color=colour,
            label=f"{name} ({storage[name]['messages_per_item']:g} messages per item)",
        )
        _bar_labels(axes, bars, [f"{value:,.0f}" for value in values])
    axes.set_xticks(range(len(measures)))
    axes.set_xticklabels(
        [f"{measure}\n(queue {storage['queue_to_raw'][measure]:.2f}x raw)" for measure in measures], fontsize=8
    )
    axes.set_ylabel("bytes per stored message")
    axes.set_title(
        f"memcached memory per {storage['message_bytes']} B message, {storage['messages']:,} messages", fontsize=10
    )
    axes.legend(fontsize=7)


def _plot_end_to_end(axes: Any, end_to_end: dict[str, Any]) -> None:
    """answered/s and counted/s of each level, lag written on the bars."""
    levels = end_to_end["levels"]
    width = 0.38
    names = [level["level"] for level in levels]
    answered = [level["answered_per_second"] for level in levels]
    counted = [level["end_to_end_per_second"] for level in levels]
    axes.bar(
        [index - width / 2 for index in range(len(levels))],
        answered,
        width,
        color="tab:gray",
        label="answered /track per s",
    )
    bars = axes.bar(
        [index + width / 2 for index in range(len(levels))],
        counted,
        width,
        color="tab:green",
        label="counted in Datastore per s (load start to all counted)",
    )
    _bar_labels(
        axes,
        bars,
        [
            f"{level['end_to_end_per_second']:,.0f}/s\nlag p50 {_ms(level['lag_ms']['p50'])}"
            f"\np99 {_ms(level['lag_ms']['p99'])}" + ("" if level["complete"] else "\nNOT ALL COUNTED")
            for level in levels
        ],
    )
    axes.set_xticks(range(len(levels)))
    axes.set_xticklabels(
        [f"{name}\n{level['load']['client']}" for name, level in zip(names, levels, strict=True)], fontsize=8
    )
    axes.set_ylabel("events/s")
    axes.set_ylim(0, max([*answered, *counted, 1]) * 1.35)
    axes.set_title(f"End to end on python main.py, {end_to_end['seconds']:g} s of load per level", fontsize=10)
    axes.legend(fontsize=7, loc="upper left")


def _plot_counting_writes(axes: Any, counting: dict[str, Any]) -> None:
    """Entity writes per event (pruning included) of each run, each against its target."""
    from matplotlib import ticker

    runs = counting["writes_per_event"]
    hot = counting["hottest_entity"]
    labels = [f"{run['workload']}\nall posted, then counted" for run in runs]
    labels.append(f"{hot['workload']}\n{hot['events_per_second']:,} events/s, sustained")
    values = [run["per_event_with_pruning"] for run in runs] + [hot["per_event"]]
    bars = axes.bar(range(len(values)), values, color=["tab:blue", "tab:purple", "tab:cyan"])
    _bar_labels(axes, bars, [f"{value:g}" for value in values])
    limits = [target.limit for target in counting_targets(counting)[: len(runs)]]
    for index, limit in enumerate(limits):
        axes.hlines(limit, index - 0.4, index + 0.4, color="tab:red", linestyle=":")
        axes.annotate(f"target {limit:g}", (index, limit), ha="center", va="bottom", fontsize=7)
    axes.set_yscale("log")
    axes.set_ylim(top=max(*values, *limits) * 3)
    axes.yaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    axes.yaxis.set_minor_formatter(ticker.NullFormatter())
    axes.set_xticks(range(len(values)))
    axes.set_xticklabels(labels, fontsize=8)
    axes.set_ylabel("entity writes per counted event (log)")
    axes.set_title(
        f"Counting's Datastore writes per event (pruning included)\nthe entity written most: "
        f"{hot['writes_per_second']:g} writes/s over {hot['window_seconds']} s "
        f"at {hot['events_per_second']:,} events/s",
        fontsize=10,
    )


def _plot_counting_rates(axes: Any, counting: dict[str, Any]) -> None:
    """Events/s recorded and counted: in one process, on N processor threads, and on python main.py under load."""
    zipf, server = counting["writes_per_event"][0], counting["local_server"]
    bars = {
        "/track\n(in process)": (zipf["per_second"]["track"], "tab:gray"),
        "/process\n(in process)": (zipf["per_second"]["process"], "tab:green"),
        "/process\n+ /fold": (zipf["per_second"]["process_and_fold"], "tab:green"),
        **{
            f"{run['processors']} thread{'s' * (run['processors'] > 1)}\nrecorded": (
                run["recorded_per_second"],
                "tab:olive",
            )
            for run in counting["processors"]
        },
        "main.py\nanswered": (server["answered_per_second"], "tab:blue"),
        "/track alone\n(gunicorn)": (server["track_alone_per_second"], "tab:gray"),
    }
    drawn = axes.bar(range(len(bars)), [value or 0 for value, _ in bars.values()], color=[c for _, c in bars.values()])
    _bar_labels(axes, drawn, [_rate(value) for value, _ in bars.values()])
    axes.set_xticks(range(len(bars)))
    axes.set_xticklabels(list(bars), fontsize=7)
    axes.set_ylim(0, max(value or 0 for value, _ in bars.values()) * 1.15)
    axes.set_ylabel("events/s (main.py and /track alone: requests/s)")
    axes.set_title(
        f"Counting against recording: {_number(zipf['process_and_fold_to_track'])}x in one process;\n"
        f"python main.py answered {_number(server['answered_to_track_alone'])}x /track alone "
        f"and counted {_number(server['counted_to_answered'])} of it",
        fontsize=10,
    )
