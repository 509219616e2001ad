"""Asset pool, leases, ledger and asset events: one implementation for both backends.

A mixin: SqliteStore and PostgresStore inherit it (through storage/sqlite_assets.py and
storage/postgres_assets.py), which give it a dialect, a write transaction (`_atx`) and a
read connection (`_aread`). Every asset change writes its AssetEvent in the same
transaction; assets are always locked in asset_id order so concurrent writers cannot
deadlock; the claim step locks with SKIP LOCKED on PostgreSQL, so it never waits.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from creep.domain.asset import (
    LEASABLE,
    REVOKING,
    AssetFilter,
    AssetMaintenanceReport,
    AssetSnapshot,
    AssetSpec,
    AssetStatus,
    check_asset_transition,
    next_health,
)
from creep.domain.asset_event import (
    EVENT_FIELDS,
    AssetEvent,
    AssetEventType,
    BanPolicy,
    Severity,
    Source,
)
from creep.domain.errors import NotFound, ValidationError, VersionConflict
from creep.domain.ids import uuid7
from creep.domain.lease import Lease, LeaseStatus, check_lease_transition
from creep.domain.ledger import (
    BudgetExceeded,
    EntryType,
    LedgerEntry,
    LedgerSummary,
    cost_effect,
    summarise,
)
from creep.domain.matching import Candidate, Demand, Match, match_all
from creep.storage.asset_dialect import Dialect
from creep.storage.common import TASK_SELECT

ASSET_COLS = (
    "asset_id, tenant_id, project_id, env, sku_category, sku_code, attributes, status, "
    "max_concurrency, current_concurrency, health_score, cooldown_seconds, cooldown_until, "
    "cost_per_lease, currency, version, created_at, updated_at"
)
LEASE_COLS = (
    "lease_id, tenant_id, task_id, asset_id, status, acquired_at, expires_at, released_at, "
    "cost, currency, claim_token, hint_index"
)
LEDGER_COLS = (
    "entry_id, tenant_id, project_id, task_id, asset_id, lease_id, entry_type, amount, "
    "currency, description, occurred_at, recorded_at"
)
EVENT_COLS = ", ".join(EVENT_FIELDS)
#: Most hinted tasks looked at per claim: blocked hinted tasks at the head do not hide
#: matchable ones behind them (no head-of-line blocking) within this bound.
HINTED_SCAN_MAX = 2048
#: Most candidate assets loaded per (tenant, category, sku pattern, currency) in one claim.
CANDIDATES_PER_KIND = 500


@dataclass(slots=True)
class _TaskRef:
    """What an asset event needs to know of the task behind it."""

    task_id: str
    tenant_id: str
    project_id: str | None
    env: str | None
    correlation_id: str | None
    keep_leases: bool = False
    lease_ids: list[str] = field(default_factory=list)
    timeout_ms: int = 0
    attempt: int = 0


@dataclass(slots=True)
class _Pending:
    """Asset changes and events collected in one transaction, written at its end."""

    assets: dict[str, AssetSnapshot] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    events: list[AssetEvent] = field(default_factory=list)
    #: lease_id -> the status it ends in (written by _flush).
    ended: dict[str, LeaseStatus] = field(default_factory=dict)


class AssetStoreMixin:
    _adialect: Dialect

    # -- provided by the backend -----------------------------------------------------------

    def _atx(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _aread(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _capacity_freed(self, conn: Any) -> None:
        """Leases ended: wake workers whose hinted tasks waited for capacity."""

    def _after_fail_tasks(self, conn: Any, task_ids: list[str], now: datetime) -> None:
        """Cancel the dependants of tasks failed here (the backend's own cascade)."""
        raise NotImplementedError

    # -- small helpers ---------------------------------------------------------------------

    def _x(self, conn: Any, sql: str, params: Sequence[Any] = ()) -> Any:
        return conn.execute(self._adialect.q(sql), params)

    def _many(self, conn: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._adialect.many(conn, self._adialect.q(sql), rows)

    def _asset(self, r: Sequence[Any]) -> AssetSnapshot:
        d = self._adialect
        return AssetSnapshot(
            asset_id=r[0], tenant_id=r[1], project_id=r[2], env=r[3], sku_category=r[4],
            sku_code=r[5], attributes=d.from_js(r[6]), status=AssetStatus(r[7]),
            max_concurrency=r[8], current_concurrency=r[9], health_score=r[10],
            cooldown_seconds=r[11], cooldown_until=d.from_ts(r[12]),
            cost_per_lease=d.from_dec(r[13]), currency=r[14], version=r[15],
            created_at=d.from_ts(r[16]) or datetime.min, updated_at=d.from_ts(r[17])
            or datetime.min,
        )

    def _lease(self, r: Sequence[Any]) -> Lease:
        d = self._adialect
        return Lease(
            lease_id=r[0], tenant_id=r[1], task_id=r[2], asset_id=r[3],
            status=LeaseStatus(r[4]), acquired_at=d.from_ts(r[5]) or datetime.min,
            expires_at=d.from_ts(r[6]), released_at=d.from_ts(r[7]), cost=d.from_dec(r[8]),
            currency=r[9], claim_token=str(r[10]), hint_index=r[11],
        )

    def _entry(self, r: Sequence[Any]) -> LedgerEntry:
        d = self._adialect
        return LedgerEntry(
            entry_id=r[0], tenant_id=r[1], project_id=r[2], task_id=r[3], asset_id=r[4],
            lease_id=r[5], entry_type=EntryType(r[6]), amount=d.from_dec(r[7]),
            currency=r[8], description=r[9], occurred_at=d.from_ts(r[10]) or datetime.min,
            recorded_at=d.from_ts(r[11]) or datetime.min,
        )

    def _event(self, r: Sequence[Any]) -> AssetEvent:
        d = self._adialect
        v = dict(zip(EVENT_FIELDS, r, strict=True))
        v["severity"] = None if v["severity"] is None else Severity(v["severity"])
        v["retryable"] = None if v["retryable"] is None else bool(v["retryable"])
        v["occurred_at"] = d.from_ts(v["occurred_at"])
        v["recorded_at"] = d.from_ts(v["recorded_at"])
        v["tags"] = d.from_js(v["tags"])
        v["context"] = d.from_js(v["context"])
        return AssetEvent(**v)

    def _event_row(self, e: AssetEvent) -> tuple[Any, ...]:
        """In EVENT_FIELDS order (checked once at import, below)."""
        d = self._adialect
        return (
            e.event_id, e.tenant_id, e.project_id, e.env, e.asset_id, e.task_id, e.lease_id,
            e.correlation_id, e.causation_id, e.event_type, e.source,
            None if e.severity is None else e.severity.value, e.old_status, e.new_status,
            e.message, e.error_code, e.error_message, e.provider_status, e.http_status,
            e.latency_ms, e.retryable, d.ts(e.occurred_at), d.ts(e.recorded_at), d.js(e.tags),
            d.js(e.context), e.version,
        )

    def _emit(self, conn: Any, events: Sequence[AssetEvent]) -> None:
        self._adialect.bulk_insert(
            conn, "asset_events", EVENT_FIELDS, [self._event_row(e) for e in events]
        )

    @staticmethod
    def _new_event(
        asset: AssetSnapshot, event_type: str, now: datetime, *, task: _TaskRef | None = None,
        lease_id: str | None = None, causation_id: str | None = None,
        source: str = Source.CONTROL_PLANE, severity: Severity = Severity.INFO,
        old_status: str | None = None, new_status: str | None = None,
        message: str | None = None, **extra: Any,
    ) -> AssetEvent:
        return AssetEvent(
            event_id=uuid7(), tenant_id=asset.tenant_id,
            project_id=task.project_id if task else asset.project_id,
            env=task.env if task else asset.env, asset_id=asset.asset_id,
            task_id=task.task_id if task else None, lease_id=lease_id,
            correlation_id=task.correlation_id if task else None, causation_id=causation_id,
            event_type=str(event_type), source=str(source), severity=severity,
            old_status=old_status or asset.status.value,
            new_status=new_status or asset.status.value, message=message,
            error_code=extra.get("error_code"), error_message=extra.get("error_message"),
            provider_status=extra.get("provider_status"), http_status=extra.get("http_status"),
            latency_ms=extra.get("latency_ms"), retryable=extra.get("retryable"),
            occurred_at=now, recorded_at=now, tags=list(extra.get("tags", [])),
            context=dict(extra.get("context", {})), version=1,
        )

    def _lock_assets(
        self, conn: Any, asset_ids: Sequence[str], pending: _Pending
    ) -> dict[str, AssetSnapshot]:
        """Load (and on PostgreSQL lock, in asset_id order) assets not yet in `pending`."""
        d = self._adialect
        missing = sorted({a for a in asset_ids if a not in pending.assets})
        if missing:
            rows = self._x(
                conn,
                f"SELECT {ASSET_COLS} FROM assets WHERE {d.in_ids('asset_id')} "
                f"ORDER BY asset_id{d.lock}",
                (d.ids(missing),),
            ).fetchall()
            for r in rows:
                pending.assets[r[0]] = self._asset(r)
        return pending.assets

    def _flush(self, conn: Any, pending: _Pending, now: datetime) -> None:
        """Write what the transaction decided: lease ends, asset rows, events (one round
        trip on PostgreSQL: the writes are pipelined)."""
        d = self._adialect
        with d.pipeline(conn):
            self._write_pending(conn, pending, now)

    def _write_pending(self, conn: Any, pending: _Pending, now: datetime) -> None:
        d = self._adialect
        if pending.ended:
            d.bulk_update(
                conn, "leases", "lease_id", ("status", "released_at"),
                [(st.value, d.ts(now), lease_id) for lease_id, st in sorted(pending.ended.items())],
                where="leases.status = 'ACTIVE'",
            )
            pending.ended.clear()
        rows = []
        for asset_id in sorted(pending.dirty):
            a = pending.assets[asset_id]
            rows.append((
                a.status.value, a.current_concurrency, a.health_score, d.ts(a.cooldown_until),
                d.ts(now), asset_id,
            ))
        d.bulk_update(
            conn, "assets", "asset_id",
            ("status", "current_concurrency", "health_score", "cooldown_until", "updated_at"),
            rows, fixed="version = assets.version + 1",
        )
        for asset_id in pending.dirty:
            a = pending.assets[asset_id]
            a.version += 1
            a.updated_at = now
        pending.dirty.clear()
        self._emit(conn, pending.events)
        pending.events.clear()

    def _set_status(
        self, asset: AssetSnapshot, new: AssetStatus, pending: _Pending, now: datetime
    ) -> str:
        """Apply a status change to the in-memory snapshot; returns the old status."""
        old = asset.status
        check_asset_transition(old, new)
        asset.status = new
        pending.dirty.add(asset.asset_id)
        return old.value

    def _task_refs(self, conn: Any, task_ids: Sequence[str]) -> dict[str, _TaskRef]:
        d = self._adialect
        if not task_ids:
            return {}
        rows = self._x(
            conn,
            "SELECT task_id, tenant_id, project_id, env, correlation_id, constraints FROM tasks "
            f"WHERE {d.in_ids('task_id')}",
            (d.ids(sorted(set(task_ids))),),
        ).fetchall()
        return {
            r[0]: _TaskRef(r[0], r[1], r[2], r[3], r[4],
                           keep_leases=d.from_js(r[5]).get("keep_leases") is True)
            for r in rows
        }

    # -- ending leases ---------------------------------------------------------------------

    def _end_leases(
        self, conn: Any, leases: Sequence[Lease], status: LeaseStatus, pending: _Pending,
        now: datetime, tasks: Mapping[str, _TaskRef], causes: Mapping[str, str | None],
        *, touch_assets: bool = True,
    ) -> None:
        """End active leases: give the concurrency back (COOLING when an asset with a cooldown
        becomes idle) and write RELEASED / LEASE_EXPIRED / LEASE_REVOKED events."""
        active = [lease for lease in leases
                  if lease.status is LeaseStatus.ACTIVE and lease.lease_id not in pending.ended]
        if not active:
            return
        for lease in active:
            check_lease_transition(lease.status, status)
            pending.ended[lease.lease_id] = status
        assets = self._lock_assets(conn, [lease.asset_id for lease in active], pending)
        event_type = {
            LeaseStatus.RELEASED: AssetEventType.RELEASED,
            LeaseStatus.EXPIRED: AssetEventType.LEASE_EXPIRED,
            LeaseStatus.REVOKED: AssetEventType.LEASE_REVOKED,
        }[status]
        for lease in sorted(active, key=lambda x: x.asset_id):
            asset = assets[lease.asset_id]
            lease.status = status
            lease.released_at = now
            old = asset.status.value
            if touch_assets:
                asset.current_concurrency = max(0, asset.current_concurrency - 1)
                pending.dirty.add(asset.asset_id)
                if asset.current_concurrency == 0 and asset.status is AssetStatus.IN_USE:
                    target = (
                        AssetStatus.COOLING if asset.cooldown_seconds > 0 else AssetStatus.READY
                    )
                    self._set_status(asset, target, pending, now)
            ended = self._new_event(
                asset, event_type, now, task=tasks.get(lease.task_id), lease_id=lease.lease_id,
                causation_id=causes.get(lease.lease_id), old_status=old,
                severity=Severity.INFO if status is LeaseStatus.RELEASED else Severity.WARN,
                message=f"lease {status.value.lower()}",
            )
            pending.events.append(ended)
            if touch_assets and asset.status is AssetStatus.COOLING and old != "COOLING":
                asset.cooldown_until = now + timedelta(seconds=asset.cooldown_seconds)
                pending.events.append(self._new_event(
                    asset, AssetEventType.COOLING_START, now, task=tasks.get(lease.task_id),
                    lease_id=lease.lease_id, causation_id=ended.event_id, old_status="IN_USE",
                    message=f"cooling for {asset.cooldown_seconds}s",
                    context={"cooldown_until": asset.cooldown_until.isoformat()},
                ))

    def _leases_with_tasks(
        self, conn: Any, where: str, params: Sequence[Any]
    ) -> tuple[list[Lease], dict[str, _TaskRef]]:
        """Leases (columns prefixed l.) with what events need of their tasks, in one read."""
        d = self._adialect
        cols = ", ".join(f"l.{c}" for c in LEASE_COLS.split(", "))
        rows = self._x(
            conn,
            f"SELECT {cols}, t.project_id, t.env, t.correlation_id, t.constraints "
            f"FROM leases l JOIN tasks t ON t.task_id = l.task_id WHERE {where} "
            "ORDER BY l.asset_id, l.lease_id",
            params,
        ).fetchall()
        leases = [self._lease(r[:12]) for r in rows]
        refs = {
            r[2]: _TaskRef(r[2], r[1], r[12], r[13], r[14],
                           keep_leases=d.from_js(r[15]).get("keep_leases") is True)
            for r in rows
        }
        return leases, refs

    def _leases_where(self, conn: Any, where: str, params: Sequence[Any]) -> list[Lease]:
        rows = self._x(
            conn, f"SELECT {LEASE_COLS} FROM leases WHERE {where} ORDER BY asset_id, lease_id",
            params,
        ).fetchall()
        return [self._lease(r) for r in rows]

    # -- hooks called from the task paths --------------------------------------------------

    def _claim_hinted(
        self, conn: Any, worker_id: str, token: str, task_types: Sequence[str], limit: int,
        now: datetime, claim_ttl: float,
    ) -> list[Sequence[Any]]:
        """The claim step for tasks with resource_hints, inside the claim transaction: match
        and lease all hints of a task, or leave it QUEUED. Returns claimed task rows in the
        backend's claim shape (TASK_SELECT columns, then deadline_at)."""
        d = self._adialect
        page = max(32, limit)
        refs: dict[str, _TaskRef] = {}
        pool: dict[str, Candidate] = {}
        snapshots: dict[str, AssetSnapshot] = {}
        kinds: set[tuple[str, str, str | None, str]] = set()
        claimed: list[Match] = []
        over_budget: list[str] = []
        # Page through hinted tasks in claim order until `limit` are matched: tasks whose
        # resources are busy are passed over (no head-of-line blocking), up to a bound.
        for offset in range(0, HINTED_SCAN_MAX, page):
            rows = self._x(
                conn,
                "SELECT task_id, tenant_id, project_id, env, correlation_id, currency, "
                "max_total_cost, resource_hints, constraints, lease_ids, timeout_ms, attempt "
                "FROM tasks "
                "WHERE status = 'QUEUED' AND has_hints = true AND run_after <= ? AND "
                f"{d.in_texts('task_type')} ORDER BY priority DESC, created_at "
                f"LIMIT ? OFFSET ?{d.skip_locked}",
                (d.ts(now), d.texts(task_types), page, offset),
            ).fetchall()
            demands: list[Demand] = []
            for (task_id, tenant, project, env, corr, currency, budget, hints, cons, held,
                 timeout_ms, attempt) in rows:
                refs[task_id] = _TaskRef(task_id, tenant, project, env, corr,
                                         lease_ids=d.from_js(held), timeout_ms=timeout_ms,
                                         attempt=attempt)
                constraints = d.from_js(cons)
                demands.append(Demand(
                    task_id=task_id, tenant_id=tenant, currency=currency,
                    hints=d.from_js(hints),
                    min_health_score=float(constraints.get("min_health_score") or 0),
                    max_total_cost=None if budget is None else d.from_dec(budget),
                ))
            self._fill_spent(conn, [x for x in demands if x.max_total_cost is not None])
            kinds_before = len(kinds)
            self._load_candidates(conn, demands, kinds, pool, snapshots)
            for m in match_all(demands, list(pool.values()), limit - len(claimed)):
                if m.picks:
                    claimed.append(m)
                elif m.refusal == "BUDGET_EXCEEDED":
                    over_budget.append(m.task_id)
            if len(claimed) >= limit or len(rows) < page:
                break
            if not any(c.spare > 0 for c in pool.values()) and len(kinds) == kinds_before:
                break  # the pool is used up: looking further cannot match anything

        if over_budget:
            self._fail_queued(
                conn, over_budget, "BUDGET_EXCEEDED",
                "leasing the matched assets would exceed max_total_cost", now,
            )
        if not claimed:
            return []
        return self._lease_and_claim(
            conn, claimed, refs, snapshots, worker_id, token, now, claim_ttl
        )

    def _fill_spent(self, conn: Any, demands: Sequence[Demand]) -> None:
        if not demands:
            return
        d = self._adialect
        by_id = {x.task_id: x for x in demands}
        for task_id, entry_type, amount in self._x(
            conn,
            "SELECT task_id, entry_type, amount FROM ledger_entries "
            f"WHERE {d.in_ids('task_id')}",
            (d.ids(list(by_id)),),
        ).fetchall():
            by_id[task_id].spent += cost_effect(entry_type, d.from_dec(amount))

    def _load_candidates(
        self, conn: Any, demands: Sequence[Demand],
        kinds: set[tuple[str, str, str | None, str]], pool: dict[str, Candidate],
        snapshots: dict[str, AssetSnapshot],
    ) -> None:
        """Load the leasable assets of each kind the demands ask for that is not loaded yet
        (without locks: the picked ones are locked afterwards)."""
        wanted: set[tuple[str, str, str | None, str]] = set()
        for x in demands:
            for hint in x.hints:
                wanted.add((x.tenant_id, hint["sku_category"], hint.get("sku_code"), x.currency))
        for tenant, category, code, currency in sorted(wanted - kinds, key=str):
            kinds.add((tenant, category, code, currency))
            where = ("tenant_id = ? AND sku_category = ? AND currency = ? AND "
                     "status IN ('READY', 'IN_USE') AND current_concurrency < max_concurrency")
            params: list[Any] = [tenant, category, currency]
            if code is not None and code.endswith(".*"):
                where += " AND substr(sku_code, 1, ?) = ?"
                params += [len(code) - 1, code[:-1]]
            elif code is not None:
                where += " AND sku_code = ?"
                params.append(code)
            params.append(CANDIDATES_PER_KIND)
            for r in self._x(
                conn,
                f"SELECT {ASSET_COLS} FROM assets WHERE {where} "
                "ORDER BY health_score DESC, asset_id LIMIT ?",
                params,
            ).fetchall():
                if r[0] in pool:
                    continue
                a = self._asset(r)
                snapshots[a.asset_id] = a
                pool[a.asset_id] = Candidate(
                    asset_id=a.asset_id, tenant_id=a.tenant_id, sku_category=a.sku_category,
                    sku_code=a.sku_code, attributes=a.attributes,
                    max_concurrency=a.max_concurrency,
                    current_concurrency=a.current_concurrency, health_score=a.health_score,
                    cost_per_lease=a.cost_per_lease, currency=a.currency, status=a.status.value,
                )

    def _lease_and_claim(
        self, conn: Any, matches: Sequence[Match], refs: Mapping[str, _TaskRef],
        snapshots: Mapping[str, AssetSnapshot], worker_id: str, token: str, now: datetime,
        claim_ttl: float,
    ) -> list[Sequence[Any]]:
        d = self._adialect
        expires = now + timedelta(seconds=claim_ttl)
        pending = _Pending()
        picked_ids = sorted({a.asset_id for m in matches for _, a in m.picks})
        if d.lock:
            # Candidates were read without locks (a claim never holds up completions that
            # release assets); now lock the picked ones in asset_id order and keep only the
            # matches that still fit. The CHECK on current_concurrency is the last guard.
            assets = self._lock_assets(conn, picked_ids, pending)
            matches = _still_fitting(matches, assets)
            if not matches:
                return []
        else:
            pending.assets.update(snapshots)  # SQLite: one writer, read in this transaction
            assets = pending.assets
        lease_rows: list[tuple[Any, ...]] = []
        ledger_rows: list[tuple[Any, ...]] = []
        task_rows: list[tuple[Any, ...]] = []
        lease_ids_by_task: dict[str, list[str]] = {}
        for m in matches:
            ref = refs[m.task_id]
            for hint_index, cand in m.picks:
                asset = assets[cand.asset_id]
                lease_id = uuid7()
                lease_ids_by_task.setdefault(m.task_id, []).append(lease_id)
                old = asset.status.value
                asset.current_concurrency += 1
                pending.dirty.add(asset.asset_id)
                if asset.status is AssetStatus.READY:
                    self._set_status(asset, AssetStatus.IN_USE, pending, now)
                lease_rows.append((
                    lease_id, asset.tenant_id, m.task_id, asset.asset_id, "ACTIVE", d.ts(now),
                    d.ts(expires), None, d.dec(asset.cost_per_lease), asset.currency, token,
                    hint_index,
                ))
                pending.events.append(self._new_event(
                    asset, AssetEventType.ALLOCATED, now, task=ref, lease_id=lease_id,
                    old_status=old, message=f"leased to task {m.task_id}",
                    context={"hint_index": hint_index, "worker_id": worker_id},
                ))
                if asset.cost_per_lease > 0:
                    ledger_rows.append((
                        uuid7(), asset.tenant_id, ref.project_id, m.task_id,
                        asset.asset_id, lease_id, "COST", d.dec(asset.cost_per_lease),
                        asset.currency, "lease", d.ts(now), d.ts(now),
                    ))
        for task_id, new_ids in lease_ids_by_task.items():
            ref = refs[task_id]
            deadline = now + timedelta(milliseconds=ref.timeout_ms)
            task_rows.append((
                d.ts(now), d.ts(now), worker_id, token, d.ts(expires), d.ts(deadline),
                d.js([*ref.lease_ids, *new_ids]), task_id,
            ))
        task_ids = list(lease_ids_by_task)
        with d.pipeline(conn):  # one round trip on PostgreSQL
            d.bulk_insert(conn, "leases", LEASE_COLS.split(", "), lease_rows)
            d.bulk_insert(conn, "ledger_entries", LEDGER_COLS.split(", "), ledger_rows)
            d.bulk_update(
                conn, "tasks", "task_id",
                ("started_at", "updated_at", "claimed_by", "claim_token", "claim_expires_at",
                 "deadline_at", "lease_ids"),
                task_rows,
                fixed="status = 'RUNNING', attempt = tasks.attempt + 1, "
                      "task_version = tasks.task_version + 1, cancel_requested = false, "
                      "progress_message = NULL",
                where="tasks.status = 'QUEUED'",
            )
            self._write_pending(conn, pending, now)
            d.bulk_insert(
                conn, "task_events",
                ("task_id", "tenant_id", "event_type", "from_status", "to_status", "attempt",
                 "payload", "created_at"),
                [
                    (t, refs[t].tenant_id, "started", "QUEUED", "RUNNING", refs[t].attempt + 1,
                     d.js({"worker_id": worker_id, "lease_ids": lease_ids_by_task[t]}),
                     d.ts(now))
                    for t in task_ids
                ],
            )
            cur = self._x(
                conn,
                f"SELECT {TASK_SELECT}, deadline_at FROM tasks WHERE {d.in_ids('task_id')}",
                (d.ids(task_ids),),
            )
        rows: list[Sequence[Any]] = cur.fetchall()
        return rows

    def _fail_queued(
        self, conn: Any, task_ids: Sequence[str], code: str, message: str, now: datetime
    ) -> list[str]:
        """QUEUED -> FAILED for tasks that can never run as asked (BUDGET_EXCEEDED,
        NO_RESOURCE), with their task events; dependants are cancelled."""
        d = self._adialect
        if not task_ids:
            return []
        rows = self._x(
            conn,
            "SELECT task_id, tenant_id, attempt FROM tasks WHERE status = 'QUEUED' AND "
            f"{d.in_ids('task_id')}",
            (d.ids(list(task_ids)),),
        ).fetchall()
        self._many(
            conn,
            "UPDATE tasks SET status = 'FAILED', result_code = ?, result_message = ?, "
            "finished_at = ?, updated_at = ?, task_version = task_version + 1 "
            "WHERE task_id = ? AND status = 'QUEUED'",
            [(code, message, d.ts(now), d.ts(now), r[0]) for r in rows],
        )
        self._many(
            conn,
            "INSERT INTO task_events (task_id, tenant_id, event_type, from_status, to_status, "
            "attempt, payload, created_at) VALUES (?, ?, 'failed', 'QUEUED', 'FAILED', ?, ?, ?)",
            [(r[0], r[1], r[2], d.js({"result_code": code, "message": message}), d.ts(now))
             for r in rows],
        )
        failed = [r[0] for r in rows]
        if failed:
            self._after_fail_tasks(conn, failed, now)
        return failed

    def _leases_settle(
        self, conn: Any, done: Sequence[tuple[str, str, str, str]], now: datetime
    ) -> None:
        """After running tasks with leases moved on ((task_id, claim_token, new status,
        task event type)): write TASK_SUCCESS / TASK_FAIL / TASK_TIMEOUT with the health rule
        for each leased asset, and release the claim's active leases (kept on SUCCESS when
        constraints.keep_leases)."""
        d = self._adialect
        if not done:
            return
        leases, tasks = self._leases_with_tasks(
            conn, f"{d.in_ids('l.task_id')} AND {d.in_ids('l.claim_token')}",
            (d.ids([x[0] for x in done]), d.ids([x[1] for x in done])),
        )
        if not leases:
            return
        by_token = {x[1]: x for x in done}
        keep = {t.task_id for t in tasks.values() if t.keep_leases}
        pending = _Pending()
        assets = self._lock_assets(conn, [lease.asset_id for lease in leases], pending)
        causes: dict[str, str | None] = {}
        to_release: list[Lease] = []
        kept: list[str] = []
        for lease in leases:
            task_id, _, status, event_type = by_token[lease.claim_token]
            effect = _effect(status, event_type)
            if lease.status is LeaseStatus.EXPIRED and effect != AssetEventType.TASK_TIMEOUT:
                effect = None  # a lost worker is not the asset's fault
            if effect is not None:
                asset = assets[lease.asset_id]
                before = asset.health_score
                asset.health_score = next_health(before, effect)
                pending.dirty.add(asset.asset_id)
                ev = self._new_event(
                    asset, effect, now, task=tasks.get(task_id), lease_id=lease.lease_id,
                    severity=Severity.INFO if effect == AssetEventType.TASK_SUCCESS
                    else Severity.WARN,
                    message=f"task {status}", context={
                        "health_score_before": before, "health_score_after": asset.health_score,
                    },
                )
                pending.events.append(ev)
                causes[lease.lease_id] = ev.event_id
            if lease.status is LeaseStatus.ACTIVE:
                if status == "SUCCESS" and task_id in keep:
                    kept.append(lease.lease_id)
                else:
                    to_release.append(lease)
        if kept:
            self._many(conn, "UPDATE leases SET expires_at = NULL WHERE lease_id = ?",
                       [(lease_id,) for lease_id in kept])
        self._end_leases(conn, to_release, LeaseStatus.RELEASED, pending, now, tasks, causes)
        self._auto_ban_many(conn, pending, now)
        self._flush(conn, pending, now)
        if to_release:
            self._capacity_freed(conn)

    def _leases_expire(
        self, conn: Any, claims: Sequence[tuple[str, str]], now: datetime
    ) -> None:
        """The rescuer took these claims back: their active leases end EXPIRED."""
        d = self._adialect
        if not claims:
            return
        leases = self._leases_where(
            conn, f"status = 'ACTIVE' AND {d.in_ids('task_id')} AND {d.in_ids('claim_token')}",
            (d.ids([c[0] for c in claims]), d.ids([c[1] for c in claims])),
        )
        if not leases:
            return
        pending = _Pending()
        tasks = self._task_refs(conn, [lease.task_id for lease in leases])
        self._end_leases(conn, leases, LeaseStatus.EXPIRED, pending, now, tasks, {})
        self._flush(conn, pending, now)

    def _leases_renew(self, conn: Any, task_ids: Sequence[str], expires: datetime) -> None:
        """A heartbeat renewed these claims: their leases follow."""
        d = self._adialect
        if task_ids:
            self._x(
                conn,
                f"UPDATE leases SET expires_at = ? WHERE status = 'ACTIVE' AND "
                f"expires_at IS NOT NULL AND {d.in_ids('task_id')}",
                (d.ts(expires), d.ids(task_ids)),
            )

    # -- auto-ban --------------------------------------------------------------------------

    def _policy(self, conn: Any, tenant_id: str, sku_category: str) -> BanPolicy | None:
        row = self._x(
            conn,
            "SELECT tenant_id, sku_category, max_failures, window_seconds, failure_event_types "
            "FROM asset_ban_policies WHERE tenant_id = ? AND sku_category = ?",
            (tenant_id, sku_category),
        ).fetchone()
        if row is None:
            return None
        return BanPolicy(row[0], row[1], row[2], row[3], list(self._adialect.from_js(row[4])))

    def _auto_ban_many(self, conn: Any, pending: _Pending, now: datetime) -> None:
        """Check the auto-ban policy for every failure event collected in `pending`."""
        policies: dict[tuple[str, str], BanPolicy | None] = {}
        for event in list(pending.events):
            asset = pending.assets.get(event.asset_id)
            if asset is None or event.event_type in _NEVER_FAILURES:
                continue
            key = (asset.tenant_id, asset.sku_category)
            if key not in policies:
                policies[key] = self._policy(conn, *key)
            if policies[key] is not None:
                self._maybe_ban(conn, asset, event, pending, now, policies[key])

    def _maybe_ban(
        self, conn: Any, asset: AssetSnapshot, event: AssetEvent, pending: _Pending,
        now: datetime, policy: BanPolicy | None = None,
    ) -> AssetEvent | None:
        if asset.status in REVOKING or AssetStatus.BANNED not in _ban_targets(asset.status):
            return None
        policy = policy or self._policy(conn, asset.tenant_id, asset.sku_category)
        if policy is None or not policy.is_failure(event.event_type):
            return None
        d = self._adialect
        since = event.occurred_at - timedelta(seconds=policy.window_seconds)
        rows = self._x(
            conn,
            "SELECT event_type, occurred_at FROM asset_events WHERE asset_id = ? "
            "AND occurred_at > ? AND occurred_at <= ? AND occurred_at > COALESCE(("
            "SELECT max(occurred_at) FROM asset_events WHERE asset_id = ? "
            "AND event_type = 'UNBANNED'), ?)",
            (asset.asset_id, d.ts(since), d.ts(event.occurred_at), asset.asset_id, d.ts(since)),
        ).fetchall()
        count = sum(1 for r in rows if policy.is_failure(r[0]))
        # Events of this transaction not yet written count too.
        count += sum(
            1 for e in pending.events
            if e.asset_id == asset.asset_id and policy.is_failure(e.event_type)
            and since < e.occurred_at <= event.occurred_at
        )
        if count < policy.max_failures:
            return None
        return self._ban(
            conn, asset, pending, now, event_type=AssetEventType.ASSET_BANNED,
            source=Source.CONTROL_PLANE, cause=event,
            message=f"banned after {count} failures within {policy.window_seconds}s",
            context={"fail_count_window": count, "window_s": policy.window_seconds,
                     "policy_max_failures": policy.max_failures},
        )

    def _ban(
        self, conn: Any, asset: AssetSnapshot, pending: _Pending, now: datetime, *,
        event_type: str, source: str, cause: AssetEvent | None, message: str | None,
        context: dict[str, Any], new_status: AssetStatus = AssetStatus.BANNED,
    ) -> AssetEvent:
        """Move an asset to BANNED/SOLD/ARCHIVED and revoke its active leases."""
        old = self._set_status(asset, new_status, pending, now)
        asset.current_concurrency = 0
        asset.cooldown_until = None
        event = AssetEvent(
            event_id=uuid7(), tenant_id=asset.tenant_id,
            project_id=cause.project_id if cause else asset.project_id,
            env=cause.env if cause else asset.env, asset_id=asset.asset_id,
            task_id=cause.task_id if cause else None, lease_id=cause.lease_id if cause else None,
            correlation_id=cause.correlation_id if cause else None,
            causation_id=cause.event_id if cause else None, event_type=str(event_type),
            source=str(source),
            severity=Severity.ERROR if new_status is AssetStatus.BANNED else Severity.INFO,
            old_status=old, new_status=new_status.value, message=message,
            error_code="E_ASSET_BANNED" if new_status is AssetStatus.BANNED else None,
            error_message=cause.error_message if cause else None,
            provider_status=cause.provider_status if cause else None,
            http_status=cause.http_status if cause else None,
            latency_ms=0 if cause else None, retryable=False if cause else None,
            occurred_at=now, recorded_at=now,
            tags=["ban_wave"] if event_type == AssetEventType.ASSET_BANNED else [],
            context=context, version=1,
        )
        pending.events.append(event)
        leases = self._leases_where(
            conn, "asset_id = ? AND status = 'ACTIVE'", (asset.asset_id,)
        )
        if leases:
            tasks = self._task_refs(conn, [lease.task_id for lease in leases])
            self._end_leases(
                conn, leases, LeaseStatus.REVOKED, pending, now, tasks,
                dict.fromkeys((lease.lease_id for lease in leases), event.event_id),
                touch_assets=False,
            )
        return event

    # -- assets: public --------------------------------------------------------------------

    def asset_create_many(self, specs: Sequence[AssetSpec], now: datetime) -> list[AssetSnapshot]:
        d = self._adialect
        if not specs:
            return []
        snaps = [
            AssetSnapshot(
                asset_id=s.asset_id, tenant_id=s.tenant_id, project_id=s.project_id, env=s.env,
                sku_category=s.sku_category, sku_code=s.sku_code, attributes=s.attributes,
                status=s.status, max_concurrency=s.max_concurrency, current_concurrency=0,
                health_score=s.health_score, cooldown_seconds=s.cooldown_seconds,
                cooldown_until=None, cost_per_lease=s.cost_per_lease, currency=s.currency,
                version=1, created_at=now, updated_at=now,
            )
            for s in specs
        ]
        if len({s.asset_id for s in snaps}) != len(snaps):
            raise ValidationError.single("asset_id", "asset ids in one import must be unique")
        with self._atx() as conn:
            existing = self._x(
                conn, f"SELECT asset_id FROM assets WHERE {d.in_ids('asset_id')}",
                (d.ids([s.asset_id for s in snaps]),),
            ).fetchall()
            if existing:
                raise ValidationError([
                    ("asset_id", f"asset {r[0]} already exists") for r in existing
                ])
            self._many(
                conn,
                f"INSERT INTO assets ({ASSET_COLS}) VALUES ({', '.join('?' * 18)})",
                [
                    (a.asset_id, a.tenant_id, a.project_id, a.env, a.sku_category, a.sku_code,
                     d.js(a.attributes), a.status.value, a.max_concurrency, 0, a.health_score,
                     a.cooldown_seconds, None, d.dec(a.cost_per_lease), a.currency, 1,
                     d.ts(now), d.ts(now))
                    for a in snaps
                ],
            )
            self._emit(conn, [
                self._new_event(a, AssetEventType.IMPORTED, now, old_status=None,
                                new_status=a.status.value, message="asset imported")
                for a in snaps
            ])
        return snaps

    def asset_get(self, asset_id: str, tenant_id: str | None = None) -> AssetSnapshot:
        if not _is_uuid(asset_id):
            raise NotFound("asset", asset_id)
        with self._aread() as conn:
            row = self._x(
                conn, f"SELECT {ASSET_COLS} FROM assets WHERE asset_id = ?", (asset_id,)
            ).fetchone()
        if row is None or (tenant_id is not None and row[1] != tenant_id):
            raise NotFound("asset", asset_id)
        return self._asset(row)

    def asset_list(
        self, flt: AssetFilter, *, after: str | None = None, limit: int = 100
    ) -> list[AssetSnapshot]:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column in ("tenant_id", "status", "sku_category", "project_id"):
            value = getattr(flt, column)
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if flt.sku_code is not None:
            if flt.sku_code.endswith(".*"):
                where.append("substr(sku_code, 1, ?) = ?")
                params += [len(flt.sku_code) - 1, flt.sku_code[:-1]]
            else:
                where.append("sku_code = ?")
                params.append(flt.sku_code)
        if after:
            where.append("asset_id > ?")
            params.append(after)
        params.append(limit)
        with self._aread() as conn:
            rows = self._x(
                conn,
                f"SELECT {ASSET_COLS} FROM assets WHERE {' AND '.join(where)} "
                "ORDER BY asset_id LIMIT ?",
                params,
            ).fetchall()
        return [self._asset(r) for r in rows]

    def asset_update_many(
        self, items: Sequence[tuple[str, int, dict[str, Any]]], now: datetime, *,
        tenant_id: str | None = None,
    ) -> list[AssetSnapshot]:
        """Change assets that still have the version the caller read; all or none."""
        out: list[AssetSnapshot] = []
        with self._atx() as conn:
            pending = _Pending()
            assets = self._lock_assets(conn, [i[0] for i in items], pending)
            for asset_id, expected, changes in items:
                asset = assets.get(asset_id)
                if asset is None or (tenant_id is not None and asset.tenant_id != tenant_id):
                    raise NotFound("asset", asset_id)
                if asset.version != expected:
                    raise VersionConflict("asset", asset_id, expected, asset.version)
                out.append(self._apply_changes(conn, asset, changes, pending, now))
            rows = []
            d = self._adialect
            for asset in out:
                rows.append((
                    asset.project_id, asset.env, asset.sku_code, d.js(asset.attributes),
                    asset.max_concurrency, asset.cooldown_seconds, d.dec(asset.cost_per_lease),
                    asset.currency, asset.asset_id,
                ))
            self._many(
                conn,
                "UPDATE assets SET project_id = ?, env = ?, sku_code = ?, attributes = ?, "
                "max_concurrency = ?, cooldown_seconds = ?, cost_per_lease = ?, currency = ? "
                "WHERE asset_id = ?",
                rows,
            )
            pending.dirty.update(a.asset_id for a in out)
            self._flush(conn, pending, now)
        return [replace(a) for a in out]

    def _apply_changes(
        self, conn: Any, asset: AssetSnapshot, changes: dict[str, Any], pending: _Pending,
        now: datetime,
    ) -> AssetSnapshot:
        status = changes.get("status")
        plain = {k: v for k, v in changes.items() if k != "status"}
        if "max_concurrency" in plain and plain["max_concurrency"] < asset.current_concurrency:
            raise ValidationError.single(
                "max_concurrency",
                f"must be >= current_concurrency ({asset.current_concurrency})",
            )
        for name, value in plain.items():
            setattr(asset, name, value)
        if plain:
            pending.events.append(self._new_event(
                asset, AssetEventType.UPDATED, now, message="asset updated",
                context={"changes": {k: str(v) if isinstance(v, Decimal) else v
                                     for k, v in plain.items()}},
            ))
        if status is not None and status is not asset.status:
            self._change_status(conn, asset, status, pending, now, Source.OPERATOR, None)
        elif status is not None:
            check_asset_transition(asset.status, status)  # a self-transition is an error
        pending.dirty.add(asset.asset_id)
        return asset

    def _change_status(
        self, conn: Any, asset: AssetSnapshot, status: AssetStatus, pending: _Pending,
        now: datetime, source: str, reason: str | None,
    ) -> AssetEvent:
        if status in REVOKING:
            revoke_type = {
                AssetStatus.BANNED: AssetEventType.BANNED, AssetStatus.SOLD: AssetEventType.SOLD,
                AssetStatus.ARCHIVED: AssetEventType.ARCHIVED,
            }[status]
            return self._ban(conn, asset, pending, now, event_type=revoke_type, source=source,
                             cause=None, message=reason, context={}, new_status=status)
        if status is AssetStatus.IN_USE or asset.status is AssetStatus.IN_USE:
            raise ValidationError.single(
                "status", "IN_USE follows the asset's leases; it is not set by hand"
            )
        old = self._set_status(asset, status, pending, now)
        event_type: str
        if old == "BANNED":
            event_type = AssetEventType.UNBANNED
        elif old == "COOLING":
            event_type = AssetEventType.COOLING_END
            asset.cooldown_until = None
        elif status is AssetStatus.COOLING:
            event_type = AssetEventType.COOLING_START
            asset.cooldown_until = now + timedelta(seconds=asset.cooldown_seconds)
        else:
            event_type = f"STATUS_{status.value}"
        event = self._new_event(asset, event_type, now, source=source, old_status=old,
                                message=reason)
        pending.events.append(event)
        return event

    def asset_set_status(
        self, asset_id: str, status: AssetStatus, now: datetime, *,
        tenant_id: str | None = None, reason: str | None = None,
        source: str = Source.OPERATOR,
    ) -> tuple[AssetSnapshot, AssetEvent]:
        """An operator's status change (ban, unban, archive, sell, activate)."""
        with self._atx() as conn:
            pending = _Pending()
            asset = self._lock_assets(conn, [asset_id], pending).get(asset_id)
            if asset is None or (tenant_id is not None and asset.tenant_id != tenant_id):
                raise NotFound("asset", asset_id)
            event = self._change_status(conn, asset, status, pending, now, source, reason)
            self._flush(conn, pending, now)
            if status is AssetStatus.READY:
                self._capacity_freed(conn)
        return replace(asset), event

    def ban_policy_set(self, policy: BanPolicy, now: datetime) -> BanPolicy:
        d = self._adialect
        with self._atx() as conn:
            self._x(conn, "DELETE FROM asset_ban_policies WHERE tenant_id = ? AND sku_category = ?",
                    (policy.tenant_id, policy.sku_category))
            self._x(
                conn,
                "INSERT INTO asset_ban_policies (tenant_id, sku_category, max_failures, "
                "window_seconds, failure_event_types, updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (policy.tenant_id, policy.sku_category, policy.max_failures,
                 policy.window_seconds, d.js(policy.failure_event_types), d.ts(now)),
            )
        return policy

    def ban_policy_get(self, tenant_id: str, sku_category: str) -> BanPolicy | None:
        with self._aread() as conn:
            return self._policy(conn, tenant_id, sku_category)

    # -- leases: public --------------------------------------------------------------------

    def lease_list(
        self, *, tenant_id: str | None = None, task_id: str | None = None,
        asset_id: str | None = None, status: str | None = None, limit: int = 1000,
    ) -> list[Lease]:
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("tenant_id", tenant_id), ("task_id", task_id),
                              ("asset_id", asset_id), ("status", status)):
            if value is not None:
                if column in ("task_id", "asset_id") and not _is_uuid(value):
                    return []
                where.append(f"{column} = ?")
                params.append(value)
        params.append(limit)
        with self._aread() as conn:
            rows = self._x(
                conn,
                f"SELECT {LEASE_COLS} FROM leases WHERE {' AND '.join(where)} "
                "ORDER BY acquired_at, lease_id LIMIT ?",
                params,
            ).fetchall()
        return [self._lease(r) for r in rows]

    def lease_release(
        self, lease_id: str, now: datetime, *, tenant_id: str | None = None
    ) -> Lease:
        """Release one active lease by hand (e.g. a lease kept after its task finished)."""
        if not _is_uuid(lease_id):
            raise NotFound("lease", lease_id)
        with self._atx() as conn:
            leases = self._leases_where(conn, "lease_id = ?", (lease_id,))
            if not leases or (tenant_id is not None and leases[0].tenant_id != tenant_id):
                raise NotFound("lease", lease_id)
            lease = leases[0]
            check_lease_transition(lease.status, LeaseStatus.RELEASED)
            pending = _Pending()
            self._end_leases(conn, [lease], LeaseStatus.RELEASED, pending, now,
                             self._task_refs(conn, [lease.task_id]), {})
            self._flush(conn, pending, now)
            self._capacity_freed(conn)
        return lease

    # -- asset events: public --------------------------------------------------------------

    def asset_event_report(
        self, fields: dict[str, Any], now: datetime, *, tenant_id: str,
        task_id: str | None = None, claim_token: str | None = None,
    ) -> list[AssetEvent]:
        """Record a reported event (validated fields), then apply the auto-ban policy in the
        same transaction. Returns the event and any events it caused."""
        with self._atx() as conn:
            pending = _Pending()
            task: _TaskRef | None = None
            lease_id = fields.get("lease_id")
            asset_id = fields.get("asset_id")
            if task_id is not None:
                task = self._task_refs(conn, [task_id]).get(task_id)
                if task is None or task.tenant_id != tenant_id:
                    raise NotFound("task", task_id)
                if fields.get("correlation_id") not in (None, task.correlation_id):
                    raise ValidationError.single(
                        "correlation_id", "an event of a task carries the task's correlation_id"
                    )
                if asset_id is None or lease_id is None:
                    mine = self._leases_where(
                        conn, "task_id = ? AND claim_token = ?" if claim_token else "task_id = ?",
                        (task_id, claim_token) if claim_token else (task_id,),
                    )
                    if lease_id is not None:
                        mine = [x for x in mine if x.lease_id == lease_id]
                    if asset_id is not None:
                        mine = [x for x in mine if x.asset_id == asset_id]
                    if len(mine) == 1:
                        asset_id, lease_id = mine[0].asset_id, mine[0].lease_id
                    elif asset_id is None:
                        raise ValidationError.single(
                            "asset_id", "is required unless the task holds exactly one lease"
                        )
            if asset_id is None:
                raise ValidationError.single("asset_id", "is required")
            asset = self._lock_assets(conn, [asset_id], pending).get(asset_id)
            if asset is None or asset.tenant_id != tenant_id:
                raise NotFound("asset", asset_id)
            occurred = fields.get("occurred_at") or now
            event = AssetEvent(
                event_id=fields.get("event_id") or uuid7(), tenant_id=tenant_id,
                project_id=fields.get("project_id") or (task.project_id if task else
                                                        asset.project_id),
                env=fields.get("env") or (task.env if task else asset.env),
                asset_id=asset_id, task_id=task_id, lease_id=lease_id,
                correlation_id=task.correlation_id if task else fields.get("correlation_id"),
                causation_id=fields.get("causation_id"), event_type=fields["event_type"],
                source=fields.get("source") or (
                    Source.WORKER_NODE if task else Source.EXTERNAL_PROVIDER),
                severity=fields.get("severity"),
                old_status=fields.get("old_status") or asset.status.value,
                new_status=fields.get("new_status") or asset.status.value,
                message=fields.get("message"), error_code=fields.get("error_code"),
                error_message=fields.get("error_message"),
                provider_status=fields.get("provider_status"),
                http_status=fields.get("http_status"), latency_ms=fields.get("latency_ms"),
                retryable=fields.get("retryable"), occurred_at=occurred, recorded_at=now,
                tags=list(fields.get("tags") or []), context=dict(fields.get("context") or {}),
                version=1,
            )
            self._emit(conn, [event])
            caused = self._maybe_ban(conn, asset, event, pending, now)
            out = [event]
            if caused is not None:
                out.extend(pending.events)
            self._flush(conn, pending, now)
        return out

    def asset_events_list(
        self, *, tenant_id: str | None = None, asset_id: str | None = None,
        task_id: str | None = None, correlation_id: str | None = None,
        event_type: str | None = None, limit: int = 1000,
    ) -> list[AssetEvent]:
        """Events oldest first (by occurred_at, then write order): by asset, by task, or one
        correlation_id's timeline."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if task_id is not None:
            if not _is_uuid(task_id):
                return []
            # A task's events carry its correlation_id: read them through that index.
            where.append("correlation_id = (SELECT correlation_id FROM tasks WHERE task_id = ?)")
            params.append(task_id)
        for column, value in (("tenant_id", tenant_id), ("asset_id", asset_id),
                              ("task_id", task_id), ("correlation_id", correlation_id),
                              ("event_type", event_type)):
            if value is not None:
                if column in ("asset_id", "task_id") and not _is_uuid(value):
                    return []
                where.append(f"{column} = ?")
                params.append(value)
        params.append(limit)
        with self._aread() as conn:
            rows = self._x(
                conn,
                f"SELECT {EVENT_COLS} FROM asset_events WHERE {' AND '.join(where)} "
                "ORDER BY occurred_at, seq LIMIT ?",
                params,
            ).fetchall()
        return [self._event(r) for r in rows]

    def asset_event_get(self, event_id: str, tenant_id: str | None = None) -> AssetEvent:
        if not _is_uuid(event_id):
            raise NotFound("asset event", event_id)
        with self._aread() as conn:
            row = self._x(
                conn, f"SELECT {EVENT_COLS} FROM asset_events WHERE event_id = ?", (event_id,)
            ).fetchone()
        if row is None or (tenant_id is not None and row[1] != tenant_id):
            raise NotFound("asset event", event_id)
        return self._event(row)

    def asset_event_chain(
        self, event_id: str, tenant_id: str | None = None, max_depth: int = 1000
    ) -> list[AssetEvent]:
        """The event, then what caused it, up to the root (causation_id = None)."""
        chain = [self.asset_event_get(event_id, tenant_id)]
        seen = {event_id}
        while chain[-1].causation_id and len(chain) < max_depth:
            cause = chain[-1].causation_id
            if cause in seen:
                break
            seen.add(cause)
            try:
                chain.append(self.asset_event_get(cause, tenant_id))
            except NotFound:
                break
        return chain

    # -- ledger: public --------------------------------------------------------------------

    def ledger_record(
        self, entry: LedgerEntry, *, enforce_budget: bool = True
    ) -> LedgerEntry:
        """Append one entry. One tied to a task must be in the task's currency; a cost that
        would take the task over max_total_cost raises BudgetExceeded and writes nothing."""
        d = self._adialect
        with self._atx() as conn:
            if entry.task_id is not None:
                row = self._x(
                    conn,
                    "SELECT tenant_id, project_id, currency, max_total_cost FROM tasks "
                    f"WHERE task_id = ?{d.lock}",
                    (entry.task_id,),
                ).fetchone()
                if row is None or row[0] != entry.tenant_id:
                    raise NotFound("task", entry.task_id)
                if row[2] != entry.currency:
                    raise ValidationError.single(
                        "currency", f"must match the task's currency {row[2]}"
                    )
                if entry.project_id is None:
                    entry.project_id = row[1]
                effect = cost_effect(entry.entry_type, entry.amount)
                if enforce_budget and row[3] is not None and effect > 0:
                    budget = d.from_dec(row[3])
                    spent = sum(
                        (cost_effect(r[0], d.from_dec(r[1])) for r in self._x(
                            conn,
                            "SELECT entry_type, amount FROM ledger_entries WHERE task_id = ?",
                            (entry.task_id,),
                        ).fetchall()),
                        Decimal(0),
                    )
                    if spent + effect > budget:
                        raise BudgetExceeded(
                            f"cost {spent} + {effect} would exceed max_total_cost {budget} "
                            f"{entry.currency}"
                        )
            self._x(
                conn,
                f"INSERT INTO ledger_entries ({LEDGER_COLS}) VALUES ({', '.join('?' * 12)})",
                (entry.entry_id, entry.tenant_id, entry.project_id, entry.task_id,
                 entry.asset_id, entry.lease_id, entry.entry_type.value, d.dec(entry.amount),
                 entry.currency, entry.description, d.ts(entry.occurred_at),
                 d.ts(entry.recorded_at)),
            )
        return entry

    def _ledger_where(
        self, tenant_id: str | None, project_id: str | None, task_id: str | None,
        since: datetime | None, until: datetime | None, currency: str | None = None,
    ) -> tuple[str, list[Any]]:
        d = self._adialect
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("tenant_id", tenant_id), ("project_id", project_id),
                              ("task_id", task_id), ("currency", currency)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if since is not None:
            where.append("occurred_at >= ?")
            params.append(d.ts(since))
        if until is not None:
            where.append("occurred_at < ?")
            params.append(d.ts(until))
        return " AND ".join(where), params

    def ledger_list(
        self, *, tenant_id: str | None = None, project_id: str | None = None,
        task_id: str | None = None, since: datetime | None = None,
        until: datetime | None = None, limit: int = 1000,
    ) -> list[LedgerEntry]:
        if task_id is not None and not _is_uuid(task_id):
            return []
        where, params = self._ledger_where(tenant_id, project_id, task_id, since, until)
        with self._aread() as conn:
            rows = self._x(
                conn,
                f"SELECT {LEDGER_COLS} FROM ledger_entries WHERE {where} "
                "ORDER BY occurred_at, seq LIMIT ?",
                [*params, limit],
            ).fetchall()
        return [self._entry(r) for r in rows]

    def ledger_summary(
        self, *, tenant_id: str | None = None, project_id: str | None = None,
        task_id: str | None = None, since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerSummary]:
        """Cost, revenue and margin per currency. Amounts are summed as Decimals in Python
        (exact on both backends: SQLite keeps them as text)."""
        if task_id is not None and not _is_uuid(task_id):
            return []
        d = self._adialect
        where, params = self._ledger_where(tenant_id, project_id, task_id, since, until)
        with self._aread() as conn:
            rows = self._x(
                conn,
                f"SELECT currency, entry_type, amount FROM ledger_entries WHERE {where}",
                params,
            ).fetchall()
        return summarise((r[0], r[1], d.from_dec(r[2])) for r in rows)

    # -- leader-only sweeps ----------------------------------------------------------------

    def asset_maintain(self, now: datetime, limit: int = 1000) -> AssetMaintenanceReport:
        """Cooling sweep (COOLING -> READY once cooldown_until passed) and NO_RESOURCE for
        hinted tasks still QUEUED past queued_at + timeout_ms."""
        d = self._adialect
        report = AssetMaintenanceReport()
        with self._atx() as conn:
            rows = self._x(
                conn,
                f"SELECT {ASSET_COLS} FROM assets WHERE status = 'COOLING' AND "
                f"cooldown_until <= ? ORDER BY asset_id LIMIT ?{d.skip_locked}",
                (d.ts(now), limit),
            ).fetchall()
            if rows:
                pending = _Pending()
                for r in rows:
                    asset = self._asset(r)
                    pending.assets[asset.asset_id] = asset
                    self._change_status(conn, asset, AssetStatus.READY, pending, now,
                                        Source.CONTROL_PLANE, "cooldown over")
                self._flush(conn, pending, now)
                self._capacity_freed(conn)
                report.cooled = len(rows)
            overdue = self._x(
                conn,
                "SELECT task_id FROM tasks WHERE status = 'QUEUED' AND has_hints = true AND "
                f"{d.plus_ms('queued_at', 'timeout_ms')} <= ? LIMIT ?{d.skip_locked}",
                (d.ts(now), limit),
            ).fetchall()
            if overdue:
                report.no_resource = len(self._fail_queued(
                    conn, [r[0] for r in overdue], "NO_RESOURCE",
                    "no matching assets were free before the task's deadline", now,
                ))
        return report


#: Control-plane events that are never failures, whatever a policy lists.
_NEVER_FAILURES = frozenset({
    AssetEventType.ALLOCATED, AssetEventType.RELEASED, AssetEventType.TASK_SUCCESS,
    AssetEventType.COOLING_START, AssetEventType.COOLING_END, AssetEventType.ASSET_BANNED,
    AssetEventType.BANNED, AssetEventType.LEASE_REVOKED, AssetEventType.LEASE_EXPIRED,
})


def _still_fitting(
    matches: Sequence[Match], assets: Mapping[str, AssetSnapshot]
) -> list[Match]:
    taken: dict[str, int] = {}
    kept: list[Match] = []
    for m in matches:
        ids = [a.asset_id for _, a in m.picks]
        if all(
            (fresh := assets.get(i)) is not None and fresh.status in LEASABLE
            and fresh.current_concurrency + taken.get(i, 0) < fresh.max_concurrency
            for i in ids
        ):
            for i in ids:
                taken[i] = taken.get(i, 0) + 1
            kept.append(m)
    return kept


def _effect(status: str, event_type: str) -> str | None:
    if status == "SUCCESS":
        return AssetEventType.TASK_SUCCESS
    if status == "TIMEOUT":
        return AssetEventType.TASK_TIMEOUT
    if status in ("FAILED", "DEAD_LETTER") or event_type == "retrying":
        return AssetEventType.TASK_FAIL
    return None


def _ban_targets(status: AssetStatus) -> frozenset[AssetStatus]:
    from creep.domain.asset import ASSET_TRANSITIONS

    return ASSET_TRANSITIONS[status]


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True

