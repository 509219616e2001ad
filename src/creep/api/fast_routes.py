"""Hot routes served straight from the request-context middleware.

FastAPI's router (nested routers, route matching, exception middleware, the exit stack,
dependency solving) cost more per request than all of POST /v1/tasks' own work, measured with
py-spy under wrk. A fast route is still declared on its FastAPI router (OpenAPI, docs,
schemathesis see it unchanged); the middleware answers an exact (method, path) match itself,
with the same problem documents the app's exception handlers produce.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from creep.api.problems import (
    _HTTP_TITLES,
    Problem,
    from_creep_error,
    from_request_validation,
    problem_response,
)
from creep.domain.errors import CreepError

Handler = Callable[[Request], Awaitable[Response]]
FastRoutes = dict[tuple[str, str], Handler]
log = logging.getLogger("creep.api")


async def serve(handler: Handler, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `handler` like the app's router would; unexpected errors propagate (the middleware
    answers them with a 500 problem carrying the request id)."""
    # What the router would set: the metrics label and request.path_params read these.
    scope["endpoint"] = handler
    scope["path_params"] = {}
    request = Request(scope, receive, send)
    try:
        await _read_body(request, receive)
        response = await handler(request)
    except Problem as exc:
        response = problem_response(exc)
    except RequestValidationError as exc:
        response = problem_response(from_request_validation(exc))
    except CreepError as exc:
        response = problem_response(from_creep_error(exc, request))
    except HTTPException as exc:  # e.g. a body over the app's size limit, as problems.on_http
        title = _HTTP_TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        response = problem_response(
            Problem(exc.status_code, title, detail, headers=dict(exc.headers or {}))
        )
    await response(scope, receive, send)


async def _read_body(request: Request, receive: Receive) -> None:
    """Read the whole body once, straight from the server (what Request.body() would read,
    without its async generator); `request.body()` then returns it."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    request._body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
