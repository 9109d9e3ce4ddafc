"""``python -m tests.sim``: run seeds, replay one with its full trace, or soak for a while.

    python -m tests.sim --seeds 0-199 [--preset NAME]
    python -m tests.sim --trace SEED_OR_TOKEN      # one run, every step printed
    python -m tests.sim --minutes 30               # soak: seeds from --seeds' first on, until time is up

Exits 1 if any seed failed; the first failure is reported and shrunk.
"""

from __future__ import annotations

import argparse
import sys

from tests.sim.runner import RunSpec, failure_report, run, shrink
from tests.sim.seeds import from_seed, parse_seeds, run_seeds
from tests.sim.swarm import PRESETS


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
    done = run_seeds(
        from_seed(seeds[0]) if args.minutes is not None else seeds,
        lambda seed: run(RunSpec(seed, args.preset)),
        lambda result: _report_first(result, shrink_it=not args.no_shrink),
        args.minutes,
        args.stop_at_first,
    )
    print(done.summary(f"preset {args.preset}"))
    return 1 if done.failed else 0


def _trace(spec: RunSpec) -> int:
    result = run(spec, keep_trace=True)
    if not result.failed:
        print("\n".join(result.trace.format(result.trace.entries)))
        print(f"seed {spec.seed} passed ({result.steps} steps, {len(result.injected)} faults): {spec.token()}")
        return 0
    print("\n".join(failure_report(result, "FAILED", full_trace=True)))
    return 1


def _report_first(result, shrink_it: bool) -> None:
    print("\n".join(failure_report(result, "FAILURE")), flush=True)
    if shrink_it:
        print("shrinking...", flush=True)
        smallest = shrink(result, progress=lambda line: print("  " + line, flush=True))
        print("\n".join(failure_report(smallest, "MINIMAL")), flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
