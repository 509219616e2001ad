"""The OpenAPI document: every error is an RFC 7807 problem (application/problem+json), and
every /v1 operation declares the problems it can answer, so clients (and schemathesis) can
rely on the contract."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field

from creep.api.problems import PROBLEM_JSON
from creep.api.schemas import TaskOrderIn


class FieldError(BaseModel):
    field: str = Field(description="path of the field, e.g. tasks[0].priority")
    rule: str = Field(description="the rule it broke")
    # 'in' is a keyword in Python; the JSON name is "in".
    location: str | None = Field(default=None, alias="in", description="body, query, header, path")


class Problem(BaseModel):
    """RFC 7807 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str = Field(description="the request id (X-Request-ID)")
    errors: list[FieldError] | None = Field(default=None, description="validation errors")


#: Request bodies referenced only through openapi_extra (see routes/tasks.create_task).
BODY_MODELS: list[type[BaseModel]] = [TaskOrderIn]

_COMMON = {
    "401": "missing, unknown or revoked API key",
    "403": "the key may not do this (read-only, or not an admin key)",
    "404": "no such object, or not visible to this key",
    "409": "conflicts with the current state",
    "422": "validation failed; `errors` names each field and rule",
    "429": "rate limit or active-task cap reached (see Retry-After)",
    "503": "the database is unavailable",
}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, summary=app.summary,
                          routes=app.routes, description=app.description)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        problem_schema = Problem.model_json_schema(
            by_alias=True, ref_template="#/components/schemas/{model}"
        )
        for name, sub in problem_schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas["Problem"] = problem_schema
        for model in BODY_MODELS:  # bodies of routes that read the Request themselves
            body_schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in body_schema.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas.setdefault(model.__name__, body_schema)
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        ref = {"schema": {"$ref": "#/components/schemas/Problem"}}
        for path, item in doc.get("paths", {}).items():
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                if path.startswith("/v1/"):
                    for code, text in _COMMON.items():
                        responses.setdefault(code, {"description": text})
                for code, response in responses.items():
                    if code[0] in "45":
                        response["content"] = {PROBLEM_JSON: ref}
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
