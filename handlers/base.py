"""The app and the base of every handler: request limits, JSON answers, every error's HTTP answer.

Every error is turned into its HTTP answer here, in one place.

webapp2 answers its own errors with HTML pages: the router's 404 and 405, the
handler's 405 (``RequestHandler.dispatch``), the 501 for a method it does not
know (``WSGIApplication.__call__``), and the 500 of ``_internal_error`` for any
exception nobody handled. ``JsonApplication.handle_exception`` is webapp2's
hook for all of them: it answers each as JSON instead.
"""

from __future__ import annotations

import json
import logging

import webapp2
from webob import exc
from webob.multidict import MultiDict, NestedMultiDict

from clickqueue import BatchTooLargeError, MessageEncodingError, MessageTooLargeError, QueueError, WriteIncompleteError
from clicks.http_errors import (
    ForbiddenError,
    HttpStatusError,
    InternalError,
    InvalidRequestError,
    LengthRequiredError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    QueueFullError,
    RequestError,
    RequestTimeoutError,
    ServiceUnavailableError,
    UriTooLongError,
    quote_prefix,
)
from clicks.settings import CONFIG_KEY, Settings

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
"""The largest request body read (1 MiB); larger ones answer 413 (read no further).

App Engine takes up to 32 MB, but no request of this API needs that: the
largest, a /track batch of 500 events with 128-character items, is 80 kB as
JSON and 400 kB with every character ``\\u``-escaped. A tighter cap keeps a
client from making a handler hold and parse 32 MB."""

MAX_URL_BYTES = 2048
"""The longest path plus query string served; longer ones answer 414. /track's and
/stats's parameters need under 400 bytes even fully percent-encoded; gunicorn
refuses request lines over 4094 bytes itself, before the app sees them."""

HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "TRACE")
"""The methods webapp2 dispatches (its ``allowed_methods``), in the order ``Allow`` lists them."""

NOSNIFF_HEADER = ("X-Content-Type-Options", "nosniff")

# The queue's own ValueErrors: the message (built from the request) was refused.
QUEUE_INPUT_ERRORS = (MessageEncodingError, MessageTooLargeError, BatchTooLargeError)


class JsonHandler(webapp2.RequestHandler):
    """Reads requests within limits and answers JSON.

    ``HEAD`` is served by ``get`` wherever a handler has one (the server sends
    no body for it). Errors raised by a handler go on to
    ``JsonApplication.handle_exception``.
    """

    _allowed_methods: list[str] = []
    """The HTTP methods a handler class serves, found once per class."""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if hasattr(cls, "get") and not hasattr(cls, "head"):
            cls.head = cls.get
        cls._allowed_methods = [method for method in HTTP_METHODS if callable(getattr(cls, method.lower(), None))]

    @classmethod
    def allowed_methods(cls) -> list[str]:
        return cls._allowed_methods

    def dispatch(self) -> None:
        allowed = self._allowed_methods
        if self.request.method not in allowed:
            raise MethodNotAllowedError(self.request.method, allowed)
        self._normalize_media_type()
        self._read_body_within_limit()
        super().dispatch()

    @property
    def settings(self) -> Settings:
        return self.app.config[CONFIG_KEY]

    # -- reading the request ---------------------------------------------------

    def media_type(self) -> str:
        """The Content-Type without its parameters, lower case ("" if none)."""
        return self.request.content_type

    def query_params(self) -> MultiDict:
        """The query string's parameters; 400 if they are not UTF-8 once percent-decoded."""
        try:
            return self.request.GET
        except UnicodeDecodeError as error:
            raise InvalidRequestError("the query string is not UTF-8 once percent-decoded") from error

    def form_params(self) -> MultiDict:
        """The form body's fields (none unless the body is a form); 400 if it cannot be parsed."""
        self._require_utf8()
        try:
            return self.request.POST
        except ValueError as error:  # a multipart body without boundary, a malformed part
            raise InvalidRequestError(f"the form body cannot be parsed: {quote_prefix(error)}") from error

    def params(self) -> NestedMultiDict:
        """The query string's parameters and the form's fields together."""
        return NestedMultiDict(self.query_params(), self.form_params())

    def text_body(self) -> bytes:
        """The body of a text type (such as JSON): only UTF-8 is accepted."""
        self._require_utf8()
        return self.request.body

    def _require_utf8(self) -> None:
        if self.request.charset != "UTF-8":  # webob's spelling of any "utf-8", or of none given
            raise InvalidRequestError(f"charset must be utf-8; got {quote_prefix(self.request.charset)}")

    def _normalize_media_type(self) -> None:
        """Lower-case the media type, keeping its parameters: media types are
        case-insensitive, and webob parses forms only for lower-case ones."""
        media_type, separator, parameters = self.request.environ.get("CONTENT_TYPE", "").partition(";")
        self.request.environ["CONTENT_TYPE"] = media_type.strip().lower() + separator + parameters

    def _read_body_within_limit(self) -> None:
        """Read the whole body now, where a broken one is answered: 411 for a body of
        unknown length the server did not decode; 413 past ``MAX_BODY_BYTES``; 400 for
        one that cannot be read (a malformed chunk, fewer bytes than its
        Content-Length), 408 for one that stopped arriving; each logged in one line.

        gunicorn decodes chunked bodies and says so with ``wsgi.input_terminated``;
        a server that does not (wsgiref) leaves a chunked body undecodable.
        """
        environ = self.request.environ
        length = self.request.content_length
        if "HTTP_TRANSFER_ENCODING" in environ and not environ.get("wsgi.input_terminated"):
            raise LengthRequiredError("this server cannot read a chunked body: send a Content-Length")
        if length is not None and length > MAX_BODY_BYTES:
            raise PayloadTooLargeError(f"the body is {length} bytes; the limit is {MAX_BODY_BYTES}")
        try:
            if length is None and environ.get("wsgi.input_terminated"):
                body = self.request.body_file_raw.read(MAX_BODY_BYTES + 1)
            elif length:
                body = self.request.body  # webob keeps it for the handler
            else:
                return
        # The server's own errors for the client's bytes: PEP 3333 names none, gunicorn
        # raises its ParseException (a malformed chunk) or OSError (an early end, a
        # read that timed out), webob its DisconnectionError (an OSError).
        except Exception as error:  # noqa: BLE001
            answer = (
                RequestTimeoutError("the request body stopped arriving before its end")
                if isinstance(error, TimeoutError)
                else InvalidRequestError(f"the request body cannot be read: {quote_prefix(error)}")
            )
            logger.warning("%s: %s %s", self.request.path_info, answer.status, answer)
            raise answer from error
        if len(body) > MAX_BODY_BYTES:
            raise PayloadTooLargeError(f"the body is over the limit of {MAX_BODY_BYTES} bytes")
        self.request.body = body

    # -- answering ---------------------------------------------------------------

    def write_json(self, status: int, body: dict[str, object]) -> None:
        self.response.status_int = status
        self.response.content_type = "application/json"
        self.response.text = json.dumps(body)

    def write_no_content(self) -> None:
        self.response.status_int = 204
        del self.response.content_type

    def require_header(self, name: str, value: str | None = None) -> None:
        """Refuse the request unless it has header ``name`` (equal to ``value`` if given).

        App Engine removes ``X-AppEngine-*`` headers from requests coming from
        outside, so their presence proves a task queue or cron request.
        """
        received = self.request.headers.get(name)
        if received is None or (value is not None and received != value):
            wanted = f"{name}: {value}" if value is not None else name
            raise ForbiddenError(f"only App Engine may call {self.request.path} (it sets header {wanted})")


class CheckedRouter(webapp2.Router):
    """webapp2's router, which first refuses what no route can serve: an overlong
    URL (414), a path that is not UTF-8 (400); and answers 404 as a RequestError."""

    def match(self, request: webapp2.Request) -> tuple:
        url_bytes = len(request.environ.get("PATH_INFO", "")) + len(request.environ.get("QUERY_STRING", ""))
        if url_bytes > MAX_URL_BYTES:
            raise UriTooLongError(f"the URL is {url_bytes} bytes; the limit is {MAX_URL_BYTES}")
        try:
            request.path_info
        except UnicodeDecodeError as error:
            raise InvalidRequestError("the path is not UTF-8 once percent-decoded") from error
        try:
            return super().match(request)
        except exc.HTTPNotFound as error:
            raise NotFoundError(f"no such path: {quote_prefix(request.path_info)}") from error


class JsonApplication(webapp2.WSGIApplication):
    """webapp2's application answering every error as JSON, every response with ``nosniff``."""

    router_class = CheckedRouter

    def __call__(self, environ: dict, start_response):
        def start_response_nosniff(status: str, headers: list[tuple[str, str]], exc_info=None):
            return start_response(status, [*headers, NOSNIFF_HEADER], exc_info)

        return super().__call__(environ, start_response_nosniff)

    def handle_exception(
        self, request: webapp2.Request, response: webapp2.Response, exception: Exception
    ) -> webapp2.Response:
        if isinstance(exception, exc.HTTPException) and exception.code < 400:
            return exception  # a redirect raised by ``abort`` or ``redirect(abort=True)``: it is the answer
        error = self._as_request_error(request, exception)
        answer = webapp2.Response(status=error.status, content_type="application/json")
        answer.headers.update(error.headers)
        answer.text = json.dumps(error.body())
        return answer

    def _as_request_error(self, request: webapp2.Request, exception: Exception) -> RequestError:
        """The HTTP answer for ``exception``; logs those that are the server's fault."""
        if isinstance(exception, RequestError):
            # A full queue is no fault: its gate logs it once per slot, not once per request.
            if exception.status >= 500 and not isinstance(exception, QueueFullError):
                logger.error("%s: %s", request.path_info, exception, exc_info=exception)
            return exception
        if isinstance(exception, QUEUE_INPUT_ERRORS):
            return InvalidRequestError(str(exception))
        if isinstance(exception, QueueError):
            logger.error("%s: queue failed: %s", request.path_info, exception, exc_info=exception)
            if isinstance(exception, WriteIncompleteError):  # a recording's write (GroupWriteError), failed
                return ServiceUnavailableError(_what_was_recorded(exception))
            return ServiceUnavailableError(f"queue unavailable: {exception}")
        if isinstance(exception, exc.HTTPNotImplemented):  # a method webapp2 does not dispatch at all
            try:
                route = self.router.match(request)[0]
            except RequestError as error:
                return error
            return MethodNotAllowedError(request.method, route.handler.allowed_methods())
        if isinstance(exception, exc.HTTPException):  # ``abort(code)`` in a handler
            return HttpStatusError(exception.code, exception.title, exception.headers.get("Allow"))
        logger.error("%s: unexpected error", request.path_info, exc_info=exception)
        return InternalError("internal error; the server log has the details")


def _what_was_recorded(error: WriteIncompleteError) -> str:
    """A failed write's 503 text: whether sending the events again could count any twice."""
    if not error.stored and not error.unknown:
        return "the queue is unavailable: nothing was recorded; send the events again"
    return (
        f"the queue failed mid-write: of {error.total} events, {len(error.stored)} were recorded and "
        f"{len(error.unknown)} may have been; sending them again may count those twice"
    )
