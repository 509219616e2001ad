"""RFC 7807 problem details for every error: type, title, status, detail, instance (the
request id) and, for validation errors, `errors` with field paths. A user's mistake is never
a 500."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, TypeVar

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from creep.api.context import current_request_id
from creep.domain.errors import (
    ClaimLost,
    ConflictError,
    CreepError,
    IdempotencyConflict,
    IdTaken,
    IllegalTransition,
    NotFound,
    StorageError,
    TaskDeleted,
    TaskUnfinished,
    ValidationError,
    VersionConflict,
)
from creep.domain.tenancy import QuotaExceeded

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://creep.dev/problems/"
log = logging.getLogger("creep.api")


class Problem(Exception):
    """Raise from a route to answer with a problem document."""

    def __init__(
        self, status: int, title: str, detail: str | None = None, *, type_: str | None = None,
        errors: Sequence[dict[str, Any]] | None = None, headers: dict[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.type = type_ or title.lower().replace(" ", "-")
        self.errors = list(errors) if errors is not None else None
        self.headers = headers or {}
        self.extra = extra


def problem_response(problem: Problem) -> Response:
    body: dict[str, Any] = {
        "type": TYPE_BASE + problem.type,
        "title": problem.title,
        "status": problem.status,
        "detail": problem.detail or problem.title,
        "instance": current_request_id() or "",
    }
    if problem.errors is not None:
        body["errors"] = problem.errors
    body.update(problem.extra)
    return Response(
        orjson.dumps(body), status_code=problem.status, media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def _loc_path(loc: Sequence[Any]) -> tuple[str, str]:
    """('body', 'tasks', 0, 'priority') -> ('body', 'tasks[0].priority')."""
    where = str(loc[0]) if loc else "body"
    path = ""
    for part in loc[1:]:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return where, path or where


def from_request_validation(exc: RequestValidationError) -> Problem:
    errors = []
    for err in exc.errors():
        where, path = _loc_path(err.get("loc", ()))
        errors.append({"field": path, "in": where, "rule": str(err.get("msg", "is invalid"))})
    return Problem(
        422, "Validation failed", "; ".join(f"{e['field']}: {e['rule']}" for e in errors),
        type_="validation", errors=errors,
    )


def _declared_params(dependant: Any, into: dict[str, str]) -> dict[str, str]:
    """{parameter name as sent: where} for a route's parameters and its dependencies'; header
    names lower-case (FastAPI's alias of `if_match` is `if-match`)."""
    for where, params in (("path", dependant.path_params), ("query", dependant.query_params),
                          ("header", dependant.header_params),
                          ("cookie", dependant.cookie_params)):
        for param in params:
            into.setdefault(param.alias.lower() if where == "header" else param.alias, where)
    for sub in dependant.dependencies:
        _declared_params(sub, into)
    return into


def field_location(request: Request | None, field: str) -> str:
    """Where a field that route or domain code refused was sent, as FastAPI's own checks say
    it (`in`): a parameter the matched route declares is in `path`, `query` or `header`
    (matched by the name the caller sent: `If-Match`, `Last-Event-ID`, `from`), any other
    field in `body` (e.g. `tasks[0].priority`)."""
    dependant = getattr(request.scope.get("route"), "dependant", None) if request else None
    if dependant is None:  # no route matched: POST /v1/tasks (fast_routes) reads a body only
        return "body"
    declared = _declared_params(dependant, {})
    name = field.split(".", 1)[0].split("[", 1)[0]
    where = declared.get(name)
    if where is None and declared.get(name.lower()) == "header":
        where = "header"
    return where or "body"


def from_creep_error(exc: CreepError, request: Request | None = None) -> Problem:
    """The problem document for a domain error; `request` (when there is one) tells where
    each field of a validation error was sent."""
    if isinstance(exc, ValidationError):
        errors = [{"field": f, "in": field_location(request, f), "rule": r}
                  for f, r in exc.errors]
        return Problem(422, "Validation failed", exc.message, type_="validation", errors=errors)
    if isinstance(exc, NotFound):
        return Problem(404, "Not found", exc.message, type_="not-found")
    if isinstance(exc, IdempotencyConflict):
        return Problem(409, "Idempotency conflict", exc.message, type_="idempotency-conflict",
                       task_id=exc.task_id)
    if isinstance(exc, IdTaken):
        errors = [{"field": f, "in": field_location(request, f), "rule": r}
                  for f, r in exc.errors]
        return Problem(409, "Idempotency conflict", exc.message, type_="idempotency-conflict",
                       errors=errors)
    if isinstance(exc, VersionConflict):
        return Problem(409, "Version conflict", exc.message, type_="version-conflict")
    if isinstance(exc, IllegalTransition):
        return Problem(409, "Illegal transition", exc.message, type_="illegal-transition")
    if isinstance(exc, TaskUnfinished):
        return Problem(409, "Task not finished", exc.message, type_="task-not-finished",
                       task_id=exc.task_id, task_status=exc.status)
    if isinstance(exc, TaskDeleted):
        return Problem(409, "Task deleted", exc.message, type_="task-deleted",
                       task_id=exc.task_id)
    if isinstance(exc, ClaimLost):
        # Its own type: a worker drops the task on it, and must not for another 409 of the
        # same call (an asset event id that exists already).
        return Problem(409, "Claim lost", exc.message, type_="claim-lost")
    if isinstance(exc, ConflictError):
        return Problem(409, "Conflict", exc.message, type_="conflict")
    if isinstance(exc, QuotaExceeded):
        return Problem(429, "Quota exceeded", exc.message, type_="quota-exceeded",
                       headers={"Retry-After": "1"})
    if isinstance(exc, StorageError):
        log.error("storage error: %s", exc)
        return Problem(503, "Database unavailable", "the database failed; try again",
                       type_="database-unavailable", headers={"Retry-After": "1"})
    return Problem(400, "Bad request", exc.message, type_="bad-request")


T = TypeVar("T")


def parse_body(adapter: TypeAdapter[T], raw: bytes) -> T:
    """A JSON body validated like FastAPI would (same problem document on failure), for
    routes that read the Request themselves."""
    try:
        return adapter.validate_json(raw)
    except PydanticValidationError as exc:
        errors = exc.errors()
    if b"\\u" in raw and errors[0]["type"] == "json_invalid":
        # Pydantic's parser refuses a lone surrogate escape that FastAPI's (the standard
        # library's) reads: read it so, and the model's text check names the field.
        try:
            return adapter.validate_python(json.loads(raw))
        except PydanticValidationError as exc:  # (a ValueError too: caught first)
            errors = exc.errors()
        except ValueError:
            pass  # not JSON after all: the first answer stands
    raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors])


_HTTP_TITLES = {
    400: "Bad request", 401: "Unauthorized", 403: "Forbidden", 404: "Not found",
    405: "Method not allowed", 406: "Not acceptable", 413: "Payload too large",
    415: "Unsupported media type",
}


def install(app: FastAPI) -> None:
    async def on_problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, Problem)
        return problem_response(exc)

    async def on_validation(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return problem_response(from_request_validation(exc))

    async def on_creep(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, CreepError)
        return problem_response(from_creep_error(exc, request))

    async def on_http(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        title = _HTTP_TITLES.get(exc.status_code, "Error")
        detail = exc.detail if isinstance(exc.detail, str) else title
        return problem_response(
            Problem(exc.status_code, title, detail, headers=dict(exc.headers or {}))
        )

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unhandled error", exc_info=exc)
        return problem_response(
            Problem(500, "Internal error", "an unexpected error occurred", type_="internal")
        )

    app.add_exception_handler(Problem, on_problem)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(CreepError, on_creep)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
