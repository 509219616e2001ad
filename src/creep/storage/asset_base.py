"""Shared machinery of the asset tables (both backends): row conversion, locking assets in
asset_id order, collecting asset changes and their events and writing them at the end of the
transaction, ending leases, and the auto-ban policy.

Everything here runs inside a transaction the caller opened. The backend supplies a
dialect (storage/asset_dialect.py), a write transaction (`_atx`) and a read connection
(`_aread`) through storage/sqlite_assets.py and storage/postgres_assets.py.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from creep.domain.asset import (
    REVOKING,
    AssetSnapshot,
    AssetStatus,
    check_asset_transition,
)
from creep.domain.asset_event import (
    EVENT_FIELDS,
    AssetEvent,
    AssetEventType,
    BanPolicy,
    Severity,
    Source,
)
from creep.domain.errors import ValidationError
from creep.domain.ids import uuid7
from creep.domain.lease import LEASE_TRANSITIONS, Lease, LeaseStatus, check_lease_transition
from creep.domain.ledger import (
    EntryType,
    LedgerEntry,
)
from creep.storage.asset_dialect import Dialect

ASSET_COLS = (
    "asset_id, tenant_id, project_id, env, sku_category, sku_code, attributes, status, "
    "max_concurrency, current_concurrency, health_score, cooldown_seconds, cooldown_until, "
    "cost_per_lease, currency, version, created_at, updated_at"
)
LEASE_COLS = (
    "lease_id, tenant_id, task_id, asset_id, status, acquired_at, expires_at, released_at, "
    "cost, currency, claim_token, hint_index"
)
#: LEASE_COLS of leases aliased `l` (in joins, where task_id alone would be ambiguous).
LEASE_COLS_L = ", ".join(f"l.{c}" for c in LEASE_COLS.split(", "))
LEDGER_COLS = (
    "entry_id, tenant_id, project_id, task_id, asset_id, lease_id, entry_type, amount, "
    "currency, description, occurred_at, recorded_at"
)
EVENT_COLS = ", ".join(EVENT_FIELDS)
POLICY_COLS = ("tenant_id, sku_category, max_failures, window_seconds, failure_event_types, "
               "updated_at")
#: Stored lease status -> LeaseStatus, a dict lookup instead of an enum call per row.
_LEASE_STATUS = {s.value: s for s in LeaseStatus}
#: AssetStatus <-> its text by dict lookup: the hot paths read an asset's status several
#: times per leased task, and an enum's .value (a descriptor) or call costs far more.
STATUS_TEXT: dict[AssetStatus, str] = {s: s.value for s in AssetStatus}
_ASSET_STATUS = {s.value: s for s in AssetStatus}
#: The columns of a routine event row (_routine_row) that differ from row to row ...
ROUTINE_COLS = (
    "event_id", "tenant_id", "project_id", "env", "asset_id", "task_id", "lease_id",
    "correlation_id", "causation_id", "event_type", "old_status", "new_status", "message",
    "context", "task_priority",
)
#: ... and those that do not (plus occurred_at = recorded_at = the transaction's now): bound
#: once per statement rather than once per row. Columns in neither are NULL.
ROUTINE_FIXED: tuple[tuple[str, Any], ...] = (
    ("source", "control_plane"), ("severity", "INFO"), ("tags", "[]"), ("version", 1),
)
#: Most hinted tasks looked at per claim: blocked hinted tasks at the head do not hide
#: matchable ones behind them (no head-of-line blocking) within this bound.
HINTED_SCAN_MAX = 2048
#: Most candidate assets loaded per (tenant, category, sku pattern, currency) in one claim.
CANDIDATES_PER_KIND = 500


@dataclass(slots=True)
class TaskRef:
    """What an asset event needs to know of the task behind it."""

    task_id: str
    tenant_id: str
    project_id: str | None
    env: str | None
    correlation_id: str | None
    keep_leases: bool = False
    #: Recorded with the task's routine events: on SQLite their correlation index leads with
    #: it, so one claim batch's entries share pages (SQLite migration 0011).
    priority: int = 0
    #: Where the hinted claim read the task row (the dialect's row_key): its UPDATE finds the
    #: row there, the row being locked (or, on SQLite, written by no one else) meanwhile.
    row_key: Any = None


@dataclass(slots=True)
class Pending:
    """Asset changes and events collected in one transaction, written at its end."""

    assets: dict[str, AssetSnapshot] = field(default_factory=dict)
    dirty: set[str] = field(default_factory=set)
    events: list[AssetEvent] = field(default_factory=list)
    #: lease_id -> the status it ends in (written by _flush).
    ended: dict[str, LeaseStatus] = field(default_factory=dict)
    #: Rows of routine events no policy looks at (ALLOCATED, TASK_SUCCESS), built without an
    #: AssetEvent object: the hot path of leased tasks. Written before `events`.
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    #: Set when asset rows are left dirty for a later write in the same transaction (see
    #: LeaseBrokerMixin._leases_batched): the time their update is stamped with.
    deferred_at: datetime | None = None


class AssetStoreBase:
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
            sku_code=r[5], attributes=d.from_js(r[6]), status=_ASSET_STATUS[r[7]],
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
            status=_LEASE_STATUS[r[4]], acquired_at=d.from_ts(r[5]) or datetime.min,
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
            e.latency_ms, e.retryable, d.ts(e.occurred_at), d.ts(e.recorded_at),
            d.bulk_js(e.tags), d.bulk_js(e.context), e.version,
        )

    def _emit(self, conn: Any, events: Sequence[AssetEvent]) -> None:
        self._adialect.bulk_insert(
            conn, "asset_events", EVENT_FIELDS, [self._event_row(e) for e in events]
        )

    @staticmethod
    def _routine_row(
        asset: AssetSnapshot, event_type: str, task: TaskRef | None, lease_id: str,
        old_status: str, message: str, context: Any, causation_id: str | None = None,
        event_id: str | None = None,
    ) -> tuple[Any, ...]:
        """The ROUTINE_COLS of an INFO control-plane event written at the transaction's
        `now` (the other columns are ROUTINE_FIXED), as _new_event would make it;
        `context` is already in the dialect's form (d.bulk_js(...)); `event_id` one taken from
        a uuid7_many() batch (else a new one)."""
        return (
            event_id or uuid7(), asset.tenant_id, task.project_id if task else asset.project_id,
            task.env if task else asset.env, asset.asset_id, task.task_id if task else None,
            lease_id, task.correlation_id if task else None, causation_id, str(event_type),
            old_status, STATUS_TEXT[asset.status], message, context, task.priority if task else 0,
        )

    @staticmethod
    def _new_event(
        asset: AssetSnapshot, event_type: str, now: datetime, *, task: TaskRef | None = None,
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
        self, conn: Any, asset_ids: Sequence[str], pending: Pending, *, skip_locked: bool = False
    ) -> dict[str, AssetSnapshot]:
        """Load (and on PostgreSQL lock, in asset_id order) assets not yet in `pending`. With
        `skip_locked`, assets another transaction holds are left out instead of waited for."""
        d = self._adialect
        missing = sorted({a for a in asset_ids if a not in pending.assets})
        if missing:
            rows = self._x(
                conn,
                f"SELECT {ASSET_COLS} FROM assets WHERE {d.in_ids('asset_id')} "
                f"ORDER BY asset_id{d.skip_locked if skip_locked else d.lock}",
                (d.ids(missing),),
            ).fetchall()
            for r in rows:
                pending.assets[r[0]] = self._asset(r)
        return pending.assets

    def _flush(self, conn: Any, pending: Pending, now: datetime) -> None:
        """Write what the transaction decided: lease ends, asset rows, events (one round
        trip on PostgreSQL: the writes are pipelined)."""
        d = self._adialect
        with d.pipeline(conn):
            self._write_pending(conn, pending, now)

    def _write_pending(
        self, conn: Any, pending: Pending, now: datetime, *, assets: bool = True
    ) -> None:
        """Write and clear what `pending` collected; with `assets` False the dirty asset rows
        stay (in memory, locked on PostgreSQL) for a later call in the same transaction."""
        d = self._adialect
        if pending.ended:
            by_status: dict[LeaseStatus, list[str]] = {}
            for lease_id, st in sorted(pending.ended.items()):
                by_status.setdefault(st, []).append(lease_id)
            for st, lease_ids in by_status.items():  # one statement per end status
                self._x(
                    conn,
                    "UPDATE leases SET status = ?, released_at = ? "
                    f"WHERE {d.in_ids('lease_id')} AND status = 'ACTIVE'",
                    (st.value, d.ts(now), d.ids(lease_ids)),
                )
            pending.ended.clear()
        if assets:
            self._write_assets(conn, pending, now)
        # Routine rows first (they were decided first), their fixed columns bound once.
        d.bulk_insert(
            conn, "asset_events", ROUTINE_COLS, pending.rows,
            fixed=[*ROUTINE_FIXED, ("occurred_at", d.ts(now)), ("recorded_at", d.ts(now))],
        )
        d.bulk_insert(
            conn, "asset_events", EVENT_FIELDS, [self._event_row(e) for e in pending.events]
        )
        pending.rows.clear()
        pending.events.clear()

    def _write_assets(self, conn: Any, pending: Pending, now: datetime) -> None:
        d = self._adialect
        rows = []
        for asset_id in sorted(pending.dirty):
            a = pending.assets[asset_id]
            rows.append((
                STATUS_TEXT[a.status], a.current_concurrency, a.health_score, d.ts(a.cooldown_until),
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
        pending.deferred_at = None

    def _set_status(
        self, asset: AssetSnapshot, new: AssetStatus, pending: Pending, now: datetime
    ) -> str:
        """Apply a status change to the in-memory snapshot; returns the old status."""
        old = asset.status
        check_asset_transition(old, new)
        asset.status = new
        pending.dirty.add(asset.asset_id)
        return old.value

    def _task_refs(self, conn: Any, task_ids: Sequence[str]) -> dict[str, TaskRef]:
        d = self._adialect
        if not task_ids:
            return {}
        rows = self._x(
            conn,
            "SELECT task_id, tenant_id, project_id, env, correlation_id, constraints, priority "
            f"FROM tasks WHERE {d.in_ids('task_id')}",
            (d.ids(sorted(set(task_ids))),),
        ).fetchall()
        return {
            r[0]: TaskRef(r[0], r[1], r[2], r[3], r[4],
                           keep_leases=d.from_js(r[5]).get("keep_leases") is True, priority=r[6])
            for r in rows
        }

    # -- ending leases ---------------------------------------------------------------------

    def _end_leases(
        self, conn: Any, leases: Sequence[Lease], status: LeaseStatus, pending: Pending,
        now: datetime, tasks: Mapping[str, TaskRef], causes: Mapping[str, str | None],
        *, touch_assets: bool = True, routine: bool = False, ids: Iterator[str] | None = None,
    ) -> list[Lease]:
        """End active leases: give the concurrency back (COOLING when an asset with a cooldown
        becomes idle) and write RELEASED / LEASE_EXPIRED / LEASE_REVOKED events. With
        `routine` (only when every event collected so far is a routine row, so the order
        holds), RELEASED events are written as routine rows too, their ids taken from `ids`
        while it lasts. Returns the leases it ended: on PostgreSQL, those another
        transaction ended while this one waited for their assets are left alone."""
        active = [lease for lease in leases
                  if lease.status is LeaseStatus.ACTIVE and lease.lease_id not in pending.ended]
        if not active:
            return []
        legal = {old for old, targets in LEASE_TRANSITIONS.items() if status in targets}
        for lease in active:
            if lease.status not in legal:
                check_lease_transition(lease.status, status)  # raises
        newly_locked = any(lease.asset_id not in pending.assets for lease in active)
        assets = self._lock_assets(conn, [lease.asset_id for lease in active], pending)
        if newly_locked and self._adialect.lock:
            # Every path that ends a lease holds its asset's lock when it does. The leases
            # were read before these locks were taken: one ended meanwhile by a transaction
            # this one waited for (two releases of one lease, a completion and the rescuer)
            # must not give its concurrency back a second time.
            still = self._still_active(conn, [lease.lease_id for lease in active])
            active = [lease for lease in active if lease.lease_id in still]
        for lease in active:
            pending.ended[lease.lease_id] = status
        empty = self._adialect.bulk_js({})
        event_type = {
            LeaseStatus.RELEASED: AssetEventType.RELEASED,
            LeaseStatus.EXPIRED: AssetEventType.LEASE_EXPIRED,
            LeaseStatus.REVOKED: AssetEventType.LEASE_REVOKED,
        }[status]
        for lease in sorted(active, key=lambda x: x.asset_id):
            asset = assets[lease.asset_id]
            lease.status = status
            lease.released_at = now
            old = STATUS_TEXT[asset.status]
            if touch_assets:
                asset.current_concurrency = max(0, asset.current_concurrency - 1)
                pending.dirty.add(asset.asset_id)
                if asset.current_concurrency == 0 and asset.status is AssetStatus.IN_USE:
                    target = (
                        AssetStatus.COOLING if asset.cooldown_seconds > 0 else AssetStatus.READY
                    )
                    self._set_status(asset, target, pending, now)
            if routine and status is LeaseStatus.RELEASED:
                row = self._routine_row(
                    asset, event_type, tasks.get(lease.task_id), lease.lease_id, old,
                    "lease released", empty, causation_id=causes.get(lease.lease_id),
                    event_id=next(ids, None) if ids is not None else None,
                )
                pending.rows.append(row)
                ended_id = row[0]
            else:
                ended = self._new_event(
                    asset, event_type, now, task=tasks.get(lease.task_id),
                    lease_id=lease.lease_id, causation_id=causes.get(lease.lease_id),
                    old_status=old,
                    severity=Severity.INFO if status is LeaseStatus.RELEASED else Severity.WARN,
                    message=f"lease {status.value.lower()}",
                )
                pending.events.append(ended)
                ended_id = ended.event_id
            if touch_assets and asset.status is AssetStatus.COOLING and old != "COOLING":
                asset.cooldown_until = now + timedelta(seconds=asset.cooldown_seconds)
                pending.events.append(self._new_event(
                    asset, AssetEventType.COOLING_START, now, task=tasks.get(lease.task_id),
                    lease_id=lease.lease_id, causation_id=ended_id, old_status="IN_USE",
                    message=f"cooling for {asset.cooldown_seconds}s",
                    context={"cooldown_until": asset.cooldown_until.isoformat()},
                ))
        return active

    def _still_active(self, conn: Any, lease_ids: Sequence[str]) -> set[str]:
        d = self._adialect
        return {r[0] for r in self._x(
            conn, f"SELECT lease_id FROM leases WHERE {d.in_ids('lease_id')} AND status = 'ACTIVE'",
            (d.ids(list(lease_ids)),),
        ).fetchall()}

    def _task_correlation(self, conn: Any, task_id: str) -> str | None:
        """The correlation_id a task's events carry: the task's, or, once retention deleted
        the task, the one its leases' events carry (its leases stay)."""
        row = self._x(conn, "SELECT correlation_id FROM tasks WHERE task_id = ?",
                      (task_id,)).fetchone()
        if row is None:
            lease = self._x(
                conn, f"SELECT asset_id, lease_id FROM leases WHERE {self._adialect.by_task}"
                "task_id = ? LIMIT 1", (task_id,),
            ).fetchone()
            if lease is not None:
                row = self._x(
                    conn, "SELECT correlation_id FROM asset_events WHERE asset_id = ? "
                    "AND lease_id = ? LIMIT 1", (lease[0], lease[1]),
                ).fetchone()
        return None if row is None else row[0]

    def _leases_with_tasks(
        self, conn: Any, task_ids: Sequence[str], tokens: Sequence[str],
        lock_into: Pending | None = None,
    ) -> tuple[list[Lease], dict[str, TaskRef]]:
        """Leases (columns prefixed l.) of these claims (task ids, and the claim tokens they
        were taken under) with what events need of the tasks, in one read. With
        `lock_into`, their assets are loaded into it too (and on PostgreSQL locked, in
        asset_id order), in the same round trip."""
        d = self._adialect
        params = (d.ids(task_ids), d.ids(tokens))
        # SQLite has no round trips to save and no row locks: its assets are loaded after,
        # by key, only those not held already, instead of looking the leases up twice.
        lock_sql = lock_into is not None and d.name != "sqlite"
        with d.pipeline(conn):
            # The assets are locked first: the leases are then read after any transaction
            # that ended one of them meanwhile (it held the asset's lock) has committed, so a
            # lease is never ended twice.
            locked = None if not lock_sql else self._x(
                conn,
                f"SELECT {ASSET_COLS} FROM assets WHERE asset_id IN "
                f"(SELECT l.asset_id FROM {d.claims_leases}) ORDER BY asset_id{d.lock}",
                params,
            )
            cur = d.unprepared(
                conn,
                f"SELECT {LEASE_COLS_L}, t.project_id, t.env, t.correlation_id, t.constraints, t.priority "
                f"FROM {d.leases_of_claims} ORDER BY l.asset_id, l.lease_id",
                params,
            )
        rows = cur.fetchall()
        if locked is not None and lock_into is not None:
            held = lock_into.assets
            for r in locked.fetchall():
                if r[0] not in held:
                    held[r[0]] = self._asset(r)
        elif lock_into is not None:
            self._lock_assets(conn, [r[3] for r in rows], lock_into)
        leases = [self._lease(r[:12]) for r in rows]
        refs = {
            r[2]: TaskRef(r[2], r[1], r[12], r[13], r[14], keep_leases=self._keeps(r[15]),
                          priority=r[16])
            for r in rows
        }
        return leases, refs

    def _keeps(self, constraints: Any) -> bool:
        """constraints.keep_leases of a task row, without decoding constraints that cannot
        name it (most tasks: '{}')."""
        if isinstance(constraints, str) and "keep_leases" not in constraints:
            return False
        return self._adialect.from_js(constraints).get("keep_leases") is True

    def _claims_leases(
        self, conn: Any, claims: Sequence[tuple[str, str]], status: LeaseStatus
    ) -> list[Lease]:
        """The leases in `status` of these claims ((task_id, claim_token)), by asset and
        lease id: one by-task probe per claim, never a walk of every lease ever taken. (Sorted
        here: asked to, the planner may walk an index in that order over the whole table.)"""
        d = self._adialect
        rows = self._x(
            conn, f"SELECT {LEASE_COLS_L} FROM {d.claims_leases} AND l.status = ?",
            (d.ids([c[0] for c in claims]), d.ids([c[1] for c in claims]), status.value),
        ).fetchall()
        # SQLite matches ids and tokens as separate sets: only the pairs asked for count.
        pairs = {(str(t), str(tok)) for t, tok in claims}
        leases = [self._lease(r) for r in rows]
        leases.sort(key=lambda x: (x.asset_id, x.lease_id))
        return [x for x in leases if (x.task_id, x.claim_token) in pairs]

    def _leases_where(self, conn: Any, where: str, params: Sequence[Any]) -> list[Lease]:
        rows = self._x(
            conn, f"SELECT {LEASE_COLS} FROM leases WHERE {where} ORDER BY asset_id, lease_id",
            params,
        ).fetchall()
        return [self._lease(r) for r in rows]

    # -- auto-ban --------------------------------------------------------------------------

    def _policy(
        self, conn: Any, tenant_id: str, sku_category: str, *, lock: bool = False
    ) -> BanPolicy | None:
        row = self._x(
            conn,
            f"SELECT {POLICY_COLS} FROM asset_ban_policies WHERE tenant_id = ? "
            f"AND sku_category = ?{self._adialect.lock if lock else ''}",
            (tenant_id, sku_category),
        ).fetchone()
        return None if row is None else self._policy_row(row)

    def _policy_row(self, row: Sequence[Any]) -> BanPolicy:
        d = self._adialect
        return BanPolicy(row[0], row[1], row[2], row[3], list(d.from_js(row[4])),
                         d.from_ts(row[5]))

    def _auto_ban_many(self, conn: Any, pending: Pending, now: datetime) -> None:
        """Check the auto-ban policy for every failure event collected in `pending`."""
        policies: dict[tuple[str, str], BanPolicy | None] = {}
        for event in list(pending.events):
            asset = pending.assets.get(event.asset_id)
            if asset is None or event.event_type in NEVER_FAILURES:
                continue
            key = (asset.tenant_id, asset.sku_category)
            if key not in policies:
                policies[key] = self._policy(conn, *key)
            if policies[key] is not None:
                self._maybe_ban(conn, asset, event, pending, now, policies[key])

    def _maybe_ban(
        self, conn: Any, asset: AssetSnapshot, event: AssetEvent, pending: Pending,
        now: datetime, policy: BanPolicy | None = None,
    ) -> AssetEvent | None:
        if asset.status in REVOKING or AssetStatus.BANNED not in ban_targets(asset.status):
            return None
        policy = policy or self._policy(conn, asset.tenant_id, asset.sku_category)
        if policy is None or not policy.is_failure(event.event_type):
            return None
        d = self._adialect
        window = timedelta(seconds=policy.window_seconds)
        since, until = event.occurred_at - window, event.occurred_at + window
        # A failure reported late (an asynchronous callback, an import) may complete a window
        # with failures stored after it: every window of the policy's length that holds this
        # failure counts, not only the one ending at it.
        # Only failures after the last UNBANNED count: after it in (occurred_at, write
        # order), so one written after it at the same instant (a frozen clock, a callback
        # stamped with that instant) counts, and one written before it does not.
        rows = self._x(
            conn,
            "WITH unban AS (SELECT occurred_at, seq FROM asset_events WHERE asset_id = ? "
            "AND event_type = 'UNBANNED' ORDER BY occurred_at DESC, seq DESC LIMIT 1) "
            "SELECT e.event_id, e.event_type, e.occurred_at FROM asset_events e "
            "WHERE e.asset_id = ? AND e.occurred_at > ? AND e.occurred_at < ? "
            "AND NOT EXISTS (SELECT 1 FROM unban u WHERE u.occurred_at > e.occurred_at "
            "OR (u.occurred_at = e.occurred_at AND u.seq > e.seq)) "
            "ORDER BY e.occurred_at, e.seq",
            (asset.asset_id, asset.asset_id, d.ts(since), d.ts(until)),
        ).fetchall()
        # (occurred_at, write order, event id): stored ones first, then this transaction's.
        # Read in write order: on PostgreSQL the heap order is not it (each connection
        # fills pages of its own), and failures of one instant are told apart by it alone.
        failures = [(d.from_ts(r[2]), i, r[0]) for i, r in enumerate(rows)
                    if policy.is_failure(r[1])]
        # Events of this transaction not yet written count too, up to this one: they share
        # its occurred_at, so their order in the transaction says which came after it (and the
        # ban is caused by the failure that reached the count, not by the first of them).
        for e in pending.events:
            if (e.asset_id == asset.asset_id and policy.is_failure(e.event_type)
                    and since < e.occurred_at < until):
                failures.append((e.occurred_at, len(rows) + len(failures), e.event_id))
            if e is event:
                break
        found = _full_window(failures, event.occurred_at, window, policy.max_failures)
        if found is None:
            return None
        count, cause_id = found
        cause = next((e for e in pending.events if e.event_id == cause_id), None)
        if cause is None:  # a failure stored after this (late) one completed the window
            cause = self._event(self._x(
                conn, f"SELECT {EVENT_COLS} FROM asset_events WHERE event_id = ?", (cause_id,)
            ).fetchone())
        return self._ban(
            conn, asset, pending, now, event_type=AssetEventType.ASSET_BANNED,
            source=Source.CONTROL_PLANE, cause=cause,
            message=f"banned after {count} failures within {policy.window_seconds}s",
            context={"fail_count_window": count, "window_s": policy.window_seconds,
                     "policy_max_failures": policy.max_failures},
        )

    def _ban(
        self, conn: Any, asset: AssetSnapshot, pending: Pending, now: datetime, *,
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

    def _change_status(
        self, conn: Any, asset: AssetSnapshot, status: AssetStatus, pending: Pending,
        now: datetime, source: str, reason: str | None, cause: AssetEvent | None = None,
    ) -> AssetEvent:
        """An operator's status change, or one a reported event states (`cause`: the change's
        event is caused by it and carries its task, lease and correlation)."""
        if status in REVOKING:
            revoke_type = {
                AssetStatus.BANNED: AssetEventType.BANNED, AssetStatus.SOLD: AssetEventType.SOLD,
                AssetStatus.ARCHIVED: AssetEventType.ARCHIVED,
            }[status]
            return self._ban(conn, asset, pending, now, event_type=revoke_type, source=source,
                             cause=cause, message=reason, context={}, new_status=status)
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
        if cause is not None:
            event.causation_id = cause.event_id
            event.task_id, event.lease_id = cause.task_id, cause.lease_id
            event.correlation_id = cause.correlation_id
            event.project_id, event.env = cause.project_id, cause.env
        pending.events.append(event)
        return event


#: Control-plane events that are never failures, whatever a policy lists.
NEVER_FAILURES = frozenset({
    AssetEventType.ALLOCATED, AssetEventType.RELEASED, AssetEventType.TASK_SUCCESS,
    AssetEventType.COOLING_START, AssetEventType.COOLING_END, AssetEventType.ASSET_BANNED,
    AssetEventType.BANNED, AssetEventType.LEASE_REVOKED, AssetEventType.LEASE_EXPIRED,
})


def ban_targets(status: AssetStatus) -> frozenset[AssetStatus]:
    from creep.domain.asset import ASSET_TRANSITIONS

    return ASSET_TRANSITIONS[status]


def _full_window(
    failures: list[tuple[Any, int, str]], at: datetime, window: timedelta, needed: int
) -> tuple[int, str] | None:
    """The first window of length `window` (open at its start) that holds the failure at `at`
    and `needed` failures: (its count, the id of its last failure, the ban's cause), or None.
    `failures`: (occurred_at, write order, event id)."""
    ordered = sorted(failures)
    start = 0
    for end, (when, _, event_id) in enumerate(ordered):
        while ordered[start][0] <= when - window:
            start += 1
        if when >= at and ordered[start][0] <= at and end - start + 1 >= needed:
            return end - start + 1, event_id
    return None
