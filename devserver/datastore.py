"""The development server's Datastore: the SDK's file-backed stub, saved on a timer."""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from google.appengine.api import datastore_file_stub, datastore_types

from devserver import APP_ROOT, sdk


class LocalDatastoreStub(sdk.DatastoreFileStubHooks, datastore_file_stub.DatastoreFileStub):
    """The SDK's file-backed Datastore stub, saved on a timer instead of on every commit.

    The SDK stub rewrites its whole file after every commit (its ``Write``),
    and copies a whole entity group at the start of every transaction: with
    every counter in one group, both grow with the data and drain throughput
    falls as items accumulate. Here ``Write`` only notes the change and
    ``save`` writes the file; a transaction reads its group through a live
    view instead of a copy. Both rely on this stub running one call at a time:
    a save then never sees half a commit, and a transaction whose group
    changed under it still fails its commit on the stub's own log check.
    """

    def __init__(self, app_id: str, datastore_file: Path) -> None:
        self._call_lock = threading.RLock()  # the stub calls itself to create indexes
        self._unsaved = False
        super().__init__(
            app_id,
            str(datastore_file),
            require_indexes=True,  # a query without its index.yaml entry fails here as on App Engine
            root_path=str(APP_ROOT),
            save_changes=True,
            use_atexit=False,
        )

    def MakeSyncCall(self, service, call, request, response, request_id=None) -> None:  # noqa: N802 (SDK name)
        with self._call_lock:
            super().MakeSyncCall(service, call, request, response, request_id)

    def Read(self) -> None:  # noqa: N802
        if Path(sdk.datastore_file(self)).exists():  # the SDK warns of a missing file
            super().Read()

    def read_data_file(self, filename: str) -> list:
        """The data file's entities, read as the SDK's own reader reads them (its format is
        a pickle), with the file closed after reading: the SDK's leaves it open."""
        if not Path(filename).is_file() or not Path(filename).stat().st_size:
            return []
        with open(filename, "rb") as data:
            return pickle.load(data, encoding="bytes")

    def Write(self) -> None:  # noqa: N802
        self._unsaved = True  # called by the stub after every commit, and under _call_lock

    def save(self, while_held: Callable[[int], None] | None = None) -> bool:
        """Write the file if anything changed since the last save; True if it did.

        ``while_held(version)`` runs first, while no Datastore call can: ``version``
        (the timestamp of the last commit, which the file holds) names the data
        this save writes, and what ``while_held`` saves goes with it."""
        with self._call_lock:
            if while_held is not None:
                while_held(self.version())
            if not self._unsaved:
                return False
            super().Write()
            self._unsaved = False
            return True

    def version(self) -> int:
        """The timestamp of the last commit: it names the data (and is saved in the file)."""
        with self._call_lock:
            return sdk.read_timestamp(self)

    def entity_group_records(self, entity_group) -> Mapping:
        group_key = datastore_types.ReferenceToKeyValue(entity_group)
        return _RecordView(sdk.entities_by_group(self).get(group_key, {}))


class _RecordView(Mapping):
    """The records of one entity group's stored entities, read live (see LocalDatastoreStub)."""

    def __init__(self, stored_entities: dict) -> None:
        self.stored_entities = stored_entities

    def __getitem__(self, key):
        return self.stored_entities[key].record

    def __iter__(self) -> Iterator:
        return iter(self.stored_entities)

    def __len__(self) -> int:
        return len(self.stored_entities)
