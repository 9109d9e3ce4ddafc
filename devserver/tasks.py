"""The development server's task queue: due tasks sent back to the server as HTTP requests."""

from __future__ import annotations

import http.client

from google.appengine.api import request_info

from devserver import HOST

TASK_TIMEOUT_SECONDS = 600  # App Engine's deadline for a push task


class LoopbackDispatcher(request_info.Dispatcher):
    """Sends the task queue stub's due tasks to this server as HTTP requests."""

    def __init__(self, port: int) -> None:
        self.port = port

    def add_request(
        self, method, relative_url, headers, body, source_ip, module_name=None, version=None, instance_id=None
    ) -> request_info.ResponseTuple:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=TASK_TIMEOUT_SECONDS)
        try:
            # Its own Host: the stub names the app's default host name for a task added outside a request.
            sent_headers = {name: value for name, value in dict(headers).items() if name.lower() != "host"}
            connection.request(method, relative_url, body=body, headers={**sent_headers, "Host": f"{HOST}:{self.port}"})
            response = connection.getresponse()
            return request_info.ResponseTuple(
                f"{response.status} {response.reason}", response.getheaders(), response.read()
            )
        except OSError as error:  # the stub logs it and retries the task with backoff
            raise request_info.Error(f"task {method} {relative_url} not delivered: {error!r}") from error
        finally:
            connection.close()


class LocalRequestInfo(request_info.RequestInfo):
    """What the task queue stub asks about requests: one module, our dispatcher."""

    def __init__(self, dispatcher: request_info.Dispatcher) -> None:
        self.dispatcher = dispatcher

    def get_dispatcher(self) -> request_info.Dispatcher:
        return self.dispatcher

    def get_module(self, request_id: str) -> str:
        return "default"
