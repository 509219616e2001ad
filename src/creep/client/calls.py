"""Every API route as a `Call`: what to send and how to decode the answer. The sync and async
clients only execute calls, so both cover exactly the same routes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from creep.client import _core as core
from creep.client.models import (
    ApiKey,
    Artifact,
    AuditEvent,
    Batch,
    Claimed,
    CreatedKey,
    Page,
    Task,
    TaskEvent,
    Tenant,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    method: str
    path: str
    decode: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: Any = None
    files: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    headers: dict[str, str] | None = None


def _p(value: str) -> str:
    return quote(value, safe="")


def _any(response: httpx.Response) -> Any:
    return core.json_of(response)


def _dict(response: httpx.Response) -> dict[str, Any]:
    data = core.json_of(response)
    return data if isinstance(data, dict) else {}


def _text(response: httpx.Response) -> str:
    if response.status_code >= 400:
        raise core.problem(response)
    return response.text


def _bytes(response: httpx.Response) -> bytes:
    if response.status_code >= 400:
        raise core.problem(response)
    return response.content


# -- health ---------------------------------------------------------------------------------
def health_live() -> Call[dict[str, Any]]:
    return Call("GET", "/health/live", _dict)


def health_ready() -> Call[dict[str, Any]]:
    return Call("GET", "/health/ready", _dict)


def metrics() -> Call[str]:
    return Call("GET", "/metrics", _text)


# -- tasks ----------------------------------------------------------------------------------
def create_task(body: dict[str, Any]) -> Call[Task]:
    return Call("POST", "/v1/tasks", lambda r: core.one(r, Task), json=body)


def list_tasks(**filters: Any) -> Call[Page[Task]]:
    return Call("GET", "/v1/tasks", lambda r: core.page(r, Task), params=core.params(**filters))


def get_task(task_id: str) -> Call[Task]:
    return Call("GET", f"/v1/tasks/{_p(task_id)}", lambda r: core.one(r, Task))


def cancel_task(task_id: str, reason: str | None) -> Call[Task]:
    body = {"reason": reason} if reason else None
    return Call("POST", f"/v1/tasks/{_p(task_id)}/cancel", lambda r: core.one(r, Task), json=body)


def retry_task(task_id: str) -> Call[Task]:
    return Call("POST", f"/v1/tasks/{_p(task_id)}/retry", lambda r: core.one(r, Task))


def update_task(task_id: str, expected_version: int, changes: dict[str, Any]) -> Call[Task]:
    return Call("PATCH", f"/v1/tasks/{_p(task_id)}", lambda r: core.one(r, Task), json=changes,
                headers={"If-Match": f'"{expected_version}"'})


def task_events(task_id: str, after: str | None, limit: int) -> Call[Page[TaskEvent]]:
    return Call("GET", f"/v1/tasks/{_p(task_id)}/events", lambda r: core.page(r, TaskEvent),
                params=core.params(after=after, limit=limit))


def stream_path(task_id: str) -> str:
    return f"/v1/tasks/{_p(task_id)}/events/stream"


# -- batches --------------------------------------------------------------------------------
def create_batch(body: dict[str, Any]) -> Call[Batch]:
    return Call("POST", "/v1/batches", lambda r: core.one(r, Batch), json=body)


def list_batches(cursor: str | None, limit: int) -> Call[Page[Batch]]:
    return Call("GET", "/v1/batches", lambda r: core.page(r, Batch),
                params=core.params(cursor=cursor, limit=limit))


def get_batch(batch_id: str) -> Call[Batch]:
    return Call("GET", f"/v1/batches/{_p(batch_id)}", lambda r: core.one(r, Batch))


def cancel_batch(batch_id: str) -> Call[Batch]:
    return Call("POST", f"/v1/batches/{_p(batch_id)}/cancel", lambda r: core.one(r, Batch))


# -- tenants and keys -----------------------------------------------------------------------
def create_tenant(body: dict[str, Any]) -> Call[Tenant]:
    return Call("POST", "/v1/tenants", lambda r: core.one(r, Tenant), json=body)


def list_tenants(cursor: str | None, limit: int) -> Call[Page[Tenant]]:
    return Call("GET", "/v1/tenants", lambda r: core.page(r, Tenant),
                params=core.params(cursor=cursor, limit=limit))


def get_tenant(tenant_id: str) -> Call[Tenant]:
    return Call("GET", f"/v1/tenants/{_p(tenant_id)}", lambda r: core.one(r, Tenant))


def create_key(body: dict[str, Any]) -> Call[CreatedKey]:
    return Call("POST", "/v1/keys", lambda r: core.one(r, CreatedKey), json=body)


def revoke_key(key_id: str) -> Call[ApiKey]:
    return Call("DELETE", f"/v1/keys/{_p(key_id)}", lambda r: core.one(r, ApiKey))


# -- audit and admin ------------------------------------------------------------------------
def list_audit(**filters: Any) -> Call[Page[AuditEvent]]:
    return Call("GET", "/v1/audit", lambda r: core.page(r, AuditEvent),
                params=core.params(**filters))


def audit_csv(**filters: Any) -> Call[bytes]:
    return Call("GET", "/v1/audit", _bytes, params=core.params(format="csv", **filters))


def get_log_level(logger: str) -> Call[dict[str, Any]]:
    return Call("GET", "/v1/admin/log-level", _dict, params=core.params(logger=logger))


def set_log_level(level: str, logger: str) -> Call[dict[str, Any]]:
    return Call("PUT", "/v1/admin/log-level", _dict, json={"level": level, "logger": logger})


# -- artifacts ------------------------------------------------------------------------------
def upload_artifact(task_id: str, content: bytes, kind: str, file_name: str,
                    mime_type: str | None, metadata: str | None) -> Call[Artifact]:
    data = core.params(kind=kind, file_name=file_name, mime_type=mime_type, metadata=metadata)
    return Call("POST", f"/v1/tasks/{_p(task_id)}/artifacts", lambda r: core.one(r, Artifact),
                files={"file": (file_name, content)}, data=data)


def list_artifacts(task_id: str, kind: str | None) -> Call[list[Artifact]]:
    return Call("GET", f"/v1/tasks/{_p(task_id)}/artifacts",
                lambda r: [Artifact.from_json(a) for a in core.json_of(r)["items"]],
                params=core.params(kind=kind))


def get_artifact(artifact_id: str) -> Call[Artifact]:
    return Call("GET", f"/v1/artifacts/{_p(artifact_id)}", lambda r: core.one(r, Artifact))


def download_artifact(artifact_id: str) -> Call[bytes]:
    return Call("GET", f"/v1/artifacts/{_p(artifact_id)}/content", _bytes)


# -- the HTTP worker protocol ---------------------------------------------------------------
def claim(body: dict[str, Any]) -> Call[list[Claimed]]:
    return Call("POST", "/v1/workers/claim",
                lambda r: [Claimed.from_json(c) for c in core.json_of(r)["items"]], json=body)


def worker_call(task_id: str, action: str, body: dict[str, Any]) -> Call[Any]:
    """heartbeat | progress | complete | fail | events of a claimed task."""
    return Call("POST", f"/v1/tasks/{_p(task_id)}/{action}", _any, json=body)
