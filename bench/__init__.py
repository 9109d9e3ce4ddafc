"""Benchmarks of clickqueue: run as ``python -m bench`` (``--help`` lists the knobs).

One run starts its own memcached, Redis and gunicorn servers on free loopback
ports, measures the queue against raw memcached and Redis in the same run,
counts cache calls per operation, loads several writer and reader processes
on one memcached per shard count, and compares the app's ``/track`` with a
no-op handler over HTTP. ``python -m bench.profile`` shows where the time
goes. BENCHMARKS.md has a real run and its analysis.
"""
