"""What the queue's simulation and the counting protocol's (tests/sim_counting) share:
a run written as one token, shrinking a failing run, and running many seeds.

A simulation's run spec has a ``seed``, ``chaos_steps`` (None: the seed's own)
and ``faults`` (None: the seed's own; else exactly these ``step``/``kind``
faults); its result has ``spec``, ``violations``, ``injected``, ``steps`` and
``swarm.chaos_steps``. Both simulations' are, so one shrink serves both.
"""

from __future__ import annotations

import enum
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

MAX_SHRINK_RUNS = 150
PROGRESS_EVERY_SECONDS = 10.0


# -- a run as one token ------------------------------------------------------------------------


def spec_token(spec: Any, name_field: str) -> str:
    """``seed=5,<name_field>=NAME[,steps=N][,faults=STEP:KIND+...]`` for ``spec``."""
    parts = [f"seed={spec.seed}", f"{name_field}={getattr(spec, name_field)}"]
    if spec.chaos_steps is not None:
        parts.append(f"steps={spec.chaos_steps}")
    if spec.faults is not None:
        parts.append("faults=" + "+".join(f"{fault.step}:{fault.kind.value}" for fault in spec.faults))
    return ",".join(parts)


def parse_spec(token: str, name_field: str, default_name: str, kinds: type[enum.Enum], planned: type) -> dict:
    """The fields of a run spec from a seed number (with ``default_name``) or a ``spec_token``."""
    if token.isdigit():
        return {"seed": int(token), name_field: default_name}
    fields = dict(part.split("=", 1) for part in token.split(","))
    faults = None
    if "faults" in fields:
        faults = tuple(
            planned(int(step), kinds(kind))
            for step, kind in (item.split(":", 1) for item in fields["faults"].split("+") if item)
        )
    return {
        "seed": int(fields["seed"]),
        name_field: fields.get(name_field, default_name),
        "chaos_steps": int(fields["steps"]) if "steps" in fields else None,
        "faults": faults,
    }


def parse_seeds(text: str) -> list[int]:
    """``0-199`` or ``3,17,40`` (or both: ``0-9,40``)."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)-(\d+)", part)
        seeds += list(range(int(match[1]), int(match[2]) + 1)) if match else [int(part)]
    return seeds


# -- shrinking -----------------------------------------------------------------------------------


def shrink(result: Any, rerun: Callable[[Any], Any], progress: Callable[[str], None] = lambda line: None) -> Any:
    """The smallest run found that still violates the same check: replay exactly the faults
    injected (the same run), cut the chaos phase at the failing step, halve it while it
    still fails, then delta-debug the fault list (chunks, then single faults)."""
    check = result.violations[0].check
    if not result.injected:
        progress("no faults were injected: nothing to remove, the run is its own smallest case")
        return result
    runs = 0

    def still_fails(spec: Any) -> Any:
        nonlocal runs
        runs += 1
        attempt = rerun(spec)
        return attempt if any(violation.check == check for violation in attempt.violations) else None

    best = still_fails(replace(result.spec, faults=tuple(result.injected)))
    if best is None:
        progress("replaying the injected faults does not fail again: not shrunk")
        return result
    first_step = best.violations[0].step
    if first_step < best.swarm.chaos_steps:
        best = still_fails(replace(best.spec, chaos_steps=first_step)) or best
    while runs < MAX_SHRINK_RUNS and best.swarm.chaos_steps > 1:
        faults = best.spec.faults or ()
        shorter = best.swarm.chaos_steps // 2
        if any(fault.step > shorter for fault in faults):
            break
        smaller = still_fails(replace(best.spec, chaos_steps=shorter))
        if smaller is None:
            break
        best = smaller
    faults = list(best.spec.faults or ())
    chunk = max(1, len(faults) // 2)
    while chunk >= 1 and runs < MAX_SHRINK_RUNS:
        index = 0
        while index < len(faults) and runs < MAX_SHRINK_RUNS:
            candidate = faults[:index] + faults[index + chunk :]
            smaller = still_fails(replace(best.spec, faults=tuple(candidate)))
            if smaller is not None:
                best, faults = smaller, candidate
            else:
                index += chunk
        chunk //= 2
    progress(
        f"shrunk in {runs} replays: {len(result.injected)} -> {len(faults)} faults, "
        f"{result.steps} -> {best.steps} steps"
    )
    return best


# -- reports -------------------------------------------------------------------------------------


def failure_report(
    result: Any, title: str, heading: str, facts: list[str], module: str, subjects: str, full_trace: bool = False
) -> list[str]:
    """A failed run: its seed, swarm and first violations, ``facts`` (a line each), the trace
    (all of it, or the faults, the lines about the ``subjects`` the violation names and the
    last steps), and the command that replays it (``python -m <module> --trace ...``)."""
    first = result.violations[0]
    lines = [
        f"{title}: seed {result.spec.seed} ({heading})",
        *("  " + line for line in result.swarm.describe().splitlines()),
        f"  violated: {first}",
        *(f"  also:     {violation}" for violation in result.violations[1:4]),
        *("  " + fact for fact in facts),
    ]
    entries = result.trace.entries if full_trace else result.trace.relevant(first.subjects)
    lines.append("  trace (all steps):" if full_trace else f"  trace (faults, the {subjects} named, last steps):")
    lines += ["    " + line for line in result.trace.format(entries)]
    lines.append(f"  replay: python -m {module} --trace '{result.spec.token()}'")
    return lines


# -- many seeds ----------------------------------------------------------------------------------


@dataclass
class SeedsRun:
    seeds: int = 0
    steps: int = 0
    seconds: float = 0.0
    failed: list[int] | None = None

    def summary(self, what: str) -> str:
        failed = self.failed or []
        shown = ", ".join(map(str, failed[:30])) + (", ..." if len(failed) > 30 else "")
        return (
            f"{self.seeds} seeds ({what}) in {self.seconds:.0f}s, {self.steps} steps "
            f"({self.steps / max(self.seconds, 1e-9):.0f} steps/s): {len(failed)} failed"
            + (f": seeds {shown}" if failed else "")
        )


def from_seed(first: int) -> Iterator[int]:
    """Seeds from ``first`` on, for a soak that runs until its time is up."""
    seed = first
    while True:
        yield seed
        seed += 1


def run_seeds(
    seeds: Iterable[int],
    run_seed: Callable[[int], Any],
    report_first: Callable[[Any], None],
    minutes: float | None = None,
    stop_at_first: bool = False,
) -> SeedsRun:
    """Run each seed (until ``minutes`` have passed, when given); print each failure and
    progress every ``PROGRESS_EVERY_SECONDS``; ``report_first`` reports the first failure."""
    started = last_progress = time.monotonic()
    deadline = None if minutes is None else started + minutes * 60
    done = SeedsRun(failed=[])
    for seed in seeds:
        if deadline is not None and time.monotonic() >= deadline:
            break
        result = run_seed(seed)
        done.seeds += 1
        done.steps += result.steps
        if result.violations:
            done.failed.append(seed)
            print(f"seed {seed} FAILED: {result.violations[0]}", flush=True)
            if len(done.failed) == 1:
                report_first(result)
            if stop_at_first:
                break
        now = time.monotonic()
        if now - last_progress >= PROGRESS_EVERY_SECONDS:
            last_progress = now
            print(
                f"[{now - started:6.0f}s] {done.seeds} seeds done, {len(done.failed)} failed, "
                f"{done.steps / (now - started):.0f} steps/s",
                flush=True,
            )
    done.seconds = time.monotonic() - started
    return done
