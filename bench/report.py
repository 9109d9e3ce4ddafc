"""The run's results: targets, the text table, the JSON document and the plot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    limit: float
    at_least: bool
    """True: value must reach ``limit``; False: it must not exceed it."""
    stretch: bool = False

    @property
    def met(self) -> bool:
        if self.value is None:
            return False
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "limit": self.limit,
            "at_least": self.at_least,
            "stretch": self.stretch,
            "met": self.met,
        }


def targets(results: list[Throughput], calls: dict[str, Any], http: dict[str, Any]) -> list[Target]:
    """Issue 4's targets; throughput ratios at the largest batch measured, for each message size."""
    largest = max(run.batch for run in results)
    sizes = sorted({run.message_bytes for run in results})

    def cycle_versus(reference: str, label: str, limit: float, stretch: bool) -> list[Target]:
        return [
            Target(
                f"queue cycle / {label}, batch {largest}, {size} B",
                ratio(results, CYCLE_CASE, reference, largest, size),
                limit,
                at_least=True,
                stretch=stretch,
            )
            for size in sizes
        ]

    return [
        *cycle_versus(RAW_CASE, "raw memcached", 0.8, stretch=False),
        Target("cache calls per write", calls["write"], 2, at_least=False),
        Target("cache calls per read_multi(100)", calls["read_multi_100"], 4, at_least=False),
        Target("cache calls per write_multi+read_multi of 100", calls["cycle_100"], 6, at_least=False),
        Target("/track req/s / no-op req/s", http["track_to_noop"], 0.7, at_least=True),
        *cycle_versus(REDIS_CASE, "Redis", 0.5, stretch=True),
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
            ["cache calls (CountingCache)", "per operation"],
            [[name, f"{value:g}"] for name, value in calls.items() if isinstance(value, (int, float))],
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
                    "yes"
                    if run["messages_read"] == run["messages_written"]
                    else f"NO {run['messages_read']}/{run['messages_written']}",
                ]
                for run in document["multiprocess"]
            ],
        )
    )
    http = document["http"]
    sections.append(
        _format_table(
            ["HTTP GET /track?type=click&item=x", "req/s", "requests", "non-2xx", "socket errors", "p99"],
            [
                [
                    name,
                    f"{http[name]['per_second']:,.0f}",
                    str(http[name]["requests"]),
                    str(http[name]["non_2xx"]),
                    str(http[name]["socket_errors"]),
                    str(http[name]["latency_p99"]),
                ]
                for name in ("noop", "noop_wrapped", "track")
            ]
            + [
                ["/track / no-op", f"{http['track_to_noop']:.2f}x", "", "", "", ""],
                ["/track / no-op wrapped", f"{http['track_to_noop_wrapped']:.2f}x", "", "", "", ""],
            ],
        )
    )
    sections.append(
        _format_table(
            ["target", "value", "limit", "result"],
            [
                [
                    target["name"] + (" (stretch)" if target["stretch"] else ""),
                    "-" if target["value"] is None else f"{target['value']:g}",
                    (">= " if target["at_least"] else "<= ") + f"{target['limit']:g}",
                    "met" if target["met"] else "MISSED",
                ]
                for target in document["targets"]
            ],
        )
    )
    return "\n\n".join(sections) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Messages/s against batch size (log-log): the queue cycle, raw memcached and Redis."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot, ticker

    figure, axes = pyplot.subplots(figsize=(8, 5))
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
    axes.set_title("Write+read cycle in one process on loopback: clickqueue, raw memcached, Redis")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
