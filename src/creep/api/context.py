"""Per-request context: the request id (taken from X-Request-ID or generated, echoed back),
JSON log lines that carry it, and an access log with timings."""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from contextvars import ContextVar
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from creep import tracing

REQUEST_ID_HEADER = "x-request-id"
#: Scope key: whether a tracer was set when the request came in (routes need not ask again).
TRACED = "creep.traced"
_VALID_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
#: Artifact uploads: limited by CREEP_ARTIFACT_MAX_BYTES instead (routes/artifacts.py).
_OWN_BODY_LIMIT = re.compile(r"/v1/tasks/[^/]+/artifacts")
_request_id: ContextVar[str | None] = ContextVar("creep_request_id", default=None)
access_log = logging.getLogger("creep.api.access")


# Generated request ids: a random per-process prefix and a counter, so the hot path makes no
# getrandom() syscall per request (each one let the writer thread take the GIL).
_ID_PREFIX = uuid.uuid4().hex[:16]
_id_counter = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_id_counter):016x}"


def current_request_id() -> str | None:
    return _request_id.get()


class RequestContextMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): sets the request id for everything the request runs,
    echoes it, and reports each request to `on_done(method, route, status, seconds)`."""

    def __init__(
        self, app: ASGIApp, on_done: Any = None, fast: Any = None, max_body: int = 0
    ) -> None:
        self.app = app
        self.on_done = on_done
        #: Largest request body (0: any): larger is a 413 before it is read, or as soon as
        #: a body without Content-Length passes it (the rest is not read).
        self.max_body = max_body
        # (method, path) -> handler answered here, bypassing the router (fast_routes.py).
        self.fast: dict[tuple[str, str], Any] = dict(fast or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = None
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                supplied = value.decode("latin-1")
                break
        request_id = supplied if supplied and _VALID_ID.fullmatch(supplied) else new_request_id()
        if _has_nul(scope):
            # Path and query parameters reach SQL; no database stores NUL in text.
            await _reject_nul(send, request_id)
            return
        token = _request_id.set(request_id)
        t = tracing.tracer()  # None unless OpenTelemetry is installed and set up
        scope[TRACED] = t is not None
        traced = tracing.start_server_span(t, scope, request_id) if t is not None else None
        started = time.perf_counter()
        status = 500
        raw_id = request_id.encode()
        started_response = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                started_response = True
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", raw_id)]
            await send(message)

        try:
            limit = self.max_body
            if limit and not _OWN_BODY_LIMIT.fullmatch(scope["path"]):
                if _declared_length(scope) > limit:
                    await _send_too_large(send_with_id, request_id, limit)
                    return
                receive = _limited(receive, limit)
            handler = self.fast.get((scope["method"], scope["path"])) if self.fast else None
            if handler is not None:
                from creep.api.fast_routes import serve

                await serve(handler, scope, receive, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        except Exception:
            # Answer here, where the request id is still known (the outermost handler of
            # Starlette would answer without it).
            logging.getLogger("creep.api").exception("unhandled error")
            if started_response:
                raise
            status = 500
            body = orjson.dumps({
                "type": "https://creep.dev/problems/internal", "title": "Internal error",
                "status": 500, "detail": "an unexpected error occurred",
                "instance": request_id,
            })
            await send_with_id({"type": "http.response.start", "status": 500, "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode())]})
            await send_with_id({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            template = route_template(scope)
            if self.on_done is not None:
                self.on_done(scope["method"], template, status, elapsed)
            if traced is not None:
                tracing.end_server_span(*traced, scope["method"], template, status)
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    "%s %s %s", scope["method"], scope["path"], status,
                    extra={"method": scope["method"], "path": scope["path"], "status": status,
                           "duration_ms": round(elapsed * 1000, 2)},
                )
            _request_id.reset(token)


def _has_nul(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return "\x00" in scope["path"] or b"%00" in query or b"\x00" in query


async def _reject_nul(send: Send, request_id: str) -> None:
    body = orjson.dumps({
        "type": "https://creep.dev/problems/validation", "title": "Validation failed",
        "status": 422, "detail": "path or query: must not contain NUL characters (%00)",
        "instance": request_id,
        "errors": [{"field": "query", "in": "query", "rule": "must not contain NUL characters"}],
    })
    await send({"type": "http.response.start", "status": 422, "headers": [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode()), (b"x-request-id", request_id.encode())]})
    await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    """Raised from a request's body stream once it passes the limit: routes answer it as any
    HTTP error (a 413 problem), FastAPI's body parsing included."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _too_large_detail(limit))


def _too_large_detail(limit: int) -> str:
    return f"a request body may be at most {limit} bytes (CREEP_MAX_REQUEST_BYTES)"


def _declared_length(scope: Scope) -> int:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            return int(value) if value.isdigit() else 0  # the server refuses a bad one
    return 0


def _limited(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return counted


async def _send_too_large(send: Send, request_id: str, limit: int) -> None:
    body = orjson.dumps({
        "type": "https://creep.dev/problems/payload-too-large", "title": "Payload too large",
        "status": 413, "detail": _too_large_detail(limit), "instance": request_id,
    })
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"application/problem+json"),
        (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def route_template(scope: Scope) -> str:
    """The matched route as a template (/v1/tasks/{task_id}): a bounded metrics label.
    Built from the path and its parameters, which holds however routers were nested."""
    if scope.get("endpoint") is None:
        return "<unmatched>"
    path_params = scope.get("path_params")
    if not path_params:  # nothing to put back: the path is the template (the hot routes)
        return str(scope["path"])
    params = {str(v): k for k, v in path_params.items()}
    parts = [f"{{{params[p]}}}" if p in params else p for p in scope["path"].split("/")]
    return "/".join(parts)


_STANDARD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime", "color_message"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any extras."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = current_request_id()
        if request_id:
            data["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(data, default=str).decode()


def configure_logging(level: str, json_lines: bool = True) -> None:
    """Route creep's and uvicorn's logs through one handler on stderr."""
    import time as _time

    handler = logging.StreamHandler()
    if json_lines:
        formatter: logging.Formatter = JsonFormatter()
        formatter.converter = _time.gmtime
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Our access log replaces uvicorn's (it carries the request id and the timing).
    logging.getLogger("uvicorn.access").disabled = True
