"""Every API route as a `Call`: what to send and how to decode the answer. The sync and async
clients only execute calls, so both cover exactly the same routes."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from creep.client import _core as core
from creep.client.errors import ApiProblem
from creep.client.models import (
    ApiKey,
    Artifact,
    Asset,
    AssetEvent,
    AuditEvent,
    BanPolicy,
    Batch,
    Claimed,
    CreatedKey,
    Execution,
    Lease,
    LedgerEntry,
    LedgerSummary,
    Model,
    Page,
    ReportedEvent,
    Schedule,
    Task,
    TaskEvent,
    Tenant,
)
from creep.domain.ids import uuid4_str

T = TypeVar("T")
M = TypeVar("M", bound=Model)


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
    #: Seconds the server may hold its answer back (a long poll): added to the read timeout.
    wait: float = 0.0
    #: Sent again after a 503: a read or a PUT (by default), or a write the server knows
    #: again by an id the call chose (it answers what it wrote the first time). Any other
    #: write may have been written before the 503 (its answer lost), so it is not resent.
    resend: bool | None = None
    #: What to send instead after a lost answer (a 5xx, a timeout, a dropped connection):
    #: the same request marked as sent again, which the server answers as it answered the
    #: first send (a claim with its claim_id). None: a lost answer is raised.
    again: Call[T] | None = None

    @property
    def resendable(self) -> bool:
        return self.method in _IDEMPOTENT if self.resend is None else self.resend

    def retryable(self, status: int) -> bool:
        """A 429 was refused before the route ran; a 503 only if resending is safe; any 5xx
        of a call that has its `again`."""
        return (status == 429 or (status in core.RETRY_STATUSES and self.resendable)
                or (self.again is not None and status >= 500))


_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT"})


def _p(value: str) -> str:
    """One path segment. `.` and `..` (which quote leaves as they are) are escaped too: as
    dot segments the URL would resolve them away (GET /v1/tasks/. asked for the list)."""
    quoted = quote(value, safe="")
    return quoted.replace(".", "%2E") if quoted in (".", "..") else quoted


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


def _none(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise core.problem(response)


def _items(model: type[M]) -> Callable[[httpx.Response], list[M]]:
    """A list answer without paging: `{"items": [...]}`."""
    return lambda r: [model.from_json(x) for x in core.json_of(r)["items"]]


# -- health ---------------------------------------------------------------------------------
def health_live() -> Call[dict[str, Any]]:
    return Call("GET", "/health/live", _dict)


def health_ready() -> Call[dict[str, Any]]:
    return Call("GET", "/health/ready", _dict)


def metrics() -> Call[str]:
    return Call("GET", "/metrics", _text)


# -- tasks ----------------------------------------------------------------------------------
def create_task(body: dict[str, Any]) -> Call[Task]:
    """`body` has its idempotency_key (core.task_body)."""
    return Call("POST", "/v1/tasks", lambda r: core.one(r, Task), json=core.jsonable(body),
                resend=bool(body.get("idempotency_key")))


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
    return Call("PATCH", f"/v1/tasks/{_p(task_id)}", lambda r: core.one(r, Task),
                json=core.jsonable(changes), headers={"If-Match": f'"{expected_version}"'})


def _version_header(expected_version: int | None) -> dict[str, str] | None:
    return None if expected_version is None else {"If-Match": f'"{expected_version}"'}


def delete_task(task_id: str, expected_version: int | None) -> Call[Task]:
    # Sent again after a lost answer, a delete answers the task it deleted (nothing more).
    return Call("DELETE", f"/v1/tasks/{_p(task_id)}", lambda r: core.one(r, Task),
                headers=_version_header(expected_version), resend=True)


def restore_task(task_id: str, expected_version: int | None) -> Call[Task]:
    return Call("POST", f"/v1/tasks/{_p(task_id)}/restore", lambda r: core.one(r, Task),
                headers=_version_header(expected_version), resend=True)


def task_events(task_id: str, after: str | None, limit: int) -> Call[Page[TaskEvent]]:
    return Call("GET", f"/v1/tasks/{_p(task_id)}/events", lambda r: core.page(r, TaskEvent),
                params=core.params(after=after, limit=limit))


def stream_path(task_id: str) -> str:
    return f"/v1/tasks/{_p(task_id)}/events/stream"


# -- batches --------------------------------------------------------------------------------
def create_batch(body: dict[str, Any]) -> Call[Batch]:
    """Every task of `body` has its idempotency_key: sent again, the batch is replayed."""
    return Call("POST", "/v1/batches", lambda r: core.one(r, Batch), json=core.jsonable(body),
                resend=all(t.get("idempotency_key") for t in body["tasks"]))


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


def update_tenant(tenant_id: str, changes: dict[str, Any]) -> Call[Tenant]:
    # Values, not increments: sent again, it sets the same (and writes nothing more).
    return Call("PATCH", f"/v1/tenants/{_p(tenant_id)}", lambda r: core.one(r, Tenant),
                json=core.jsonable(changes), resend=True)


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
def metadata_text(metadata: dict[str, Any] | None) -> str | None:
    """Artifact metadata as JSON text. NaN and the infinities are a ValueError, as in the
    JSON bodies httpx writes (orjson would write them as null); a lone surrogate is sent
    escaped, for the server to name."""
    if metadata is None:
        return None
    return json.dumps(metadata, separators=(",", ":"), allow_nan=False)


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
    """With a claim_id, a claim whose answer was lost is sent again with `"resend": true`:
    the server answers what the first send claimed (else those tasks sat RUNNING until their
    claim expired, then were charged an attempt they never ran)."""
    def call(body: dict[str, Any], again: Call[list[Claimed]] | None) -> Call[list[Claimed]]:
        return Call("POST", CLAIM_PATH,
                    lambda r: [Claimed.from_json(c) for c in core.json_of(r)["items"]],
                    json=core.jsonable(body), wait=float(body.get("wait") or 0), again=again)

    if not body.get("claim_id"):
        return call(body, None)
    return call(body, call({**body, "resend": True}, None))


CLAIM_PATH = "/v1/workers/claim"


def refuses_claim_id(problem: ApiProblem) -> bool:
    """A 422 of a server older than claim_id (or resend), naming only those fields."""
    fields = {str(e.get("field")) for e in problem.errors if isinstance(e, dict)}
    return problem.status == 422 and {"claim_id"} <= fields <= {"claim_id", "resend"}


def worker_call(task_id: str, action: str, body: dict[str, Any]) -> Call[Any]:
    """heartbeat | progress | complete | fail | events | ledger | asset-events | leases of a
    claimed task. A ledger entry or asset event gets its id here when it has none, so it is
    resent safely; progress, an event, complete and fail are not resent after a 503."""
    ident = _WORKER_IDS.get(action)
    if ident is not None:
        body = core.with_id(body, ident)
    return Call("POST", f"/v1/tasks/{_p(task_id)}/{action}", _any, json=core.jsonable(body),
                resend=ident is not None or action in _WORKER_REPEATABLE)


#: Worker routes that write once per id: the id's field.
_WORKER_IDS = {"ledger": "entry_id", "asset-events": "event_id"}
#: Worker routes that may run twice: a heartbeat renews the claim, leases reads.
_WORKER_REPEATABLE = frozenset({"heartbeat", "leases"})


# -- assets and leases ------------------------------------------------------------------------
def create_asset(body: dict[str, Any]) -> Call[Asset]:
    """With an asset_id (chosen here when not given): resent, the asset created answers."""
    return Call("POST", "/v1/assets", lambda r: core.one(r, Asset),
                json=core.jsonable(core.with_id(body, "asset_id", uuid4_str)), resend=True)


def create_assets(bodies: list[dict[str, Any]]) -> Call[list[Asset]]:
    """Up to 1000 in one transaction: all are written or none. Each with an asset_id (chosen
    here when not given): resent, the import is replayed whole."""
    return Call("POST", "/v1/assets", _items(Asset), resend=True, json=core.jsonable(
        [core.with_id(body, "asset_id", uuid4_str) for body in bodies]))


def list_assets(**filters: Any) -> Call[Page[Asset]]:
    return Call("GET", "/v1/assets", lambda r: core.page(r, Asset),
                params=core.params(**filters))


def get_asset(asset_id: str) -> Call[Asset]:
    return Call("GET", f"/v1/assets/{_p(asset_id)}", lambda r: core.one(r, Asset))


def update_asset(asset_id: str, expected_version: int, changes: dict[str, Any]) -> Call[Asset]:
    return Call("PATCH", f"/v1/assets/{_p(asset_id)}", lambda r: core.one(r, Asset),
                json=core.jsonable(changes), headers={"If-Match": f'"{expected_version}"'})


def update_assets(items: list[tuple[str, int, dict[str, Any]]]) -> Call[list[Asset]]:
    """(asset_id, expected_version, changes) each, up to 1000 in one transaction: all are
    applied or none."""
    body = {"items": [{**changes, "asset_id": asset_id, "expected_version": version}
                      for asset_id, version, changes in items]}
    return Call("PATCH", "/v1/assets", _items(Asset), json=core.jsonable(body))


def set_asset_status(asset_id: str, action: str, reason: str | None) -> Call[Asset]:
    """action: ban | unban | archive."""
    body = {"reason": reason} if reason else None
    return Call("POST", f"/v1/assets/{_p(asset_id)}/{action}", lambda r: core.one(r, Asset),
                json=body)


def asset_events(asset_id: str, event_type: str | None, limit: int,
                 order: str | None = None) -> Call[list[AssetEvent]]:
    return Call("GET", f"/v1/assets/{_p(asset_id)}/events", _items(AssetEvent),
                params=core.params(event_type=event_type, limit=limit, order=order))


def list_ban_policies(**filters: Any) -> Call[Page[BanPolicy]]:
    return Call("GET", "/v1/ban-policies", lambda r: core.page(r, BanPolicy),
                params=core.params(**filters))


def get_ban_policy(sku_category: str, tenant_id: str | None) -> Call[BanPolicy]:
    return Call("GET", f"/v1/ban-policies/{_p(sku_category)}", lambda r: core.one(r, BanPolicy),
                params=core.params(tenant_id=tenant_id))


def set_ban_policy(sku_category: str, body: dict[str, Any],
                   tenant_id: str | None) -> Call[BanPolicy]:
    return Call("PUT", f"/v1/ban-policies/{_p(sku_category)}", lambda r: core.one(r, BanPolicy),
                params=core.params(tenant_id=tenant_id), json=core.jsonable(body))


def delete_ban_policy(sku_category: str, tenant_id: str | None) -> Call[None]:
    return Call("DELETE", f"/v1/ban-policies/{_p(sku_category)}", _none,
                params=core.params(tenant_id=tenant_id))


def list_leases(**filters: Any) -> Call[list[Lease]]:
    return Call("GET", "/v1/leases", _items(Lease), params=core.params(**filters))


def lease_page(**filters: Any) -> Call[Page[Lease]]:
    """list_leases with its `next_cursor` (pass it back as `cursor`, with the same order)."""
    return Call("GET", "/v1/leases", lambda r: core.page(r, Lease),
                params=core.params(**filters))


def release_lease(lease_id: str) -> Call[Lease]:
    return Call("POST", f"/v1/leases/{_p(lease_id)}/release", lambda r: core.one(r, Lease))


# -- asset events -----------------------------------------------------------------------------
def list_events(**filters: Any) -> Call[Page[AssetEvent]]:
    return Call("GET", "/v1/events", lambda r: core.page(r, AssetEvent),
                params=core.params(**filters))


def events_csv(**filters: Any) -> Call[bytes]:
    return Call("GET", "/v1/events", _bytes, params=core.params(format="csv", **filters))


def report_event(body: dict[str, Any]) -> Call[ReportedEvent]:
    """With an event_id (chosen here when not given): resent, the first report answers."""
    return Call("POST", "/v1/events", lambda r: core.one(r, ReportedEvent),
                json=core.jsonable(core.with_id(body, "event_id")), resend=True)


def event_chain(event_id: str) -> Call[list[AssetEvent]]:
    return Call("GET", f"/v1/events/{_p(event_id)}/chain", _items(AssetEvent))


# -- the ledger -------------------------------------------------------------------------------
def list_ledger(**filters: Any) -> Call[Page[LedgerEntry]]:
    return Call("GET", "/v1/ledger", lambda r: core.page(r, LedgerEntry),
                params=core.params(**filters))


def ledger_csv(**filters: Any) -> Call[bytes]:
    return Call("GET", "/v1/ledger", _bytes, params=core.params(format="csv", **filters))


def record_entry(body: dict[str, Any]) -> Call[LedgerEntry]:
    """With an entry_id (chosen here when not given): resent, the first entry answers."""
    return Call("POST", "/v1/ledger", lambda r: core.one(r, LedgerEntry),
                json=core.jsonable(core.with_id(body, "entry_id")), resend=True)


def ledger_summary(**filters: Any) -> Call[LedgerSummary]:
    return Call("GET", "/v1/ledger/summary", lambda r: core.one(r, LedgerSummary),
                params=core.params(**filters))


# -- schedules --------------------------------------------------------------------------------
def create_schedule(body: dict[str, Any]) -> Call[Schedule]:
    return Call("POST", "/v1/schedules", lambda r: core.one(r, Schedule),
                json=core.jsonable(body))


def list_schedules(**filters: Any) -> Call[list[Schedule]]:
    return Call("GET", "/v1/schedules", _items(Schedule), params=core.params(**filters))


def get_schedule(uid: str) -> Call[Schedule]:
    return Call("GET", f"/v1/schedules/{_p(uid)}", lambda r: core.one(r, Schedule))


def update_schedule(uid: str, expected_version: int, changes: dict[str, Any]) -> Call[Schedule]:
    return Call("PATCH", f"/v1/schedules/{_p(uid)}", lambda r: core.one(r, Schedule),
                json=core.jsonable(changes), headers={"If-Match": f'"{expected_version}"'})


def delete_schedule(uid: str) -> Call[None]:
    return Call("DELETE", f"/v1/schedules/{_p(uid)}", _none)


def trigger_schedule(uid: str) -> Call[Execution]:
    return Call("POST", f"/v1/schedules/{_p(uid)}/trigger", lambda r: core.one(r, Execution))


def list_executions(uid: str, **filters: Any) -> Call[Page[Execution]]:
    return Call("GET", f"/v1/schedules/{_p(uid)}/executions",
                lambda r: core.page(r, Execution), params=core.params(**filters))
