"""The SDK internals the development server relies on (devserver/sdk.py) are still there, as it uses them.

An upgrade of appengine-python-standard that renames or reshapes one fails
here, naming the attribute, instead of in a save or a transaction of
``python main.py``.
"""

from __future__ import annotations

import inspect

import pytest
from google.appengine.api import datastore_file_stub, memcache
from google.appengine.api.memcache import memcache_stub
from google.appengine.ext import testbed as testbed_module

from devserver import APP_ID, sdk
from devserver.datastore import LocalDatastoreStub


@pytest.fixture
def instances(tmp_path, testbed):
    """One instance of each SDK class whose internals devserver/sdk.py names, set up as the server sets it up."""
    memcache.set("queue-key", b"value", time=60)  # an entry that expires, as the queue's leases do
    cache = testbed.get_stub(testbed_module.MEMCACHE_SERVICE_NAME)
    return {
        datastore_file_stub.DatastoreFileStub: datastore_file_stub.DatastoreFileStub(
            APP_ID, str(tmp_path / "datastore.db"), save_changes=False, use_atexit=False
        ),
        memcache_stub.MemcacheServiceStub: cache,
        memcache_stub.CacheEntry: sdk.memcache_table(cache)[b"queue-key"],
    }


@pytest.mark.parametrize("internal", sdk.INTERNALS, ids=lambda internal: f"{internal.owner.__name__}.{internal.name}")
def test_the_installed_sdk_has_each_internal_the_development_server_uses(internal, instances):
    where = f"{internal.owner.__module__}.{internal.owner.__name__}.{internal.name}"
    if internal.on_instance:
        assert hasattr(instances[internal.owner], internal.name), (
            f"the installed SDK's {internal.owner.__name__} instances no longer have {internal.name}: "
            f"devserver/sdk.py relies on {where}"
        )
        return
    member = inspect.getattr_static(internal.owner, internal.name, None)
    assert callable(member), f"the installed SDK no longer has {where}: devserver/sdk.py relies on it"
    parameters = tuple(inspect.signature(member).parameters)[1:]
    assert parameters == internal.parameters, (
        f"the installed SDK's {where} now takes {parameters}, not {internal.parameters}: "
        "devserver/sdk.py relies on its old form"
    )


def test_the_local_datastore_overrides_the_sdk_hooks_it_names():
    """Its hooks reach the stub under the SDK's names: the SDK calls them, not the stub's own."""
    for name in ("_DatastoreFileStub__ReadPickled", "_GetEntitiesInEntityGroup"):
        assert getattr(LocalDatastoreStub, name) is getattr(sdk.DatastoreFileStubHooks, name)
        assert name in {internal.name for internal in sdk.INTERNALS}
