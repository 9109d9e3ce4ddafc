"""A tour of the clickqueue library: write two events, lease them as one batch, read the counts.

Install the library with an extra (from a checkout: ``pip install ".[memcached]"``
or ``".[appengine]"``; or run from the checkout's root with ``PYTHONPATH=.``).
Against a memcached at HOST:PORT, from ``--memcached`` or the ``MEMCACHED``
variable (default 127.0.0.1:11211)::

    python3 examples/library_tour.py --memcached 127.0.0.1:11211

Against App Engine memcache, here the SDK's stub (the ``appengine`` extra)::

    python3 examples/library_tour.py --appengine-stub

Each run uses a queue of its own, so its counts start at zero. tests/test_examples.py
runs both ways and checks the output; CI runs it from the installed wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from clickqueue import Queue


def tour(queue: Queue) -> None:
    queue.write_multi([{"type": "click", "item": "a"}, {"type": "view", "item": "a"}])  # 2 cache calls
    with queue.lease(max_items=100, seconds=60) as batch:  # acked when the block ends without error
        assert batch.messages == [{"type": "click", "item": "a"}, {"type": "view", "item": "a"}]
        print(f"lease attempt {batch.attempt}: {json.dumps(batch.messages)}")
    stats = queue.stats()
    assert (stats.written, stats.read, stats.lost, stats.depth) == (2, 2, 0, 0), stats
    print(f"stats: {json.dumps(stats.as_dict())}")


def memcached_queue(name: str, address: str) -> Queue:
    """A queue on the memcached at ``host:port``, through a pymemcache client."""
    from pymemcache.client.base import Client

    host, port = address.rsplit(":", 1)
    return Queue(name, client=Client((host, int(port)), timeout=5))


@contextmanager
def appengine_memcache_stub() -> Iterator[None]:
    """The SDK's memcache stub, in place of App Engine's service, for this process."""
    from google.appengine.ext import testbed

    bed = testbed.Testbed()
    bed.activate()
    bed.init_memcache_stub()
    try:
        yield
    finally:
        bed.deactivate()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--memcached", metavar="HOST:PORT", default=os.environ.get("MEMCACHED", "127.0.0.1:11211"))
    parser.add_argument("--appengine-stub", action="store_true", help="use the App Engine SDK's memcache stub")
    options = parser.parse_args()
    name = f"library-tour-{uuid.uuid4().hex}"
    if options.appengine_stub:
        with appengine_memcache_stub():
            tour(Queue(name))  # no client: App Engine memcache
    else:
        tour(memcached_queue(name, options.memcached))


if __name__ == "__main__":
    main()
