"""Assets, leases, ledger and asset events: one implementation for both backends.

SqliteStore and PostgresStore inherit AssetStoreMixin (through storage/sqlite_assets.py
and storage/postgres_assets.py). Every asset change writes its AssetEvent in the same
transaction. The claim reads candidate assets without locks and locks only the picked ones,
in asset_id order, as every other writer does, so writers never deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from creep.domain.asset import (
    AssetFilter,
    AssetSnapshot,
    AssetSpec,
    AssetStatus,
    check_asset_transition,
    check_fields_changeable,
    is_created_by,
)
from creep.domain.asset_event import (
    MAX_CHAIN,
    AssetEvent,
    AssetEventType,
    BanPolicy,
    Source,
    check_occurred_at,
)
from creep.domain.errors import (
    ClaimLost,
    ConflictError,
    IdTaken,
    IllegalTransition,
    NotFound,
    StorageError,
    ValidationError,
    VersionConflict,
)
from creep.domain.ids import is_uuid, uuid7
from creep.domain.lease import Lease
from creep.storage import pending_writes
from creep.storage.asset_base import (
    ASSET_COLS,
    EVENT_COLS,
    POLICY_COLS,
    Pending,
    TaskRef,
)
from creep.storage.lease_broker import LeaseBrokerMixin
from creep.storage.ledger_store import LedgerStoreMixin


class AssetStoreMixin(LeaseBrokerMixin, LedgerStoreMixin):
    # -- assets: public --------------------------------------------------------------------

    def asset_create_many(self, specs: Sequence[AssetSpec], now: datetime) -> list[AssetSnapshot]:
        """Create every asset, or none; a create sent again: see asset_create_or_replay."""
        return self.asset_create_or_replay(specs, now)[0]

    def asset_create_or_replay(
        self, specs: Sequence[AssetSpec], now: datetime
    ) -> tuple[list[AssetSnapshot], bool]:
        """Create every asset, or none, and whether they existed already. A create whose
        asset_ids all exist, each as the asset its spec created (domain is_created_by), is
        that create sent again (after a lost answer): the assets as they are now, True, and
        nothing written (its transaction rolls back: audit rows riding along are not written
        either). An asset_id of another asset, or of an existing asset in a create that also
        makes new ones, raises IdTaken naming it; the asset is not shown (it may be another
        tenant's)."""
        if not specs:
            return [], False
        if len({s.asset_id for s in specs}) != len(specs):
            raise ValidationError.single("asset_id", "asset ids in one import must be unique")
        try:
            return self._create_assets(specs, now), False
        except _AssetsReplayed as replay:
            return replay.assets, True
        except StorageError as exc:
            diag = getattr(exc.__cause__, "diag", None)
            if getattr(diag, "constraint_name", None) != "assets_pkey":
                raise
        # PostgreSQL: a create of one of these asset_ids committed after this one looked
        # (the primary key held this insert until it did). Looked at again, this create is
        # its resend or names another asset. (SQLite writes one transaction at a time.)
        try:
            return self._create_assets(specs, now), False
        except _AssetsReplayed as replay:
            return replay.assets, True

    def _create_assets(self, specs: Sequence[AssetSpec], now: datetime) -> list[AssetSnapshot]:
        d = self._adialect
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
        with self._atx() as conn:
            existing = {
                str(r[0]).lower(): self._asset(r) for r in self._x(
                    conn, f"SELECT {ASSET_COLS} FROM assets WHERE {d.in_ids('asset_id')}",
                    (d.ids([s.asset_id for s in snaps]),),
                ).fetchall()
            }
            if existing:
                self._replay_assets(specs, existing)
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

    @staticmethod
    def _replay_assets(specs: Sequence[AssetSpec], existing: dict[str, AssetSnapshot]) -> None:
        """Some of `specs`' asset_ids exist: _AssetsReplayed when the create is sent again
        whole, else IdTaken naming each existing one."""
        others = [s.asset_id for s in specs
                  if s.asset_id in existing and not is_created_by(existing[s.asset_id], s)]
        if others:
            raise IdTaken([("asset_id", f"asset {asset_id} already exists, as another asset "
                                        "(a create sent again must be the same create)")
                           for asset_id in others])
        if len(existing) < len(specs):
            raise IdTaken([
                ("asset_id", f"asset {s.asset_id} already exists (this import also has new "
                             "assets: an import is replayed only when sent again whole)")
                for s in specs if s.asset_id in existing])
        raise _AssetsReplayed([existing[s.asset_id] for s in specs])

    def asset_get(self, asset_id: str, tenant_id: str | None = None) -> AssetSnapshot:
        if not is_uuid(asset_id):
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
            pending = Pending()
            assets = self._lock_assets(conn, [i[0] for i in items], pending)
            for asset_id, expected, changes in items:
                asset = assets.get(asset_id)
                if asset is None or (tenant_id is not None and asset.tenant_id != tenant_id):
                    raise NotFound("asset", asset_id)
                if asset.version != expected:
                    raise VersionConflict("asset", asset_id, expected, asset.version)
                # No changes: the asset as it is (like update_task), no new version.
                out.append(self._apply_changes(conn, asset, changes, pending, now)
                           if changes else asset)
            changed = [a for a, item in zip(out, items, strict=True) if item[2]]
            rows = []
            d = self._adialect
            for asset in changed:
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
            pending.dirty.update(a.asset_id for a in changed)
            self._flush(conn, pending, now)
            if changed:
                # Any change may make an asset leasable for a waiting hinted task (READY, more
                # concurrency, a health, code or attribute it asks for): wake the workers, as
                # a release or an unban does, rather than leave it to their next poll.
                self._capacity_freed(conn)
        return [replace(a) for a in out]

    def _apply_changes(
        self, conn: Any, asset: AssetSnapshot, changes: dict[str, Any], pending: Pending,
        now: datetime,
    ) -> AssetSnapshot:
        status = changes.get("status")
        plain = {k: v for k, v in changes.items() if k != "status"}
        check_fields_changeable(asset.asset_id, asset.status, plain)
        if "max_concurrency" in plain and plain["max_concurrency"] < asset.current_concurrency:
            raise ValidationError.single(
                "max_concurrency",
                f"must be >= current_concurrency ({asset.current_concurrency}) of asset "
                f"{asset.asset_id}",
            )
        for name, value in plain.items():
            setattr(asset, name, value)
        if plain:
            pending.events.append(self._new_event(
                asset, AssetEventType.UPDATED, now, message="asset updated",
                context={"changes": {k: str(v) if isinstance(v, Decimal) else v
                                     for k, v in plain.items()}},
            ))
        try:  # the errors name the asset (a bulk call names its item by it)
            if status is not None and status is not asset.status:
                self._change_status(conn, asset, status, pending, now, Source.OPERATOR, None)
            elif status is not None:
                check_asset_transition(asset.status, status)  # a self-transition is an error
        except IllegalTransition as exc:
            raise IllegalTransition(f"asset {asset.asset_id}", exc.old, exc.new) from None
        except ValidationError as exc:  # IN_USE set by hand
            raise ValidationError([(f, f"{rule} (asset {asset.asset_id})")
                                   for f, rule in exc.errors]) from None
        pending.dirty.add(asset.asset_id)
        return asset

    def asset_set_status(
        self, asset_id: str, status: AssetStatus, now: datetime, *,
        tenant_id: str | None = None, reason: str | None = None,
        source: str = Source.OPERATOR, only_from: AssetStatus | None = None,
    ) -> tuple[AssetSnapshot, AssetEvent]:
        """An operator's status change (ban, unban, archive, sell, activate). With
        `only_from` (an unban: BANNED), an asset in another status is a ConflictError."""
        with self._atx() as conn:
            pending = Pending()
            asset = self._lock_assets(conn, [asset_id], pending).get(asset_id)
            if asset is None or (tenant_id is not None and asset.tenant_id != tenant_id):
                raise NotFound("asset", asset_id)
            if only_from is not None and asset.status is not only_from:
                raise ConflictError(
                    f"asset {asset_id} is {asset.status.value}, not {only_from.value}: "
                    f"nothing changed")
            event = self._change_status(conn, asset, status, pending, now, source, reason)
            self._flush(conn, pending, now)
            if status is AssetStatus.READY:
                self._capacity_freed(conn)
        return replace(asset), event

    def ban_policy_set(self, policy: BanPolicy, now: datetime) -> BanPolicy:
        d = self._adialect
        values = (policy.max_failures, policy.window_seconds, d.js(policy.failure_event_types),
                  d.ts(now))
        audited = pending_writes.waiting()
        with self._atx() as conn:
            while True:
                if audited:  # the REST API's audit row: nothing replaced, if this inserts
                    pending_writes.before_change(self, conn)
                # The insert decides create or replace: two concurrent creates (PostgreSQL)
                # both found no row above, and both were audited as created. The loser's
                # insert waits for the winner's commit, then does nothing.
                inserted = self._x(
                    conn,
                    "INSERT INTO asset_ban_policies (tenant_id, sku_category, max_failures, "
                    "window_seconds, failure_event_types, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (tenant_id, sku_category) DO NOTHING",
                    (policy.tenant_id, policy.sku_category, *values),
                ).rowcount
                if inserted:
                    break
                # Locked, so the audit row's old image is the policy this replaces.
                if self._policy(conn, policy.tenant_id, policy.sku_category, lock=True):
                    if audited:
                        pending_writes.before_change(self, conn)
                    self._x(
                        conn,
                        "UPDATE asset_ban_policies SET max_failures = ?, window_seconds = ?, "
                        "failure_event_types = ?, updated_at = ? "
                        "WHERE tenant_id = ? AND sku_category = ?",
                        (*values, policy.tenant_id, policy.sku_category),
                    )
                    break
                # Deleted since the insert found it: insert again.
        return replace(policy, failure_event_types=list(policy.failure_event_types),
                       updated_at=now)

    def ban_policy_get(self, tenant_id: str, sku_category: str) -> BanPolicy | None:
        with self._aread() as conn:
            return self._policy(conn, tenant_id, sku_category)

    def ban_policy_in_transaction(
        self, conn: Any, tenant_id: str, sku_category: str
    ) -> BanPolicy | None:
        """The policy as the open transaction on `conn` sees it (the connection a pending
        write gets, see pending_writes: what a set or delete replaces, for its audit row)."""
        return self._policy(conn, tenant_id, sku_category)

    def ban_policy_list(
        self, tenant_id: str | None = None, *, after: tuple[str, str] | None = None,
        limit: int = 1000,
    ) -> list[BanPolicy]:
        """Policies by (tenant_id, sku_category); a page continues past `after`."""
        where: list[str] = []
        params: list[Any] = []
        if tenant_id is not None:
            where.append("tenant_id = ?")
            params.append(tenant_id)
        if after is not None:
            where.append("(tenant_id > ? OR (tenant_id = ? AND sku_category > ?))")
            params += [after[0], after[0], after[1]]
        sql = f"SELECT {POLICY_COLS} FROM asset_ban_policies"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._aread() as conn:
            rows = self._x(conn, sql + " ORDER BY tenant_id, sku_category LIMIT ?",
                           [*params, limit]).fetchall()
        return [self._policy_row(r) for r in rows]

    def ban_policy_delete(self, tenant_id: str, sku_category: str) -> BanPolicy:
        """Remove a policy (its category's assets are no longer auto-banned; nothing else
        changes: failures stay in the event log, banned assets stay banned). NotFound if the
        tenant has none for `sku_category`."""
        with self._atx() as conn:
            old = self._policy(conn, tenant_id, sku_category, lock=True)
            if old is None:
                raise NotFound("ban policy", sku_category)
            pending_writes.before_change(self, conn)  # the REST API's audit row reads it
            self._x(conn, "DELETE FROM asset_ban_policies WHERE tenant_id = ? "
                          "AND sku_category = ?", (tenant_id, sku_category))
        return old

    # -- asset events: public --------------------------------------------------------------

    def asset_event_report(
        self, fields: dict[str, Any], now: datetime, *, tenant_id: str,
        task_id: str | None = None, claim_token: str | None = None,
    ) -> list[AssetEvent]:
        """Record a reported event (validated fields), apply the status change it states
        (new_status) and then the auto-ban policy, in the same transaction. Returns the event
        and any events it caused.

        The stored old_status is the asset's status: a stated old_status that differs is a
        ConflictError (a stale view), nothing stored. A new_status other than it goes
        through the transition table (IllegalTransition; IN_USE is a ValidationError) and
        is applied as an operator's change, by creep's own event caused by this one.

        `task_id` (keyword) is the running task of a handler's report (ctx.report_event);
        an external report may name the task that caused the event in `fields["task_id"]`,
        or leave it to follow from the lease it names. A lease named must be one of the
        tenant's, on the event's asset, and of the event's task; a task named must be one of
        the tenant's. The event then carries the task's correlation_id. A causation_id
        must be an event of the tenant's.

        An event whose `event_id` exists already is a resend (after a lost answer): the same
        report answers the event written the first time and what it caused, writing nothing
        (even once the reporting run's claim is gone); another report under that id is a
        ConflictError."""
        return self.asset_event_report_or_replay(
            fields, now, tenant_id=tenant_id, task_id=task_id, claim_token=claim_token)[0]

    def asset_event_report_or_replay(
        self, fields: dict[str, Any], now: datetime, *, tenant_id: str,
        task_id: str | None = None, claim_token: str | None = None,
    ) -> tuple[list[AssetEvent], bool]:
        """asset_event_report, and whether the report was a resend (True: the events its
        first send wrote, nothing written now; the REST routes answer it as a replay)."""
        try:
            return self._report_event(fields, now, tenant_id, task_id, claim_token), False
        except _Replayed as replay:  # its transaction rolled back: no audit row rode along
            return replay.events, True

    def _report_event(
        self, fields: dict[str, Any], now: datetime, tenant_id: str, task_id: str | None,
        claim_token: str | None,
    ) -> list[AssetEvent]:
        handler = task_id is not None
        reporter = task_id
        given = fields.get("event_id")
        with self._atx() as conn:
            if given:
                self._replay_event(conn, given, fields, tenant_id, reporter)
            # After the replay: a resend answers what its first send wrote.
            check_occurred_at(fields.get("occurred_at"), now)
            pending = Pending()
            task: TaskRef | None = None
            lease_id = fields.get("lease_id")
            asset_id = fields.get("asset_id")
            named_task = fields.get("task_id")
            lease: Lease | None = None
            if lease_id is not None:
                lease = self._reported_lease(conn, lease_id, tenant_id, asset_id)
                asset_id = lease.asset_id
            correlation_id = fields.get("correlation_id")
            if task_id is not None:
                if named_task not in (None, task_id):
                    raise ValidationError.single(
                        "task_id", "is the reporting task's own: leave it out")
                task = self._task_refs(conn, [task_id]).get(task_id)
                if task is None or task.tenant_id != tenant_id:
                    raise NotFound("task", task_id)
                if claim_token is not None and not self._claim_runs(conn, task_id, claim_token):
                    # A run that lost its claim reports nothing more: an auto-ban it set off
                    # would revoke the leases of the run that holds the task now.
                    raise ClaimLost(f"task {task_id}: the claim is no longer held")
                if lease is None:
                    mine = self._leases_where(
                        conn, "task_id = ? AND claim_token = ?" if claim_token else "task_id = ?",
                        (task_id, claim_token) if claim_token else (task_id,),
                    )
                    if asset_id is not None:
                        mine = [x for x in mine if x.asset_id == asset_id]
                    if len(mine) == 1:
                        asset_id, lease_id = mine[0].asset_id, mine[0].lease_id
                    elif asset_id is None:
                        raise ValidationError.single(
                            "asset_id", "is required unless the task holds exactly one lease"
                        )
            else:
                task_id = named_task if named_task is not None else (
                    lease.task_id if lease is not None else None)
                if task_id is not None:
                    task = self._task_refs(conn, [task_id]).get(task_id)
                    if task is not None and task.tenant_id != tenant_id:
                        task = None  # another tenant's task reads like a missing one
                    if task is None and (lease is None or lease.task_id != task_id):
                        # (A lease outlives its task's retention: it still names the task.)
                        raise ValidationError.single("task_id", "unknown task")
            if lease is not None and task_id is not None and lease.task_id != task_id:
                raise ValidationError.single("lease_id", "is a lease of another task")
            if task_id is not None:
                # The task's correlation_id (once retention deleted the task, the one its
                # lease's events carry).
                expected = task.correlation_id if task is not None else \
                    self._task_correlation(conn, task_id)
                if expected is not None:
                    if correlation_id not in (None, expected):
                        raise ValidationError.single(
                            "correlation_id",
                            "an event of a task carries the task's correlation_id")
                    correlation_id = expected
            if asset_id is None:
                raise ValidationError.single("asset_id", "is required")
            asset = self._lock_assets(conn, [asset_id], pending).get(asset_id)
            if asset is None or asset.tenant_id != tenant_id:
                raise NotFound("asset", asset_id)
            cause_id = fields.get("causation_id")
            if cause_id is not None:
                # The cause is one of the tenant's events (another tenant's reads like a
                # missing one): else a causation chain would lead into another tenant.
                row = self._x(
                    conn, "SELECT tenant_id FROM asset_events WHERE event_id = ?", (cause_id,)
                ).fetchone()
                if row is None or row[0] != tenant_id:
                    raise ValidationError.single("causation_id", "unknown event")
            if given:  # again under the asset's lock: a resend that raced the first send
                self._replay_event(conn, given, fields, tenant_id, reporter)
            real = asset.status
            stated_old, stated_new = fields.get("old_status"), fields.get("new_status")
            if stated_old is not None and stated_old != real.value:
                # A stale view: stored, the event would say the asset had a status it did
                # not have, and a change from it the reporter may not mean from this one.
                raise ConflictError(
                    f"asset {asset_id} is {real.value}, not {stated_old} (old_status): nothing "
                    "was stored; report again from its status, or leave old_status out")
            target = real if stated_new is None else AssetStatus(stated_new)
            occurred = fields.get("occurred_at") or now
            event = AssetEvent(
                event_id=fields.get("event_id") or uuid7(), tenant_id=tenant_id,
                project_id=fields.get("project_id") or (task.project_id if task else
                                                        asset.project_id),
                env=fields.get("env") or (task.env if task else asset.env),
                asset_id=asset_id, task_id=task_id, lease_id=lease_id,
                correlation_id=correlation_id,
                causation_id=fields.get("causation_id"), event_type=fields["event_type"],
                source=fields.get("source") or (
                    Source.WORKER_NODE if handler else Source.EXTERNAL_PROVIDER),
                severity=fields.get("severity"),
                old_status=real.value, new_status=target.value,
                message=fields.get("message"), error_code=fields.get("error_code"),
                error_message=fields.get("error_message"),
                provider_status=fields.get("provider_status"),
                http_status=fields.get("http_status"), latency_ms=fields.get("latency_ms"),
                retryable=fields.get("retryable"), occurred_at=occurred, recorded_at=now,
                tags=list(fields.get("tags") or []), context=dict(fields.get("context") or {}),
                version=1,
            )
            caused: list[AssetEvent] = []
            if target is not real:
                # Checked before anything is written: an illegal change stores nothing.
                self._reported_change(conn, asset, target, event, pending, now)
            self._emit(conn, [event])
            if target is not real:
                caused += pending.events
                # Written before the auto-ban looks: after an UNBANNED, earlier failures
                # no longer count.
                self._flush(conn, pending, now)
                if target is AssetStatus.READY:
                    self._capacity_freed(conn)
            if self._maybe_ban(conn, asset, event, pending, now) is not None:
                caused += pending.events
            self._flush(conn, pending, now)
        return [event, *caused]

    def _reported_change(
        self, conn: Any, asset: AssetSnapshot, target: AssetStatus, event: AssetEvent,
        pending: Pending, now: datetime,
    ) -> None:
        """The status change a reported event states (new_status), applied as an operator's
        (a ban revokes the asset's leases, an unban writes UNBANNED, ...) by the transition
        table; its event is creep's, caused by the reported one (as an auto-ban's is)."""
        reason = event.message or f"as reported by {event.event_type}"
        try:
            self._change_status(conn, asset, target, pending, now, Source.CONTROL_PLANE,
                                reason, cause=event)
        except IllegalTransition as exc:
            raise IllegalTransition(f"asset {asset.asset_id} (new_status)", exc.old,
                                    exc.new) from None
        except ValidationError as exc:  # IN_USE, which follows the asset's leases
            raise ValidationError([("new_status", rule) for _, rule in exc.errors]) from None

    def _replay_event(
        self, conn: Any, event_id: str, fields: dict[str, Any], tenant_id: str,
        task_id: str | None,
    ) -> None:
        """Nothing if no event has this id. Else _Replayed with that event and what it
        caused, when `fields` report it again (each field given is the one written, by the
        same tenant and reporting task); ConflictError when they report another event."""
        row = self._x(conn, f"SELECT {EVENT_COLS} FROM asset_events WHERE event_id = ?",
                      (event_id,)).fetchone()
        if row is None:
            return
        written = self._event(row)
        if not _same_report(written, fields, tenant_id, task_id):
            raise ConflictError(f"asset event {event_id} exists already, as another event "
                                "(an event sent again must be reported the same)")
        raise _Replayed([written, *self._caused_by(conn, written)])

    def _caused_by(self, conn: Any, event: AssetEvent) -> list[AssetEvent]:
        """The events the report of `event` wrote after it, in its transaction (an auto-ban's
        ASSET_BANNED and LEASE_REVOKED): its asset's events of that instant that follow from
        it by causation_id."""
        d = self._adialect
        rows = self._x(
            conn,
            f"SELECT {EVENT_COLS} FROM asset_events WHERE asset_id = ? AND occurred_at = ? "
            "AND recorded_at = ? ORDER BY seq",
            (event.asset_id, d.ts(event.recorded_at), d.ts(event.recorded_at)),
        ).fetchall()
        causes = {event.event_id}
        caused: list[AssetEvent] = []
        for e in map(self._event, rows):
            if e.causation_id in causes and e.event_id not in causes:
                caused.append(e)
                causes.add(e.event_id)
        return caused

    def _claim_runs(self, conn: Any, task_id: str, claim_token: str) -> bool:
        return is_uuid(claim_token) and self._x(
            conn, "SELECT 1 FROM tasks WHERE task_id = ? AND claim_token = ? "
            "AND status = 'RUNNING'", (task_id, claim_token),
        ).fetchone() is not None

    def _reported_lease(
        self, conn: Any, lease_id: str, tenant_id: str, asset_id: str | None
    ) -> Lease:
        """The lease a reported event names: one of the tenant's (another tenant's reads
        like a missing one), on the event's asset when that is given."""
        found = self._leases_where(conn, "lease_id = ?", (lease_id,))
        if not found or found[0].tenant_id != tenant_id:
            raise ValidationError.single("lease_id", "unknown lease")
        if asset_id is not None and found[0].asset_id != asset_id:
            raise ValidationError.single(
                "lease_id", f"is a lease of another asset than asset_id {asset_id}")
        return found[0]

    def asset_events_list(
        self, *, tenant_id: str | None = None, asset_id: str | None = None,
        task_id: str | None = None, correlation_id: str | None = None,
        event_type: str | None = None, limit: int = 1000, newest_first: bool = False,
    ) -> list[AssetEvent]:
        """Events oldest first (by occurred_at, then write order), or newest first: by asset,
        by task, or one correlation_id's timeline."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if any(v is not None and not is_uuid(v) for v in (asset_id, task_id)):
            return []
        with self._aread() as conn:
            if task_id is not None:
                # A task's events carry its correlation_id: read them through that index.
                found = self._task_correlation(conn, task_id)
                if found is not None:
                    where.append(f"{self._adialect.by_correlation}correlation_id = ?")
                    params.append(found)
            for column, value in (("tenant_id", tenant_id), ("asset_id", asset_id),
                                  ("task_id", task_id), ("correlation_id", correlation_id),
                                  ("event_type", event_type)):
                if value is not None:
                    lead = self._adialect.by_correlation if column == "correlation_id" else ""
                    where.append(f"{lead}{column} = ?")
                    params.append(value)
            params.append(limit)
            rows = self._x(
                conn,
                f"SELECT {EVENT_COLS} FROM asset_events WHERE {' AND '.join(where)} "
                + ("ORDER BY occurred_at DESC, seq DESC LIMIT ?" if newest_first
                   else "ORDER BY occurred_at, seq LIMIT ?"),
                params,
            ).fetchall()
        return [self._event(r) for r in rows]

    def asset_event_get(self, event_id: str, tenant_id: str | None = None) -> AssetEvent:
        if not is_uuid(event_id):
            raise NotFound("asset event", event_id)
        with self._aread() as conn:
            row = self._x(
                conn, f"SELECT {EVENT_COLS} FROM asset_events WHERE event_id = ?", (event_id,)
            ).fetchone()
        if row is None or (tenant_id is not None and row[1] != tenant_id):
            raise NotFound("asset event", event_id)
        return self._event(row)

    def asset_event_chain(
        self, event_id: str, tenant_id: str | None = None, max_depth: int = MAX_CHAIN
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
                # Never past the event's own tenant (for an admin, tenant_id None), whatever
                # a causation_id stored before it was checked names.
                found = self.asset_event_get(cause, chain[0].tenant_id)
            except NotFound:
                break
            chain.append(found)
        return chain


class _AssetsReplayed(Exception):  # not an error: the answer of a resent create
    """A create sent again: its transaction ends (rolled back, nothing written) with the
    assets it made the first time, as they are now."""

    def __init__(self, assets: list[AssetSnapshot]) -> None:
        super().__init__("replayed")
        self.assets = assets


class _Replayed(Exception):  # not an error: the answer of a resent report
    """A reported event sent again: its transaction ends (rolled back, nothing written) with
    the events the first report answered."""

    def __init__(self, events: list[AssetEvent]) -> None:
        super().__init__("replayed")
        self.events = events


#: The identifiers a report may give in any case (stored lowercase).
_IDS = frozenset({"event_id", "asset_id", "task_id", "lease_id", "causation_id"})


def _same_report(
    written: AssetEvent, fields: dict[str, Any], tenant_id: str, task_id: str | None
) -> bool:
    """Whether `fields` (validated) report `written` again: the same tenant and reporting
    task, and each field given the one written (a field left out took a default then)."""
    if written.tenant_id != tenant_id or (task_id is not None and written.task_id != task_id):
        return False
    for name, value in fields.items():
        stored = getattr(written, name)
        if name in ("tags", "context"):
            if orjson.loads(orjson.dumps(value)) != orjson.loads(orjson.dumps(stored)):
                return False
        elif value is None:
            continue
        elif name in _IDS:
            if stored is None or str(stored).lower() != str(value).lower():
                return False
        elif stored != value:
            return False
    return True
