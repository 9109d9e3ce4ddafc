"""Faults injected into App Engine API RPCs on the SDK's stubs, as production has them."""

from __future__ import annotations

from collections.abc import Iterator

class MemcacheRpcFaults:
    """Makes App Engine memcache RPCs fail, as production does, through a pre-call
    hook on the API proxy: the hook swaps the RPC's stub for one that raises,
    before the real stub runs or after it has applied the call (a lost reply)."""

    def __init__(self) -> None:
        self.planned: list[list] = []
        self.error_statuses_next: str | None = None
        """If set, the next RPC of this method ("Delete", "BatchIncrement") is applied and
        answers an error status for every key, as production memcache does when a
        server fails mid-call."""
        self.max_response_bytes: int | None = None
        self.failed: list[str] = []
        self.request_bytes: list[tuple[str, int]] = []
        """Every memcache RPC seen: (method, request size in bytes)."""

    def fail_next(
        self, method: str | None = None, *, key: str | None = None, after_applying: bool = False, skip: int = 0
    ) -> None:
        """Fail the next RPC of ``method`` ("Get", "Set", "Delete", "BatchIncrement",
        or any) that names ``key`` (if given), after letting ``skip`` of them
        through; after applying it if ``after_applying`` (a lost reply)."""
        self.planned.append([method, after_applying, skip, key])

    def hook(self, service, call, request, response, rpc) -> None:
        self.request_bytes.append((call, request.ByteSize()))
        if self.planned and self.planned[0][0] in (None, call) and self._names(request, self.planned[0][3]):
            if self.planned[0][2]:
                self.planned[0][2] -= 1
                return
            _method, after_applying, _skip, _key = self.planned.pop(0)
            rpc.stub = _FailingStub(rpc.stub, after_applying, None)
            self.failed.append(call)
        elif self.error_statuses_next == call:
            self.error_statuses_next = None
            rpc.stub = _ErrorStatusStub(rpc.stub)
        elif self.max_response_bytes is not None:
            rpc.stub = _FailingStub(rpc.stub, True, self.max_response_bytes)

    @staticmethod
    def _names(request, key: str | None) -> bool:
        if key is None:
            return True
        keys = list(getattr(request, "key", [])) + [item.key for item in getattr(request, "item", [])]
        return key.encode() in keys


class _FailingStub:
    def __init__(self, real, after_applying: bool, max_response_bytes: int | None) -> None:
        self.real, self.after_applying, self.max_response_bytes = real, after_applying, max_response_bytes

    def MakeSyncCall(self, service, call, request, response):
        from google.appengine.runtime import apiproxy_errors

        if self.after_applying:
            self.real.MakeSyncCall(service, call, request, response)
        if self.max_response_bytes is None:
            raise apiproxy_errors.DeadlineExceededError(f"injected: {call} failed")
        if response.ByteSize() > self.max_response_bytes:
            raise apiproxy_errors.ResponseTooLargeError(f"injected: {call} answer over {self.max_response_bytes} bytes")


class _ErrorStatusStub:
    def __init__(self, real) -> None:
        self.real = real

    def MakeSyncCall(self, service, call, request, response):
        from google.appengine.api.memcache.memcache_service_pb2 import (
            MemcacheDeleteResponse,
            MemcacheIncrementResponse,
        )

        self.real.MakeSyncCall(service, call, request, response)
        if call == "Delete":
            response.delete_status[:] = [MemcacheDeleteResponse.OTHER_ERROR] * len(response.delete_status)
        else:
            for item in response.item:
                item.increment_status = MemcacheIncrementResponse.ERROR


def rpc_faults(service: str) -> Iterator[MemcacheRpcFaults]:
    from google.appengine.api import apiproxy_stub_map

    faults = MemcacheRpcFaults()
    hooks = apiproxy_stub_map.apiproxy.GetPreCallHooks()
    hooks.Append("clickqueue-test-faults", faults.hook, service)
    yield faults
    hooks.Clear()
