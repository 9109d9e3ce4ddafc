"""Deterministic simulation of the counting commit protocol (clicks/counting.py), beside the queue's (tests/sim).

Several processors each lease batches (``leases``: clickqueue's lease
contract) and record them with the real ``count_batch``; one or two fold
tasks call the real ``fold``; all on the SDK's Datastore stub, every RPC
through a seam (``datastore``) where a seeded scheduler (tests/sim's baton
threads) interleaves the parties one RPC at a time and a seeded plan
(``faults``) injects conflicts, timeouts, commits that applied and then
failed, stalls, killed processes, lost acks and redeliveries. Small store
limits make shards split. The ``oracle`` checks that every read the app
offers ends equal to the events delivered at least once. Same seed, same run.

    python -m tests.sim_counting --seeds 0-99
    python -m tests.sim_counting --trace 17
"""
