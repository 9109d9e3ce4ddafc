"""``python -m bench.placement``: the queue cycle against raw memcached, by where the processes run.

The same two cases as ``python -m bench`` (``queue_cycle`` and ``raw_memcached``,
interleaved in slices), in three placements: as the scheduler puts them, memcached
and this client on two different cores, and both on one core (memcached by
``taskset -c``, the client by ``os.sched_setaffinity``). On a VM whose idle
cores are woken for each reply, a round trip across cores costs far more than
on one core, and the cycle makes 4 round trips where raw memcached makes 3: the
ratio shows what round trips cost apart from the queue's own work.
"""

from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Iterator
from contextlib import closing, contextmanager

from pymemcache.client.base import Client

from bench import servers
from bench.single import CaseContext, queue_cycle, raw_memcached
from bench.workload import interleave

PLACEMENTS = {"scheduler": (None, None), "two cores": (1, 0), "one core": (0, 0)}
"""Name: (memcached's core, this client's core); None leaves it to the scheduler."""


@contextmanager
def memcached_on(core: int | None) -> Iterator[servers.Server]:
    port = servers.free_port()
    command = [servers.require_binary("memcached"), "-l", servers.HOST, "-p", str(port), "-U", "0", "-m", "1024"]
    if os.geteuid() == 0:
        command += ["-u", "root"]
    if core is not None:
        command = [servers.require_binary("taskset"), "-c", str(core), *command]
    with servers.running("memcached", command, port) as server:
        yield server


def measure(placement: str, batch: int, message_bytes: int, seconds: float) -> dict[str, float]:
    """msg/s of both cases in one placement (median of their slices)."""
    memcached_core, client_core = PLACEMENTS[placement]
    all_cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, all_cores if client_core is None else {client_core})
    try:
        with memcached_on(memcached_core) as server, closing(Client((servers.HOST, server.port))) as client:
            context = CaseContext("placement", batch, message_bytes, 10**9, client, None)
            with queue_cycle(context) as cycle, raw_memcached(context) as raw:
                tallies = interleave({"queue_cycle": cycle, "raw_memcached": raw}, 10**9, seconds, 0.05)
    finally:
        os.sched_setaffinity(0, all_cores)
    return {name: statistics.median(tally.rates) for name, tally in tallies.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--message-bytes", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds each case runs, per placement")
    args = parser.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        parser.error("needs 2 cores")
    print(f"batch {args.batch}, {args.message_bytes} B   queue cycle msg/s   raw memcached msg/s   ratio")
    for placement in PLACEMENTS:
        rates = measure(placement, args.batch, args.message_bytes, args.seconds)
        cycle, raw = rates["queue_cycle"], rates["raw_memcached"]
        print(f"{placement:<22} {cycle:>18,.0f} {raw:>21,.0f} {cycle / raw:>7.2f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
