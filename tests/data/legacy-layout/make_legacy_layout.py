"""Writes datastore.db (the local server's Datastore file) with the counters layout the app
had before the count store, through that code's own ``apply_batch``, and reads.json, the
answers that code's reads gave. tests/test_legacy_counters.py migrates it.

Made with the app at commit d0de35f (the last with that layout):

    git archive d0de35f | tar -x -C /tmp/old && cd /tmp/old
    PYTHONPATH=. python tests/data/legacy-layout/make_legacy_layout.py OUT && gzip -9 OUT/datastore.db

It runs against that old code only (so it shares nothing with today's tests), and it
is kept to show how the fixture was made.
"""

import json
import random
import sys
from pathlib import Path

from google.appengine.api import apiproxy_stub_map
from google.appengine.ext import testbed

import devserver
from clicks import counters
from clicks.events import Event
from devserver.datastore import LocalDatastoreStub

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
path = out / "datastore.db"
path.unlink(missing_ok=True)
bed = testbed.Testbed()
bed.activate()
bed.setup_env(app_id=devserver.APP_ID, overwrite=True)
bed.init_memcache_stub()
stub = LocalDatastoreStub(devserver.APP_ID, path)
apiproxy_stub_map.apiproxy.RegisterStub("datastore_v3", stub)

rng = random.Random(2025)
START = 1_740_787_200  # 2025-03-01T00:00Z
items = [f"item-{n:03}" for n in range(40)] + ["a" * 128, "pricing", "blog:2024:hello-world"]
applied_at = START + 3 * 86400
for batch in range(12):
    applied_at += 60  # each batch marked a minute after the one before (the markers' applied_at)
    counters.time.time = lambda at=applied_at: at
    events = {}
    for n in range(rng.randint(1, 80)):
        at = START + rng.randrange(0, 3 * 86400) if rng.random() < 0.9 else START - rng.randrange(1, 40 * 86400)
        events[f"{batch}-{n}"] = Event(rng.choice(("view",) * 8 + ("click",) * 2), rng.choice(items[: rng.randint(5, len(items))]), at=at, bot=rng.random() < 0.05)
    counters.apply_batch(f"lease-{batch}", events)
# A batch counted by this layout and not yet acked: its marker lists its messages.
counters.apply_batch("lease-in-flight", {"in-flight-1": Event("click", "pricing", at=START + 100), "in-flight-2": Event("view", "pricing", at=START + 100)})
reads = {
    "totals": counters.totals(),
    "top_items": counters.top_items(),
    "items": {item: counters.item_counts(item) for item in items},
    "series": {},
}
for item in (None, "pricing", "item-001", "a" * 128):
    for bucket, start, end in (("hour", START, START + 3 * 86400), ("day", START - 40 * 86400, START + 3 * 86400)):
        reads["series"][f"{item or '*'}/{bucket}"] = counters.series(item, bucket, start, end)
stub.save()
bed.deactivate()
(out / "reads.json").write_text(json.dumps(reads, indent=1, sort_keys=True) + "\n")
print(path.stat().st_size, "bytes;", reads["totals"])
