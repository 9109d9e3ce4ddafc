"""``python -m tests.sim``: run seeds, replay one with its full trace, or soak for a while.

    python -m tests.sim --seeds 0-199 [--preset NAME]
    python -m tests.sim --trace SEED_OR_TOKEN      # one run, every step printed
    python -m tests.sim --minutes 30               # soak: seeds from --seeds' first on, until time is up

Exits 1 if any seed failed; the first failure is reported and shrunk.
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.sim.runner import RunSpec, failure_report, parse_seeds, run, shrink
from tests.sim.swarm import PRESETS

PROGRESS_EVERY_SECONDS = 10.0
SHOWN_FAILING_SEEDS = 30


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-199", help="0-199, or 3,17,40 (default 0-199)")
    parser.add_argument("--preset", choices=list(PRESETS), default="swarm")
    parser.add_argument("--trace", metavar="SEED_OR_TOKEN", help="replay one run and print every step")
    parser.add_argument("--minutes", type=float, help="soak: run seeds until this much time has passed")
    parser.add_argument("--no-shrink", action="store_true", help="report failures without shrinking them")
    parser.add_argument("--stop-at-first", action="store_true", help="stop at the first failing seed")
    args = parser.parse_args(argv)
    if args.trace:
        return _trace(RunSpec.parse(args.trace, args.preset))
    seeds = parse_seeds(args.seeds)
    if args.minutes is not None:
        seeds = _endless(seeds[0])
    return _run_seeds(seeds, args)


def _trace(spec: RunSpec) -> int:
    result = run(spec, keep_trace=True)
    if not result.failed:
        print("\n".join(result.trace.format(result.trace.entries)))
        print(f"seed {spec.seed} passed ({result.steps} steps, {len(result.injected)} faults): {spec.token()}")
        return 0
    print("\n".join(failure_report(result, "FAILED", full_trace=True)))
    return 1


def _endless(first: int):
    seed = first
    while True:
        yield seed
        seed += 1


def _run_seeds(seeds, args: argparse.Namespace) -> int:
    started = last_progress = time.monotonic()
    deadline = None if args.minutes is None else started + args.minutes * 60
    done = steps = 0
    failures = []
    for seed in seeds:
        if deadline is not None and time.monotonic() >= deadline:
            break
        result = run(RunSpec(seed, args.preset))
        done += 1
        steps += result.steps
        if result.failed:
            failures.append(result)
            print(f"seed {seed} FAILED: {result.violations[0]}", flush=True)
            if len(failures) == 1:
                _report_first(result, shrink_it=not args.no_shrink)
            if args.stop_at_first:
                break
        now = time.monotonic()
        if now - last_progress >= PROGRESS_EVERY_SECONDS:
            last_progress = now
            print(
                f"[{now - started:6.0f}s] {done} seeds done, {len(failures)} failed, "
                f"{steps / (now - started):.0f} steps/s",
                flush=True,
            )
    elapsed = time.monotonic() - started
    print(
        f"{done} seeds (preset {args.preset}) in {elapsed:.0f}s, {steps} steps "
        f"({steps / max(elapsed, 1e-9):.0f} steps/s): {len(failures)} failed" + _failing_seeds(failures)
    )
    return 1 if failures else 0


def _failing_seeds(failures: list) -> str:
    if not failures:
        return ""
    shown = ", ".join(str(result.spec.seed) for result in failures[:SHOWN_FAILING_SEEDS])
    return f": seeds {shown}{', ...' if len(failures) > SHOWN_FAILING_SEEDS else ''}"


def _report_first(result, shrink_it: bool) -> None:
    print("\n".join(failure_report(result, "FAILURE")), flush=True)
    if shrink_it:
        print("shrinking...", flush=True)
        smallest = shrink(result, progress=lambda line: print("  " + line, flush=True))
        print("\n".join(failure_report(smallest, "MINIMAL")), flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
