"""Benchmarks of clickqueue: run as ``python -m bench`` (``--help`` lists the knobs).

One run starts its own memcached, Redis and gunicorn servers on free loopback
ports, measures the queue against raw memcached and Redis in the same run,
counts cache calls per operation, loads several writer and reader processes
on one memcached per shard count, compares the app's ``/track`` with a no-op
handler over HTTP (req/s, p50/p99 latency, memcached commands per event),
measures memcache bytes per stored message against one key per message, and
runs ``python main.py`` end to end at two load levels (events/s counted in
Datastore, lag to ``/stats``), and measures counting on the SDK's stubs (Datastore
writes per event, the hottest entity, processors, ``/stats`` at 100,000 items).
It reports the throughput targets and the counting targets as met or missed.
``python -m bench.profile`` shows where the time goes. BENCHMARKS.md has the
runs and their analysis.
"""
