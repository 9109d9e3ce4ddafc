"""The seam between the code under test and the SDK's Datastore stub.

``SimDatastore`` is registered in the stub map in place of the datastore_v3
stub (``ReplaceStub``, the SDK's own way to swap a service). Every RPC a
party's thread makes passes through the party's gate (``CallGate``): the
party parks there until the scheduler picks it, and the fault plan may fail
the call before the stub applies it, or after. The failure is the stub's own
kind, an ``ApplicationError`` with a Datastore error code, so ndb handles it as
it handles Datastore's: a CONCURRENT_TRANSACTION at commit makes ndb run the
transaction again (up to 3 times, then ``TransactionFailedError``), TIMEOUT
raises ``datastore_errors.Timeout``. Calls from other threads (setup, the
oracle's reads), and calls the stub makes to itself while it handles one
(creating indexes from index.yaml, under its own lock), go straight to the stub.

The stub is not thread-safe, so the SDK runs each call on the caller's thread
when the caller waits for it (apiproxy_rpc: ``THREADSAFE = False``): the
call runs while its party holds the scheduler's baton.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from google.appengine.api import apiproxy_rpc
from google.appengine.datastore import datastore_pb
from google.appengine.runtime import apiproxy_errors

ERROR_CODES = {
    "CONCURRENT_TRANSACTION": datastore_pb.Error.CONCURRENT_TRANSACTION,
    "TIMEOUT": datastore_pb.Error.TIMEOUT,
    "INTERNAL_ERROR": datastore_pb.Error.INTERNAL_ERROR,
}


def datastore_error(name: str) -> apiproxy_errors.ApplicationError:
    """The error Datastore answers ``name`` (a key of ``ERROR_CODES``) with."""
    return apiproxy_errors.ApplicationError(ERROR_CODES[name], f"injected by the simulation: {name}")


def is_conflict(error: Exception) -> bool:
    """The stub refused a commit because another transaction changed what this one read."""
    return (
        isinstance(error, apiproxy_errors.ApplicationError)
        and error.application_error == ERROR_CODES["CONCURRENT_TRANSACTION"]
    )


class CallGate(Protocol):
    def datastore_call(self, call: str, in_transaction: bool, send: Callable[[], Any]) -> Any:
        """Run ``send`` (the RPC on the stub) when the schedule and the fault plan say so."""


class SimDatastore:
    """The datastore_v3 stub, each party's call through its gate."""

    THREADSAFE = False

    def __init__(self, inner: Any, gate_of: Callable[[int], CallGate | None]) -> None:
        self.inner = inner
        self.gate_of = gate_of
        """The gate of the party whose thread has this ident, None for any other thread."""
        self._inside = threading.local()

    def CreateRPC(self) -> apiproxy_rpc.RPC:  # noqa: N802 (the SDK's stub interface)
        return apiproxy_rpc.RPC(stub=self)

    def MakeSyncCall(self, service: str, call: str, request: Any, response: Any) -> Any:  # noqa: N802
        gate = self.gate_of(threading.get_ident())
        if gate is None or getattr(self._inside, "call", False):
            return self.inner.MakeSyncCall(service, call, request, response)
        in_transaction = call == "Commit" or (call in ("Put", "Delete") and request.HasField("transaction"))
        return gate.datastore_call(call, in_transaction, lambda: self._send(service, call, request, response))

    def _send(self, service: str, call: str, request: Any, response: Any) -> Any:
        self._inside.call = True
        try:
            return self.inner.MakeSyncCall(service, call, request, response)
        finally:
            self._inside.call = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
