"""The App Engine SDK internals the development server relies on, named here and nowhere else.

The SDK's stubs have no public way to save Datastore on a timer, to read an
entity group without copying it, or to copy memcache's table while no call
runs; the development server reaches into them for those. Every private or
name-mangled attribute it uses is named in ``INTERNALS`` and reached through
this module; tests/test_devserver_sdk.py checks each against the installed SDK,
so an SDK upgrade that changes one fails there, by name, not deep in a save.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.appengine.api import datastore_file_stub
from google.appengine.api.memcache import memcache_stub
from google.appengine.api.taskqueue import taskqueue_stub


@dataclass(frozen=True)
class Internal:
    """One attribute of an SDK class the development server uses that the SDK does not promise to keep.

    ``parameters``: for a method the development server overrides or calls, the
    names its SDK version takes (after ``self``); None for a plain attribute."""

    owner: type
    name: str
    parameters: tuple[str, ...] | None = None
    on_instance: bool = False
    """Set by the owner's ``__init__`` (so only an instance has it), not defined on the class."""


_DATASTORE = datastore_file_stub.DatastoreFileStub
INTERNALS = (
    # LocalDatastoreStub: the data file's path, its reader (overridden: the SDK's leaves the file
    # open), each entity group's stored entities, the last commit's timestamp, the group read
    # each transaction starts with (overridden: a live view instead of a copy).
    Internal(_DATASTORE, "_DatastoreFileStub__datastore_file", on_instance=True),
    Internal(_DATASTORE, "_DatastoreFileStub__ReadPickled", ("filename",)),
    Internal(_DATASTORE, "_DatastoreFileStub__entities_by_group", on_instance=True),
    Internal(_DATASTORE, "_GetReadTimestamp", ()),
    Internal(_DATASTORE, "_GetEntitiesInEntityGroup", ("entity_group",)),
    # The queue file: memcache's table and the lock each memcache call holds.
    Internal(memcache_stub.MemcacheServiceStub, "_mutex", on_instance=True),
    Internal(memcache_stub.MemcacheServiceStub, "_the_cache", on_instance=True),
    Internal(memcache_stub.CacheEntry, "value", on_instance=True),
    Internal(memcache_stub.CacheEntry, "flags", on_instance=True),
    Internal(memcache_stub.CacheEntry, "will_expire", on_instance=True),
    Internal(memcache_stub.CacheEntry, "expiration_time", on_instance=True),
    Internal(memcache_stub.CacheEntry, "CheckExpired", ()),
    Internal(memcache_stub.CacheEntry, "CheckLocked", ()),
    # The services: the task queue stub's scheduler, started and stopped by hand.
    Internal(taskqueue_stub.TaskQueueServiceStub, "StartBackgroundExecution", ()),
    Internal(taskqueue_stub.TaskQueueServiceStub, "Shutdown", ()),
)


class DatastoreFileStubHooks:
    """Mixed in before ``DatastoreFileStub``: its private hooks, overridden under their SDK
    names, call the public methods a subclass defines."""

    def _DatastoreFileStub__ReadPickled(self, filename: str) -> list:  # noqa: N802 (SDK name)
        return self.read_data_file(filename)

    def _GetEntitiesInEntityGroup(self, entity_group: Any) -> Mapping:  # noqa: N802 (SDK name)
        return self.entity_group_records(entity_group)

    def read_data_file(self, filename: str) -> list:
        raise NotImplementedError

    def entity_group_records(self, entity_group: Any) -> Mapping:
        raise NotImplementedError


def datastore_file(stub: datastore_file_stub.DatastoreFileStub) -> str:
    """The path of the stub's data file."""
    return stub._DatastoreFileStub__datastore_file


def entities_by_group(stub: datastore_file_stub.DatastoreFileStub) -> Mapping[Any, dict]:
    """The stub's stored entities, by the key of their entity group (live: the stub's own table)."""
    return stub._DatastoreFileStub__entities_by_group


def read_timestamp(stub: datastore_file_stub.DatastoreFileStub) -> int:
    """The timestamp of the stub's last commit."""
    return stub._GetReadTimestamp()


def memcache_lock(stub: memcache_stub.MemcacheServiceStub) -> Any:
    """The lock (an ``RLock``) every call of the memcache stub holds."""
    return stub._mutex


def memcache_table(stub: memcache_stub.MemcacheServiceStub, namespace: str = "") -> Mapping[bytes, Any]:
    """The memcache stub's entries of ``namespace`` (``CacheEntry``: ``value``, ``flags``,
    ``expiration_time``, ``will_expire``, ``CheckExpired()``, ``CheckLocked()``), by key."""
    return stub._the_cache.get(namespace, {})
