"""Entity writes through the Datastore API, counted as Datastore bills them: each entity
a Put or a Delete writes, once its commit is sent (a write outside a transaction, at once).

It hooks the API proxy, so it sees every stub (the SDK's, the local server's) in this
process; the tests of the count store and the benchmark's "counting" figures use it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def _entity_path(key) -> str:
    """``Kind:name/Kind:id`` of an entity key proto."""
    return "/".join(f"{element.type}:{element.name or element.id}" for element in key.path.element)


class DatastoreWrites:
    """Entity writes as ``(clock() when sent, entity path)``, and the entities of each commit."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.writes: list[tuple[float, str]] = []
        self.commit_sizes: list[int] = []
        """Entities each commit (or write outside a transaction) wrote, in order."""
        self._pending: defaultdict[int, list[str]] = defaultdict(list)

    def hook(self, service, call, request, response, rpc) -> None:
        if call in ("Put", "Delete"):
            keys = [entity.key for entity in request.entity] if call == "Put" else list(request.key)
            paths = [_entity_path(key) for key in keys]
            if request.HasField("transaction"):
                self._pending[request.transaction.handle] += paths
            else:
                self._land(paths)
        elif call == "Commit":
            # The stub's handle is id() of an object: a later transaction can reuse an ended one's.
            self._land(self._pending.pop(request.handle, []))
        elif call == "Rollback":
            self._pending.pop(request.handle, None)

    def _land(self, paths: list[str]) -> None:
        if paths:
            now = self.clock()
            self.writes += [(now, path) for path in paths]
            self.commit_sizes.append(len(paths))

    def clear(self) -> None:
        self.writes.clear()
        self.commit_sizes.clear()

    def paths(self) -> list[str]:
        """Every entity written, sorted (one entry per write)."""
        return sorted(path for _, path in self.writes)

    def by_entity(self) -> Counter[str]:
        return Counter(path for _, path in self.writes)

    def most_in_window(self, window_seconds: float) -> tuple[str | None, int]:
        """The entity written most often within any ``window_seconds``, and how often."""
        times: defaultdict[str, list[float]] = defaultdict(list)
        for at, path in self.writes:
            times[path].append(at)
        worst: tuple[str | None, int] = (None, 0)
        for path, moments in times.items():
            moments.sort()
            first = 0
            for last, moment in enumerate(moments):
                while moment - moments[first] >= window_seconds:
                    first += 1
                if last - first + 1 > worst[1]:
                    worst = (path, last - first + 1)
        return worst


@contextmanager
def recording(clock: Callable[[], float] = time.time) -> Iterator[DatastoreWrites]:
    """Record the Datastore writes made in this process while the block runs. It ends
    with every pre-call hook cleared: the API proxy has no way to remove one alone."""
    from google.appengine.api import apiproxy_stub_map

    writes = DatastoreWrites(clock)
    hooks = apiproxy_stub_map.apiproxy.GetPreCallHooks()
    hooks.Append("clickqueue-datastore-writes", writes.hook, "datastore_v3")
    try:
        yield writes
    finally:
        hooks.Clear()
