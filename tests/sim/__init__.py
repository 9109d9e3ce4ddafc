"""Deterministic simulation of clickqueue under the fault model (FoundationDB / VOPR style).

Many simulated processes (``parties``), each with a real ``clickqueue.Queue``
and its own skewed clock, share one simulated memcache (``simcache``) through
the cache interface the library's adapters implement (``views``). A seeded ``scheduler``
interleaves them one cache call at a time; a seeded ``faults`` plan injects
the fault model at call time (evictions, flushes, node restarts, nodes dead
for one party, failed calls, lost replies, partial batches, foreign values,
killed processes, moved clocks); ``swarm`` picks which faults and operations
each seed uses; the ``oracle`` checks G1-G5 against its own log after every
step; the ``runner`` runs the chaos and liveness phases, reports and shrinks
failures. Same seed, same run, bit for bit.

    python -m tests.sim --seeds 0-199 --preset appengine-rpc-errors
    python -m tests.sim --trace 17
"""
