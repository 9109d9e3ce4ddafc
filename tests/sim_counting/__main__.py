"""``python -m tests.sim_counting``: run seeds of the counting protocol's simulation, replay one, or soak.

    python -m tests.sim_counting --seeds 0-99 [--protocol NAME] [--only stall+lost-ack]
    python -m tests.sim_counting --trace SEED_OR_TOKEN     # one run, every step printed
    python -m tests.sim_counting --minutes 30              # soak: seeds from --seeds' first on

Exits 1 if any seed failed; the first failure is reported and shrunk.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter

from tests.sim.seeds import from_seed, parse_seeds, run_seeds
from tests.sim_counting.faults import FaultKind
from tests.sim_counting.protocol import PROTOCOLS
from tests.sim_counting.runner import RunSpec, describe_faults, describe_seen, failure_report, parse_kinds, run, shrink


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.sim_counting", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-99", help="0-99, or 3,17,40 (default 0-99)")
    parser.add_argument("--protocol", choices=list(PROTOCOLS), default="real", help="the real one, or a broken variant")
    parser.add_argument(
        "--only",
        type=parse_kinds,
        metavar="KIND+KIND",
        help=f"switch on these fault kinds and no other ({', '.join(kind.value for kind in FaultKind)})",
    )
    parser.add_argument("--trace", metavar="SEED_OR_TOKEN", help="replay one run and print every step")
    parser.add_argument("--minutes", type=float, help="soak: run seeds until this much time has passed")
    parser.add_argument("--no-shrink", action="store_true", help="report failures without shrinking them")
    parser.add_argument("--stop-at-first", action="store_true", help="stop at the first failing seed")
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # ndb logs each transaction a fault failed; the trace says it
    if args.trace:
        result = run(RunSpec.parse(args.trace, args.protocol, args.only), keep_trace=True)
        if result.failed:
            print("\n".join(failure_report(result, "FAILED", full_trace=True)))
            return 1
        print("\n".join(result.trace.format(result.trace.entries)))
        print(f"seed {result.spec.seed} passed ({result.steps} steps, faults: {result.fault_counts()})")
        return 0
    seeds = parse_seeds(args.seeds)
    faults: Counter = Counter()
    seen: Counter = Counter()

    def run_seed(seed: int):
        result = run(RunSpec(seed, args.protocol, only=args.only))
        faults.update(fault.kind.value for fault in result.injected)
        seen.update(result.seen)
        return result

    def report_first(result) -> None:
        print("\n".join(failure_report(result, "FAILURE")), flush=True)
        if not args.no_shrink:
            print("shrinking...", flush=True)
            smallest = shrink(result, progress=lambda line: print("  " + line, flush=True))
            print("\n".join(failure_report(smallest, "MINIMAL")), flush=True)

    done = run_seeds(
        from_seed(seeds[0]) if args.minutes is not None else seeds,
        run_seed,
        report_first,
        args.minutes,
        args.stop_at_first,
    )
    print(done.summary(f"protocol {args.protocol}"))
    print(f"what happened: {describe_seen(seen)}\nfaults injected: {describe_faults(faults)}")
    return 1 if done.failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
