"""`Client`: the synchronous Python client of the creep REST API."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import orjson

from creep.client import _core as core
from creep.client import calls
from creep.client.calls import Call
from creep.client.errors import ApiProblem, ClientError, TransportError
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

T = TypeVar("T")
M = TypeVar("M", bound=Model)


class Client:
    """`Client(url, key)`; both default to CREEP_API_URL / CREEP_API_KEY. Problems raise
    `ApiProblem`; 429s and refused connections are retried per `retry` (RetryPolicy), 503s
    too unless the call is a write that could then be written twice (`Call.resendable`)."""

    def __init__(
        self, url: str | None = None, key: str | None = None, *, timeout: float = 30.0,
        retry: core.RetryPolicy | None = None, transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url, self.key = core.resolve(url, key)
        self.retry = retry or core.RetryPolicy()
        self.stats = core.RetryStats()
        #: False once the server refused a claim's claim_id (older than it).
        self.claim_ids = True
        self._http = httpx.Client(base_url=self.url, headers=core.headers(self.key),
                                  timeout=timeout, transport=transport)
        self._sleep: Callable[[float], None] = time.sleep

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------
    def send(self, call: Call[T]) -> T:
        attempt = 0
        sent = call  # becomes call.again once an answer was lost
        while True:
            try:
                response = self._http.request(
                    sent.method, sent.path, params=sent.params, json=sent.json,
                    files=sent.files, data=sent.data, headers=sent.headers,
                    timeout=core.call_timeout(self._http.timeout, sent.wait),
                )
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
                if attempt >= self.retry.max_retries:
                    raise TransportError(f"cannot reach {self.url}: {exc}") from exc
                self._wait(attempt, None, 0)
                attempt += 1
                continue
            except httpx.HTTPError as exc:
                # The server may have run it (a timeout, a dropped connection): only a call
                # it knows again is sent again.
                if call.again is None or attempt >= self.retry.max_retries:
                    raise TransportError(f"{call.method} {call.path}: {exc}") from exc
                self._wait(attempt, None, 0)
                attempt += 1
                sent = call.again
                continue
            if call.retryable(response.status_code) and attempt < self.retry.max_retries:
                self._wait(attempt, core.retry_after(response), response.status_code)
                attempt += 1
                if response.status_code != 429 and call.again is not None:
                    sent = call.again
                continue
            return call.decode(response)

    def _wait(self, attempt: int, retry_after: float | None, status: int) -> None:
        delay = self.retry.delay(attempt, retry_after)
        self.stats.retries += 1
        self.stats.waited += delay
        self.stats.statuses.append(status)
        self._sleep(delay)

    def paginate(self, fetch: Callable[[str | None], Page[M]]) -> Iterator[M]:
        """Every item over all pages: `fetch(cursor)` returns one page."""
        cursor: str | None = None
        while True:
            page = fetch(cursor)
            yield from page.items
            # A page may be short, even empty, and go on (the ledger's filtered pages).
            if not page.next_cursor or page.next_cursor == cursor:
                return
            cursor = page.next_cursor

    # -- health -----------------------------------------------------------------------------
    def health_live(self) -> dict[str, Any]:
        return self.send(calls.health_live())

    def health_ready(self) -> dict[str, Any]:
        return self.send(calls.health_ready())

    def metrics(self) -> str:
        return self.send(calls.metrics())

    # -- tasks ------------------------------------------------------------------------------
    def create_task(self, order: dict[str, Any] | None = None, **fields: Any) -> Task:
        """Submit a task order (an idempotency_key is generated when not given)."""
        return self.send(calls.create_task(core.task_body(order, fields)))

    def list_tasks(self, *, cursor: str | None = None, limit: int = 50,
                   **filters: Any) -> Page[Task]:
        """Filters: status, task_type, task_category, tag, batch_id, project_id, env,
        tenant_id, created_from, created_to, deleted (True: only the deleted tasks)."""
        return self.send(calls.list_tasks(cursor=cursor, limit=limit, **filters))

    def iter_tasks(self, *, page_size: int = 200, **filters: Any) -> Iterator[Task]:
        return self.paginate(lambda c: self.list_tasks(cursor=c, limit=page_size, **filters))

    def get_task(self, task_id: str) -> Task:
        return self.send(calls.get_task(task_id))

    def cancel_task(self, task_id: str, reason: str | None = None) -> Task:
        return self.send(calls.cancel_task(task_id, reason))

    def retry_task(self, task_id: str) -> Task:
        return self.send(calls.retry_task(task_id))

    def delete_task(self, task_id: str, *, expected_version: int | None = None) -> Task:
        """Move a finished task to the recycle bin (ApiProblem 409 `task-not-finished` for
        an unfinished one); a deleted task is answered as it is. With `expected_version`
        (If-Match), a stale version raises ApiProblem 412."""
        return self.send(calls.delete_task(task_id, expected_version))

    def restore_task(self, task_id: str, *, expected_version: int | None = None) -> Task:
        """Take a deleted task out of the recycle bin; one not deleted is answered as is."""
        return self.send(calls.restore_task(task_id, expected_version))

    def update_task(self, task_id: str, expected_version: int, **changes: Any) -> Task:
        """PATCH with If-Match: a stale version raises ApiProblem 412."""
        return self.send(calls.update_task(task_id, expected_version, changes))

    def task_events(self, task_id: str, *, after: str | None = None,
                    limit: int = 500) -> Page[TaskEvent]:
        return self.send(calls.task_events(task_id, after, limit))

    def iter_task_events(self, task_id: str, *, after: str | None = None) -> Iterator[TaskEvent]:
        cursor = after
        while True:
            page = self.task_events(task_id, after=cursor)
            yield from page.items
            if not page.items:
                return
            cursor = page.next_cursor

    def follow_task_events(self, task_id: str, *, after: str | None = None,
                           max_reconnects: int = 10) -> Iterator[TaskEvent]:
        """Server-Sent Events until the task is finished; reconnects with Last-Event-ID (so
        no event is lost or repeated) when the connection drops."""
        cursor = after
        reconnects = refusals = 0
        while True:
            headers = {"Accept": "text/event-stream"}
            if cursor:
                headers["Last-Event-ID"] = cursor
            try:
                with self._http.stream("GET", calls.stream_path(task_id), headers=headers,
                                       timeout=httpx.Timeout(30.0, read=None)) as response:
                    if response.status_code >= 400:
                        response.read()
                        # A 429/503 is waited out per `retry`, as `send` does for any call.
                        if (response.status_code in core.RETRY_STATUSES
                                and refusals < self.retry.max_retries):
                            self._wait(refusals, core.retry_after(response),
                                       response.status_code)
                            refusals += 1
                            continue
                        raise core.problem(response)
                    refusals = 0
                    parser = core.SseParser()
                    for line in response.iter_lines():
                        for event in parser.feed(line):
                            if event.is_stream_end:
                                return
                            if event.id:
                                cursor = event.id
                                reconnects = 0
                                yield TaskEvent.from_json(orjson.loads(event.data))
            except (httpx.TransportError, httpx.RemoteProtocolError) as exc:
                if reconnects >= max_reconnects:
                    raise TransportError(f"event stream of {task_id}: {exc}") from exc
            reconnects += 1
            self._sleep(self.retry.delay(min(reconnects, 4), None))

    def wait_task(self, task_id: str, *, timeout: float = 60.0, poll: float = 0.2) -> Task:
        """Poll until the task is finished (raises TimeoutError after `timeout` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            task = self.get_task(task_id)
            if task.is_terminal:
                return task
            if time.monotonic() > deadline:
                raise TimeoutError(f"task {task_id} is still {task.status}")
            self._sleep(poll)

    # -- batches ----------------------------------------------------------------------------
    def create_batch(self, title: str, tasks: list[dict[str, Any]], *,
                     tenant_id: str | None = None,
                     metadata: dict[str, Any] | None = None) -> Batch:
        """Tasks name each other by `ref` in `depends_on`; every task gets an idempotency
        key when it has none."""
        tasks = [core.task_body(t, {}) for t in tasks]
        return self.send(calls.create_batch(core.batch_body(title, tasks, tenant_id, metadata)))

    def list_batches(self, *, cursor: str | None = None, limit: int = 20) -> Page[Batch]:
        return self.send(calls.list_batches(cursor, limit))

    def iter_batches(self, *, page_size: int = 100) -> Iterator[Batch]:
        return self.paginate(lambda c: self.list_batches(cursor=c, limit=page_size))

    def get_batch(self, batch_id: str) -> Batch:
        return self.send(calls.get_batch(batch_id))

    def cancel_batch(self, batch_id: str) -> Batch:
        return self.send(calls.cancel_batch(batch_id))

    # -- tenants and keys (admin) -----------------------------------------------------------
    def create_tenant(self, tenant_id: str, **settings: Any) -> Tenant:
        """settings: name, rate_limit_per_second, rate_limit_burst, max_active_tasks."""
        body = {"tenant_id": tenant_id, **{k: v for k, v in settings.items() if v is not None}}
        return self.send(calls.create_tenant(body))

    def list_tenants(self, *, cursor: str | None = None, limit: int = 100) -> Page[Tenant]:
        return self.send(calls.list_tenants(cursor, limit))

    def iter_tenants(self, *, page_size: int = 200) -> Iterator[Tenant]:
        return self.paginate(lambda c: self.list_tenants(cursor=c, limit=page_size))

    def get_tenant(self, tenant_id: str) -> Tenant:
        return self.send(calls.get_tenant(tenant_id))

    def update_tenant(self, tenant_id: str, **changes: Any) -> Tenant:
        """Change the fields given: name, rate_limit_per_second, rate_limit_burst,
        max_active_tasks (a limit set to None is the server's default again)."""
        return self.send(calls.update_tenant(tenant_id, changes))

    def create_key(self, name: str, *, tenant_id: str | None = None, admin: bool = False,
                   read_only: bool = False, principal_type: str = "service") -> CreatedKey:
        body = {"name": name, "role": "admin" if admin else "tenant", "tenant_id": tenant_id,
                "read_only": read_only, "principal_type": principal_type}
        return self.send(calls.create_key(body))

    def revoke_key(self, key_id: str) -> ApiKey:
        return self.send(calls.revoke_key(key_id))

    # -- audit and admin --------------------------------------------------------------------
    def list_audit(self, *, cursor: str | None = None, limit: int = 100,
                   **filters: Any) -> Page[AuditEvent]:
        """Filters: resource_type, action, principal, resource_id, request_id, tenant_id,
        from, to (use from_=/to= in Python: from_ is renamed)."""
        if "from_" in filters:
            filters["from"] = filters.pop("from_")
        return self.send(calls.list_audit(cursor=cursor, limit=limit, **filters))

    def iter_audit(self, *, page_size: int = 500, **filters: Any) -> Iterator[AuditEvent]:
        return self.paginate(lambda c: self.list_audit(cursor=c, limit=page_size, **filters))

    def audit_csv(self, **filters: Any) -> bytes:
        return self.send(calls.audit_csv(**filters))

    def get_log_level(self, logger: str = "") -> dict[str, Any]:
        return self.send(calls.get_log_level(logger))

    def set_log_level(self, level: str, logger: str = "") -> dict[str, Any]:
        return self.send(calls.set_log_level(level, logger))

    # -- artifacts --------------------------------------------------------------------------
    def upload_artifact(self, task_id: str, content: bytes, *, kind: str, file_name: str,
                        mime_type: str | None = None,
                        metadata: dict[str, Any] | None = None) -> Artifact:
        meta = calls.metadata_text(metadata)
        return self.send(calls.upload_artifact(task_id, content, kind, file_name, mime_type,
                                               meta))

    def list_artifacts(self, task_id: str, kind: str | None = None) -> list[Artifact]:
        return self.send(calls.list_artifacts(task_id, kind))

    def get_artifact(self, artifact_id: str) -> Artifact:
        return self.send(calls.get_artifact(artifact_id))

    def download_artifact(self, artifact_id: str) -> bytes:
        return self.send(calls.download_artifact(artifact_id))

    # -- assets and leases ------------------------------------------------------------------
    def create_asset(self, asset: dict[str, Any] | None = None, **fields: Any) -> Asset:
        """Add one asset: sku_category, sku_code, attributes, cost_per_lease, currency,
        cooldown_seconds, max_concurrency, ... (an admin key names tenant_id); asset_id (a
        UUID) is chosen per call when not given, so a resend after a lost answer creates
        nothing more. An asset_id of another asset: ApiProblem 409 `idempotency-conflict`."""
        return self.send(calls.create_asset({**(asset or {}), **fields}))

    def create_assets(self, assets: list[dict[str, Any]]) -> list[Asset]:
        """Add up to 1000 assets in one transaction: all are written, or none (ApiProblem 422
        naming each bad one as `[index].field`). Each gets an asset_id when it has none: a
        resend is answered with the assets the first send created."""
        return self.send(calls.create_assets(assets))

    def list_assets(self, *, cursor: str | None = None, limit: int = 100,
                    **filters: Any) -> Page[Asset]:
        """Filters: status, sku_category, sku_code (exact or `prefix.*`), project_id,
        tenant_id."""
        return self.send(calls.list_assets(cursor=cursor, limit=limit, **filters))

    def iter_assets(self, *, page_size: int = 500, **filters: Any) -> Iterator[Asset]:
        return self.paginate(lambda c: self.list_assets(cursor=c, limit=page_size, **filters))

    def get_asset(self, asset_id: str) -> Asset:
        return self.send(calls.get_asset(asset_id))

    def update_asset(self, asset_id: str, expected_version: int, **changes: Any) -> Asset:
        """PATCH with If-Match: fields (health_score, max_concurrency, cost_per_lease, ...)
        and status (status="READY" activates a NEW asset, "SOLD" sells one). A stale version
        raises ApiProblem 412 (`current_version`), an illegal status change 409."""
        return self.send(calls.update_asset(asset_id, expected_version, changes))

    def update_assets(
        self, items: list[tuple[str, int, dict[str, Any]]]
    ) -> list[Asset]:
        """(asset_id, expected_version, changes) each, up to 1000 in one transaction: all are
        applied or none (ApiProblem 422 naming `items[i].field`; 409 on a stale version)."""
        return self.send(calls.update_assets(items))

    def set_ban_policy(
        self, sku_category: str, *, max_failures: int, window_seconds: int,
        failure_event_types: list[str] | None = None, tenant_id: str | None = None,
    ) -> BanPolicy:
        """Create or replace the auto-ban policy of `sku_category` (PUT): `max_failures`
        failure events on one asset within `window_seconds` ban it. It applies from an
        asset's next failure. tenant_id: required with an admin key."""
        body = {"max_failures": max_failures, "window_seconds": window_seconds,
                "failure_event_types": failure_event_types}
        return self.send(calls.set_ban_policy(sku_category, body, tenant_id))

    def get_ban_policy(self, sku_category: str, *, tenant_id: str | None = None) -> BanPolicy:
        """ApiProblem 404 when there is none."""
        return self.send(calls.get_ban_policy(sku_category, tenant_id))

    def list_ban_policies(self, *, tenant_id: str | None = None, cursor: str | None = None,
                          limit: int = 100) -> Page[BanPolicy]:
        return self.send(calls.list_ban_policies(tenant_id=tenant_id, cursor=cursor,
                                                    limit=limit))

    def iter_ban_policies(self, *, tenant_id: str | None = None,
                          page_size: int = 500) -> Iterator[BanPolicy]:
        return self.paginate(lambda c: self.list_ban_policies(tenant_id=tenant_id, cursor=c,
                                                              limit=page_size))

    def delete_ban_policy(self, sku_category: str, *, tenant_id: str | None = None) -> None:
        """Stop auto-banning assets of `sku_category` (banned ones stay BANNED); ApiProblem
        404 when there is none."""
        self.send(calls.delete_ban_policy(sku_category, tenant_id))

    def ban_asset(self, asset_id: str, reason: str | None = None) -> Asset:
        """BANNED: its active leases are revoked."""
        return self.send(calls.set_asset_status(asset_id, "ban", reason))

    def unban_asset(self, asset_id: str, reason: str | None = None) -> Asset:
        return self.send(calls.set_asset_status(asset_id, "unban", reason))

    def archive_asset(self, asset_id: str, reason: str | None = None) -> Asset:
        """ARCHIVED: never leased again."""
        return self.send(calls.set_asset_status(asset_id, "archive", reason))

    def asset_events(self, asset_id: str, *, event_type: str | None = None,
                     limit: int = 1000, order: str | None = None) -> list[AssetEvent]:
        """One asset's events, oldest first, or the latest `limit` with order="newest"."""
        return self.send(calls.asset_events(asset_id, event_type, limit, order))

    def list_leases(self, *, task_id: str | None = None, asset_id: str | None = None,
                    status: str | None = None, tenant_id: str | None = None,
                    limit: int = 1000, order: str | None = None) -> list[Lease]:
        """Oldest first, or newest first with order="newest" (by acquired_at)."""
        return self.send(calls.list_leases(task_id=task_id, asset_id=asset_id, status=status,
                                           tenant_id=tenant_id, limit=limit, order=order))

    def iter_leases(self, *, page_size: int = 1000, **filters: Any) -> Iterator[Lease]:
        """Every lease over all pages (list_leases gives one); filters as list_leases'."""
        return self.paginate(lambda c: self.send(
            calls.lease_page(cursor=c, limit=page_size, **filters)))

    def release_lease(self, lease_id: str) -> Lease:
        """Release an ACTIVE lease by hand."""
        return self.send(calls.release_lease(lease_id))

    # -- asset events -----------------------------------------------------------------------
    def list_events(self, *, cursor: str | None = None, limit: int = 100,
                    **filters: Any) -> Page[AssetEvent]:
        """Filters: correlation_id, asset_id, task_id, event_type, tenant_id."""
        return self.send(calls.list_events(cursor=cursor, limit=limit, **filters))

    def iter_events(self, *, page_size: int = 1000, **filters: Any) -> Iterator[AssetEvent]:
        return self.paginate(lambda c: self.list_events(cursor=c, limit=page_size, **filters))

    def events_csv(self, **filters: Any) -> bytes:
        return self.send(calls.events_csv(**filters))

    def report_event(self, event_type: str, asset_id: str, **fields: Any) -> ReportedEvent:
        """Report an event about an asset (seed 001 fields); a `new_status` other than the
        asset's is applied (e.g. BANNED: its leases revoked), the auto-ban policy applies, and
        `caused` lists what followed."""
        return self.send(calls.report_event(
            {"event_type": event_type, "asset_id": asset_id, **fields}))

    def event_chain(self, event_id: str) -> list[AssetEvent]:
        """The event, then its cause, and so on up to the root."""
        return self.send(calls.event_chain(event_id))

    # -- the ledger -------------------------------------------------------------------------
    def list_ledger(self, *, cursor: str | None = None, limit: int = 100,
                    **filters: Any) -> Page[LedgerEntry]:
        """Filters: project_id, task_id, entry_type, tenant_id, from_, to (datetimes)."""
        return self.send(calls.list_ledger(cursor=cursor, limit=limit, **filters))

    def iter_ledger(self, *, page_size: int = 1000, **filters: Any) -> Iterator[LedgerEntry]:
        return self.paginate(lambda c: self.list_ledger(cursor=c, limit=page_size, **filters))

    def ledger_csv(self, **filters: Any) -> bytes:
        return self.send(calls.ledger_csv(**filters))

    def record_entry(self, entry_type: str, amount: Decimal | int | str, currency: str,
                     **fields: Any) -> LedgerEntry:
        """REVENUE, REFUND or ADJUSTMENT; fields: tenant_id, project_id, task_id, asset_id,
        lease_id, description, occurred_at, entry_id (a UUID; one is chosen per call when
        not given, so a resend after a lost answer writes nothing more). Over a task's
        budget: ApiProblem 409 `budget-exceeded`; a deleted task's: 409 `task-deleted`; an
        entry_id of another entry: 409 `idempotency-conflict`."""
        return self.send(calls.record_entry(
            {"entry_type": entry_type, "amount": amount, "currency": currency, **fields}))

    def ledger_summary(self, group_by: str | list[str] = "currency",
                       **filters: Any) -> LedgerSummary:
        """Cost, revenue and margin per group (tenant_id, project_id, task_id; currency is
        always one). Filters: project_id, task_id, tenant_id, from_, to."""
        return self.send(calls.ledger_summary(group_by=group_by, **filters))

    # -- schedules --------------------------------------------------------------------------
    def create_schedule(self, schedule: dict[str, Any] | None = None,
                        **fields: Any) -> Schedule:
        """name, type and one of cron_expr, interval (seconds) or next_run (a one-off)."""
        return self.send(calls.create_schedule({**(schedule or {}), **fields}))

    def list_schedules(self, *, enabled: bool | None = None, task_type: str | None = None,
                       tenant_id: str | None = None, limit: int = 1000) -> list[Schedule]:
        return self.send(calls.list_schedules(enabled=enabled, type=task_type,
                                              tenant_id=tenant_id, limit=limit))

    def get_schedule(self, uid: str) -> Schedule:
        """By uid (a tenant key may also give its schedule's name)."""
        return self.send(calls.get_schedule(uid))

    def update_schedule(self, uid: str, expected_version: int, **changes: Any) -> Schedule:
        """PATCH with If-Match: a stale version raises ApiProblem 412."""
        return self.send(calls.update_schedule(uid, expected_version, changes))

    def delete_schedule(self, uid: str) -> None:
        self.send(calls.delete_schedule(uid))

    def trigger_schedule(self, uid: str) -> Execution:
        """Fire it now (trigger_type manual)."""
        return self.send(calls.trigger_schedule(uid))

    def list_executions(self, uid: str, *, cursor: str | None = None, limit: int = 100,
                        **filters: Any) -> Page[Execution]:
        """Newest first. Filters: state, trigger_type, started_from, started_to."""
        return self.send(calls.list_executions(uid, cursor=cursor, limit=limit, **filters))

    def iter_executions(self, uid: str, *, page_size: int = 100,
                        **filters: Any) -> Iterator[Execution]:
        return self.paginate(
            lambda c: self.list_executions(uid, cursor=c, limit=page_size, **filters))

    # -- HTTP worker protocol ---------------------------------------------------------------
    def claim(self, task_types: list[str], *, max_tasks: int = 1, wait: float = 0,
              claim_ttl: float = 30, worker_id: str | None = None,
              claim_id: str | None = None, resend: bool = False) -> list[Claimed]:
        """Claim up to `max_tasks` tasks. The claim carries `claim_id` (a UUID, generated
        when not given; the `claim_token` of what it claims): when its answer is lost (a 5xx,
        a timeout, a dropped connection) it is sent again, per `retry`, with `resend`, and
        answers what the server claimed for it. After the call raised, the same `claim_id`
        with `resend=True` answers that claim's tasks (those still running under it) and
        claims nothing more."""
        if resend and claim_id is None:
            raise ClientError("claim(resend=True) needs the claim_id of the claim to resend")
        body = core.claim_body(task_types, max_tasks, wait, claim_ttl, worker_id, claim_id,
                               resend, self.claim_ids)
        try:
            return self.send(calls.claim(body))
        except ApiProblem as exc:
            if claim_id is not None or "claim_id" not in body or not calls.refuses_claim_id(exc):
                raise
        self.claim_ids = False  # a server older than claim_id: claim without one
        return self.send(calls.claim({k: v for k, v in body.items() if k != "claim_id"}))

    def worker_action(self, task_id: str, action: str, claim_token: str,
                      **fields: Any) -> Any:
        """action: heartbeat | progress | complete | fail | events (see the API docs)."""
        return self.send(calls.worker_call(task_id, action,
                                           {"claim_token": claim_token, **fields}))


__all__ = ["ApiProblem", "Client"]
