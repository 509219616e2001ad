"""The lease broker: matching resource hints to assets inside the claim, settling leases when
tasks move on, expiry with the claim, and the leader-only sweeps (cooling, NO_RESOURCE)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from creep.domain.asset import (
    LEASABLE,
    AssetMaintenanceReport,
    AssetSnapshot,
    AssetStatus,
    next_health,
)
from creep.domain.asset_event import (
    AssetEventType,
    Severity,
    Source,
)
from creep.domain.claim_lanes import lane_candidates, lane_match
from creep.domain.errors import NotFound, ValidationError
from creep.domain.ids import is_uuid, uuid7_many
from creep.domain.lease import Lease, LeaseStatus, check_lease_transition
from creep.domain.ledger import (
    cost_effect,
)
from creep.domain.matching import Candidate, Demand, Match
from creep.domain.task import ResultCode
from creep.ports_assets_api import valid_lease_cursor
from creep.storage.asset_base import (
    ASSET_COLS,
    CANDIDATES_PER_KIND,
    HINTED_SCAN_MAX,
    LEASE_COLS,
    STATUS_TEXT,
    AssetStoreBase,
    Pending,
    TaskRef,
)

_ALLOCATED = AssetEventType.ALLOCATED.value
#: The open lease batch of each connection (see LeaseBrokerMixin._leases_batched), by id().
_BATCHES: dict[int, Pending] = {}


class LeaseBrokerMixin(AssetStoreBase):
    # -- hooks called from the task paths --------------------------------------------------

    @contextmanager
    def _leases_batched(self, conn: Any) -> Iterator[None]:
        """Settle completions, then claim, in one transaction with one write per asset row.

        Settling frees concurrency that the claim right after takes again: written twice,
        each asset row flips IN_USE -> READY -> IN_USE, and on PostgreSQL every such status
        change is a non-HOT update (status is in the indexes' predicates) that bloats the
        asset indexes every later lookup, lock and lease foreign-key check walks. Inside
        this block the settle leaves its asset rows dirty in memory (on PostgreSQL they stay
        locked FOR UPDATE, so the memory is authoritative), the claim reads and changes those
        snapshots, and the rows are written once: by the claim, or here at the end. Events,
        lease and ledger rows are still written by each step as before."""
        batch = Pending()
        _BATCHES[id(conn)] = batch
        try:
            yield
            if batch.dirty and batch.deferred_at is not None:
                self._write_assets(conn, batch, batch.deferred_at)
        finally:
            _BATCHES.pop(id(conn), None)

    def _claim_hinted(
        self, conn: Any, worker_id: str, token: str, task_types: Sequence[str], limit: int,
        now: datetime, claim_ttl: float, tenant_id: str | None = None,
    ) -> list[Sequence[Any]]:
        """The claim step for tasks with resource_hints, inside the claim transaction: match
        and lease all hints of a task, or leave it QUEUED. Returns claimed task rows in the
        backend's plain claim's compact shape. With `tenant_id`, only that tenant's tasks (a
        tenant key's HTTP worker)."""
        saved = self._adialect.index_plans(conn)
        try:
            return self._claim_hinted_rows(
                conn, worker_id, token, task_types, limit, now, claim_ttl, tenant_id
            )
        finally:
            self._adialect.restore_plans(conn, saved)

    def _claim_hinted_rows(
        self, conn: Any, worker_id: str, token: str, task_types: Sequence[str], limit: int,
        now: datetime, claim_ttl: float, tenant_id: str | None, lane: int | None = None,
    ) -> list[Sequence[Any]]:
        """With `lane`, the claim prefers that claim lane's assets (claim_lanes.py)."""
        d = self._adialect
        q = d.qa
        batch = _BATCHES.get(id(conn))
        # Nothing can be leased while no asset has spare concurrency (e.g. a worker whose
        # handlers finished before their completions freed the pool): then this (evaluated
        # once) reads, and on PostgreSQL locks, no task for nothing. Not when a batch holds
        # asset rows freed in memory but not written yet.
        spare = "" if batch is not None and batch.dirty else (
            "AND EXISTS (SELECT 1 FROM assets WHERE status IN ('READY', 'IN_USE') AND "
            "current_concurrency < max_concurrency) "
        )
        page = max(32, limit)
        refs: dict[str, TaskRef] = {}
        pool: dict[str, Candidate] = {}
        snapshots: dict[str, AssetSnapshot] = {}
        kinds: set[tuple[Any, ...]] = set()
        claimed: list[Match] = []
        over_budget: list[str] = []
        # Tasks of one kind carry the same hints and constraints text: decoded once each
        # (matching only reads them).
        decoded: dict[str, Any] = {}
        order: dict[str, tuple[int, Any]] = {}  # each task's claim-order key
        # On PostgreSQL, t's status and run_after are re-checked on the row version the lock
        # reads: task_queue (q) is not re-read, and a retry may have committed a backoff.
        # Page through hinted tasks in claim order until `limit` are matched: tasks whose
        # resources are busy are passed over (no head-of-line blocking), up to a bound.
        for offset in range(0, HINTED_SCAN_MAX, page):
            rows = self._x(
                conn,
                "SELECT t.task_id, t.tenant_id, t.project_id, t.env, t.correlation_id, "
                "t.currency, t.max_total_cost, t.resource_hints, t.constraints, t.priority, "
                f"{d.row_key}, {q}.created_at FROM {d.queue_from} WHERE {q}.status = 'QUEUED' AND t.status = 'QUEUED' "
                f"AND {q}.has_hints = true AND {q}.run_after <= ? AND t.run_after <= ? AND "
                f"{d.in_texts(q + '.task_type')}{f' AND {q}.tenant_id = ?' if tenant_id else ''} "
                f"{spare}ORDER BY {q}.priority DESC, {q}.created_at "
                f"LIMIT ? OFFSET ?{d.skip_locked_t}",
                (d.ts(now), d.ts(now), d.texts(task_types),
                 *([tenant_id] if tenant_id else []), page,
                 offset),
            ).fetchall()
            demands: list[Demand] = []
            for (task_id, tenant, project, env, corr, currency, budget, hints, cons, prio,
                 row_key, created) in rows:
                if task_id in refs:
                    # Read on an earlier page already: on PostgreSQL each page is a new
                    # snapshot, and a commit in between (a submit ahead of it in claim order)
                    # shifts the OFFSET window back over rows this claim holds. Matched twice,
                    # the task would take two sets of leases and be charged twice.
                    continue
                # The claim's UPDATE appends the new lease ids and computes the deadline and
                # attempt itself: the task's lease_ids, timeout_ms and attempt are not read.
                refs[task_id] = TaskRef(task_id, tenant, project, env, corr, priority=prio,
                                        row_key=row_key)
                order[task_id] = (-prio, created)
                constraints = _decoded(d, cons, decoded)
                demands.append(Demand(
                    task_id=task_id, tenant_id=tenant, currency=currency,
                    hints=_decoded(d, hints, decoded),
                    min_health_score=float(constraints.get("min_health_score") or 0),
                    max_total_cost=None if budget is None else d.from_dec(budget),
                ))
            self._fill_spent(conn, [x for x in demands if x.max_total_cost is not None])
            kinds_before = len(kinds)
            self._load_candidates(conn, demands, kinds, pool, snapshots, batch)
            candidates = list(pool.values())
            for m in lane_match(demands, candidates, limit - len(claimed), lane):
                if m.picks:
                    claimed.append(m)
                elif m.refusal == "BUDGET_EXCEEDED":
                    over_budget.append(m.task_id)
            if len(claimed) >= limit or len(rows) < page:
                break
            if (not any(c.spare > 0 for c in lane_candidates(candidates, lane))
                    and len(kinds) == kinds_before
                    and not self._spare_elsewhere(conn, pool, batch)):
                # The assets loaded (the lane's) are used up and no other asset has room:
                # looking further cannot match. (Another asset with room may serve a kind
                # the next pages ask for: then the scan goes on, up to its bound.)
                break

        if over_budget or claimed:
            d.durable_commit(conn)  # what follows writes leases, charges or failures
        if over_budget:
            self._fail_queued(
                conn, over_budget, "BUDGET_EXCEEDED",
                "leasing the matched assets would exceed max_total_cost", now,
            )
        if claimed:
            claimed = self._in_claim_order(
                conn, claimed, order, task_types, limit, now, tenant_id)
        if not claimed:
            return []
        return self._lease_and_claim(
            conn, claimed, refs, snapshots, worker_id, token, now, claim_ttl, batch
        )

    def _in_claim_order(
        self, conn: Any, claimed: list[Match], order: Mapping[str, tuple[int, Any]],
        task_types: Sequence[str], limit: int, now: datetime, tenant_id: str | None,
    ) -> list[Match]:
        """The matched hinted tasks that belong in this claim: a claim takes the first
        `limit` claimable tasks in (priority desc, created_at) order, hinted or plain, so a
        plain task of higher priority is not pushed out by hinted ones the pool can serve.
        The rest stay QUEUED, unleased, for the next claim."""
        d = self._adialect
        q = d.qa
        plain = self._x(
            conn,
            f"SELECT {q}.priority, {q}.created_at FROM {d.queue_table} {q} "
            f"WHERE {q}.status = 'QUEUED' AND {q}.has_hints = false AND {q}.run_after <= ? "
            f"AND {d.in_texts(q + '.task_type')}{f' AND {q}.tenant_id = ?' if tenant_id else ''} "
            f"ORDER BY {q}.priority DESC, {q}.created_at LIMIT ?",
            (d.ts(now), d.texts(task_types), *([tenant_id] if tenant_id else []), limit),
        ).fetchall()
        if not plain:
            return claimed
        # Ties go to the hinted task: it has its assets now, the plain one can wait a round.
        ranked = sorted([(*order[m.task_id], 0, i) for i, m in enumerate(claimed)]
                        + [(-p, created, 1, 0) for p, created in plain])[:limit]
        keep = {i for _, _, kind, i in ranked if kind == 0}
        return [m for i, m in enumerate(claimed) if i in keep]

    def _spare_elsewhere(
        self, conn: Any, pool: Mapping[str, Candidate], batch: Pending | None
    ) -> bool:
        """Whether an asset outside `pool` could take a lease now. Assets `batch` changed are
        judged by their state in memory (their rows are not written yet)."""
        held = set(batch.dirty) if batch is not None else set()
        if batch is not None and any(
            a.asset_id not in pool and a.status in LEASABLE
            and a.current_concurrency < a.max_concurrency
            for a in (batch.assets[i] for i in held if i in batch.assets)
        ):
            return True
        d = self._adialect
        skip = sorted(set(pool) | held)
        return self._x(
            conn,
            "SELECT 1 FROM assets WHERE status IN ('READY', 'IN_USE') AND "
            "current_concurrency < max_concurrency"
            + (f" AND NOT ({d.in_ids('asset_id')})" if skip else "") + " LIMIT 1",
            (d.ids(skip),) if skip else (),
        ).fetchone() is not None

    def _fill_spent(self, conn: Any, demands: Sequence[Demand]) -> None:
        if not demands:
            return
        d = self._adialect
        by_id = {x.task_id: x for x in demands}
        for task_id, entry_type, amount in self._x(
            conn,
            "SELECT task_id, entry_type, amount FROM ledger_entries "
            f"WHERE {d.by_task}{d.in_ids('task_id')}",
            (d.ids(list(by_id)),),
        ).fetchall():
            by_id[task_id].spent += cost_effect(entry_type, d.from_dec(amount))

    def _load_candidates(
        self, conn: Any, demands: Sequence[Demand], kinds: set[tuple[Any, ...]],
        pool: dict[str, Candidate], snapshots: dict[str, AssetSnapshot],
        batch: Pending | None = None,
    ) -> None:
        """Load the leasable assets of each kind the demands ask for that is not loaded yet
        (without locks: the picked ones are locked afterwards). A kind is everything a hint
        filters on (sku, attributes, min_health_score), all of it in SQL, so the
        CANDIDATES_PER_KIND bound never hides a rare match behind common assets. Assets a
        `batch` holds come from its snapshots (their rows are not written yet); the SQL
        lets them through whatever their stored concurrency, and matching re-checks all.
        Past the bound, the assets loaded are the first in the preference order (healthier,
        less loaded, cheaper), and for kinds a task with a budget asks for, the cheapest
        too: the fallback to the cheapest set must see them."""
        d = self._adialect
        held = sorted(batch.dirty) if batch is not None else []
        wanted: dict[tuple[Any, ...], tuple[Demand, dict[str, Any]]] = {}
        budgeted: set[tuple[Any, ...]] = set()
        for x in demands:
            for hint in x.hints:
                key = (x.tenant_id, hint["sku_category"], hint.get("sku_code"), x.currency,
                       repr(sorted((hint.get("attributes") or {}).items())),
                       x.min_health_score)
                wanted.setdefault(key, (x, hint))
                if x.max_total_cost is not None:
                    budgeted.add(key)
        load = "current_concurrency * 1.0 / max_concurrency"
        preferred = f"health_score DESC, {load}, {d.cost_order}, asset_id"
        for key in sorted(set(wanted) - kinds, key=str):
            kinds.add(key)
            demand, hint = wanted[key]
            where, params = self._candidate_filter(demand, hint, held)
            orders = [preferred]
            if key in budgeted:
                orders.append(f"{d.cost_order}, {preferred}")
            for order in orders:
                rows = self._x(
                    conn, f"SELECT {ASSET_COLS} FROM assets WHERE {where} ORDER BY {order} "
                    "LIMIT ?", [*params, CANDIDATES_PER_KIND],
                ).fetchall()
                self._add_candidates(rows, pool, snapshots, batch)
                if len(rows) < CANDIDATES_PER_KIND:
                    break  # every asset of the kind is loaded

    def _add_candidates(
        self, rows: Sequence[Sequence[Any]], pool: dict[str, Candidate],
        snapshots: dict[str, AssetSnapshot], batch: Pending | None,
    ) -> None:
        for r in rows:
            if r[0] in pool:
                continue
            a = batch.assets.get(r[0]) if batch is not None else None
            a = a or self._asset(r)
            snapshots[a.asset_id] = a
            pool[a.asset_id] = Candidate(
                asset_id=a.asset_id, tenant_id=a.tenant_id, sku_category=a.sku_category,
                sku_code=a.sku_code, attributes=a.attributes,
                max_concurrency=a.max_concurrency,
                current_concurrency=a.current_concurrency, health_score=a.health_score,
                cost_per_lease=a.cost_per_lease, currency=a.currency, status=STATUS_TEXT[a.status],
            )

    def _candidate_filter(
        self, demand: Demand, hint: dict[str, Any], held: Sequence[str] = ()
    ) -> tuple[str, list[Any]]:
        """The SQL of one hint's static filter (matching._static_fits re-checks in Python).
        `held`: assets whose stored row is stale (a batch changed them in memory): they pass
        whatever their stored concurrency says."""
        d = self._adialect
        where = ("tenant_id = ? AND sku_category = ? AND currency = ? AND "
                 "status IN ('READY', 'IN_USE')")
        params: list[Any] = [demand.tenant_id, hint["sku_category"], demand.currency]
        if held:
            where += f" AND (current_concurrency < max_concurrency OR {d.in_ids('asset_id')})"
            params.append(d.ids(held))
        else:
            where += " AND current_concurrency < max_concurrency"
        code = hint.get("sku_code")
        if code is not None and code.endswith(".*"):
            where += " AND substr(sku_code, 1, ?) = ?"
            params += [len(code) - 1, code[:-1]]
        elif code is not None:
            where += " AND sku_code = ?"
            params.append(code)
        if demand.min_health_score > 0:
            where += " AND health_score >= ?"
            params.append(demand.min_health_score)
        attr_sql, attr_params = self._adialect.attrs_filter(hint.get("attributes") or {})
        return where + attr_sql, params + attr_params

    def _lease_and_claim(
        self, conn: Any, matches: Sequence[Match], refs: Mapping[str, TaskRef],
        snapshots: Mapping[str, AssetSnapshot], worker_id: str, token: str, now: datetime,
        claim_ttl: float, batch: Pending | None = None,
    ) -> list[Sequence[Any]]:
        d = self._adialect
        expires = now + timedelta(seconds=claim_ttl)
        # In a batch, its snapshots (locked on PostgreSQL) are the assets' current state:
        # _lock_assets only loads and locks the others.
        pending = Pending() if batch is None else batch
        picked_ids = sorted({a.asset_id for m in matches for _, a in m.picks})
        if d.lock:
            # Candidates were read without locks (a claim never holds up completions that
            # release assets); now lock the picked ones and keep only the matches that still
            # fit. Locked ones are skipped, never waited for: the claim may share its
            # transaction with completions that settle leases (and so hold asset locks), and
            # a wait here could close a cycle with another worker doing the same. The CHECK
            # on current_concurrency is the last guard.
            assets = self._lock_assets(conn, picked_ids, pending, skip_locked=True)
            matches = _still_fitting(matches, assets)
            if not matches:
                return []
        else:
            pending.assets.update(snapshots)  # SQLite: one writer, read in this transaction
            assets = pending.assets
        lease_rows: list[tuple[Any, ...]] = []
        ledger_rows: list[tuple[Any, ...]] = []
        lease_ids_by_task: dict[str, list[str]] = {}
        # A lease id, its ALLOCATED event id and its ledger entry id per pick, made in one
        # batch (in the order single calls would make them, so they still increase).
        ids = iter(uuid7_many(3 * sum(len(m.picks) for m in matches)))
        # ALLOCATED contexts differ only by hint index: each encoded once per claim.
        contexts: dict[int, Any] = {}
        by_priority = d.task_priority_column
        for m in matches:
            ref = refs[m.task_id]
            for hint_index, cand in m.picks:
                asset = assets[cand.asset_id]
                lease_id = next(ids)
                lease_ids_by_task.setdefault(m.task_id, []).append(lease_id)
                old = STATUS_TEXT[asset.status]
                asset.current_concurrency += 1
                pending.dirty.add(asset.asset_id)
                if asset.status is AssetStatus.READY:
                    self._set_status(asset, AssetStatus.IN_USE, pending, now)
                cost = d.dec(asset.cost_per_lease)
                lease_rows.append((
                    lease_id, asset.tenant_id, m.task_id, asset.asset_id, cost, asset.currency,
                    hint_index, *((ref.priority,) if by_priority else ()),
                ))
                context = contexts.get(hint_index)
                if context is None:
                    context = contexts[hint_index] = d.bulk_js(
                        {"hint_index": hint_index, "worker_id": worker_id}
                    )
                pending.rows.append(self._routine_row(
                    asset, _ALLOCATED, ref, lease_id, old,
                    f"leased to task {m.task_id}", context, event_id=next(ids),
                ))
                if asset.cost_per_lease > 0:
                    ledger_rows.append((
                        next(ids), asset.tenant_id, ref.project_id, m.task_id,
                        asset.asset_id, lease_id, cost, asset.currency,
                        *((ref.priority,) if by_priority else ()),
                    ))
        with d.pipeline(conn):  # one round trip on PostgreSQL
            # What every row of this claim shares is bound once (released_at stays NULL).
            d.bulk_insert(
                conn, "leases",
                ("lease_id", "tenant_id", "task_id", "asset_id", "cost", "currency",
                 "hint_index", *(("task_priority",) if by_priority else ())),
                lease_rows,
                fixed=[("status", "ACTIVE"), ("acquired_at", d.ts(now)),
                       ("expires_at", d.ts(expires)), ("claim_token", token)],
            )
            d.bulk_insert(
                conn, "ledger_entries",
                ("entry_id", "tenant_id", "project_id", "task_id", "asset_id", "lease_id",
                 "amount", "currency", *(("task_priority",) if by_priority else ())),
                ledger_rows,
                fixed=[("entry_type", "COST"), ("description", "lease"),
                       ("occurred_at", d.ts(now)), ("recorded_at", d.ts(now))],
            )
            self._write_pending(conn, pending, now)
            fetch = d.claim_leased(
                conn, lease_ids_by_task, [refs[t].row_key for t in lease_ids_by_task],
                worker_id, token, now, expires,
            )
        rows: list[Sequence[Any]] = fetch()
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
        self, conn: Any, done: Sequence[tuple[str, str, str, str, str | None]], now: datetime
    ) -> None:
        """After running tasks with leases moved on ((task_id, claim_token, new status,
        task event type, result code)): write TASK_SUCCESS / TASK_FAIL / TASK_TIMEOUT with the health rule
        for each leased asset, and release the claim's active leases (kept on SUCCESS when
        constraints.keep_leases)."""
        if not done:
            return
        saved = self._adialect.index_plans(conn)
        try:
            self._settle(conn, done, now)
        finally:
            self._adialect.restore_plans(conn, saved)

    def _settle(
        self, conn: Any, done: Sequence[tuple[str, str, str, str, str | None]], now: datetime
    ) -> None:
        d = self._adialect
        batch = _BATCHES.get(id(conn))
        pending = Pending() if batch is None else batch
        leases, tasks = self._leases_with_tasks(
            conn, [x[0] for x in done], [x[1] for x in done], lock_into=pending,
        )
        # By task and claim: one claim hands out many tasks under one token, and a task
        # retried since holds leases of its earlier claim too. The read above matches ids and
        # tokens separately, so it may return such pairs; only the finished claims settle.
        by_claim = {(x[0], x[1]): x for x in done}
        leases = [lease for lease in leases if (lease.task_id, lease.claim_token) in by_claim]
        if not leases:
            return
        keep = {t.task_id for t in tasks.values() if t.keep_leases}
        assets = self._lock_assets(conn, [lease.asset_id for lease in leases], pending)
        causes: dict[str, str | None] = {}
        to_release: list[Lease] = []
        # Routine event ids (TASK_SUCCESS, then RELEASED, per lease) in one uuid7 batch.
        ids = iter(uuid7_many(2 * len(leases)))
        kept: list[str] = []
        # TASK_SUCCESS contexts by (health before, after): each encoded once per settle.
        contexts: dict[tuple[int, int], Any] = {}
        for lease in leases:
            task_id, _, status, event_type, result_code = by_claim[
                lease.task_id, lease.claim_token]
            effect = _effect(status, event_type)
            if effect != AssetEventType.TASK_TIMEOUT and (
                lease.status is LeaseStatus.EXPIRED or result_code == ResultCode.WORKER_LOST
            ):
                # A lost worker is not the asset's fault, whatever became of the lease
                # before (revoked by a ban, released by hand).
                effect = None
            if effect is not None:
                asset = assets[lease.asset_id]
                before = asset.health_score
                asset.health_score = next_health(before, effect)
                pending.dirty.add(asset.asset_id)
                health = {"health_score_before": before, "health_score_after": asset.health_score}
                if effect == AssetEventType.TASK_SUCCESS:  # never a failure: no policy reads it
                    pair = (before, asset.health_score)
                    context = contexts.get(pair)
                    if context is None:
                        context = contexts[pair] = d.bulk_js(health)
                    row = self._routine_row(
                        asset, effect, tasks.get(task_id), lease.lease_id,
                        STATUS_TEXT[asset.status], f"task {status}", context,
                        event_id=next(ids, None),
                    )
                    pending.rows.append(row)
                    causes[lease.lease_id] = row[0]
                else:
                    ev = self._new_event(
                        asset, effect, now, task=tasks.get(task_id), lease_id=lease.lease_id,
                        severity=Severity.WARN, message=f"task {status}", context=health,
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
        self._end_leases(conn, to_release, LeaseStatus.RELEASED, pending, now, tasks, causes,
                         routine=not pending.events, ids=ids)
        self._auto_ban_many(conn, pending, now)
        if batch is not None and pending.dirty:
            pending.deferred_at = now  # the asset rows are written once, after the claim
        with d.pipeline(conn):  # the writes and the wake-up in one round trip
            self._write_pending(conn, pending, now, assets=batch is None)
            if to_release:
                self._capacity_freed(conn)

    def _leases_expire(
        self, conn: Any, claims: Sequence[tuple[str, str]], now: datetime
    ) -> None:
        """The rescuer took these claims back: their active leases end EXPIRED."""
        if not claims:
            return
        leases = self._claims_leases(conn, claims, LeaseStatus.ACTIVE)
        if not leases:
            return
        pending = Pending()
        tasks = self._task_refs(conn, [lease.task_id for lease in leases])
        self._end_leases(conn, leases, LeaseStatus.EXPIRED, pending, now, tasks, {})
        self._flush(conn, pending, now)

    def _leases_renew(self, conn: Any, task_ids: Sequence[str], expires: datetime) -> None:
        """A heartbeat renewed these claims: their leases follow."""
        d = self._adialect
        if task_ids:
            self._x(
                conn,
                f"UPDATE leases SET expires_at = ? WHERE {d.by_task}status = 'ACTIVE' AND "
                f"expires_at IS NOT NULL AND {d.in_ids('task_id')}",
                (d.ts(expires), d.ids(task_ids)),
            )

    def _leases_revoked(
        self, conn: Any, claims: Sequence[tuple[str, str]]
    ) -> dict[str, list[str]]:
        """The REVOKED leases of these held claims ((task_id, claim_token)), for the
        heartbeat to tell the running handlers."""
        if not claims:
            return {}
        out: dict[str, list[str]] = {}
        revoked = self._claims_leases(conn, claims, LeaseStatus.REVOKED)
        for lease in sorted(revoked, key=lambda x: x.lease_id):
            out.setdefault(lease.task_id, []).append(lease.lease_id)
        return out

    # -- leases: public --------------------------------------------------------------------

    def lease_list(
        self, *, tenant_id: str | None = None, task_id: str | None = None,
        asset_id: str | None = None, status: str | None = None, limit: int = 1000,
        after: str | None = None, newest_first: bool = False,
    ) -> list[Lease]:
        """By acquired_at, then lease_id: oldest first, or newest first. `after` is the
        `lease_cursor` of the last lease of the previous page (of the same order)."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (("tenant_id", tenant_id), ("task_id", task_id),
                              ("asset_id", asset_id), ("status", status)):
            if value is not None:
                if column in ("task_id", "asset_id") and not is_uuid(value):
                    return []
                lead = self._adialect.by_task if column == "task_id" else ""
                where.append(f"{lead}{column} = ?")
                params.append(value)
        if after is not None:
            at, lease_id = _lease_after(after)
            way = "<" if newest_first else ">"
            where.append(f"(acquired_at {way} ? OR (acquired_at = ? AND lease_id {way} ?))")
            params += [self._adialect.ts(at), self._adialect.ts(at), lease_id]
        params.append(limit)
        with self._aread() as conn:
            rows = self._x(
                conn,
                f"SELECT {LEASE_COLS} FROM leases WHERE {' AND '.join(where)} "
                + ("ORDER BY acquired_at DESC, lease_id DESC LIMIT ?" if newest_first
                   else "ORDER BY acquired_at, lease_id LIMIT ?"),
                params,
            ).fetchall()
        return [self._lease(r) for r in rows]

    def lease_release(
        self, lease_id: str, now: datetime, *, tenant_id: str | None = None
    ) -> Lease:
        """Release one active lease by hand (e.g. a lease kept after its task finished)."""
        if not is_uuid(lease_id):
            raise NotFound("lease", lease_id)
        with self._atx() as conn:
            leases = self._leases_where(conn, "lease_id = ?", (lease_id,))
            if not leases or (tenant_id is not None and leases[0].tenant_id != tenant_id):
                raise NotFound("lease", lease_id)
            lease = leases[0]
            check_lease_transition(lease.status, LeaseStatus.RELEASED)
            pending = Pending()
            if not self._end_leases(conn, [lease], LeaseStatus.RELEASED, pending, now,
                                    self._task_refs(conn, [lease.task_id]), {}):
                # Ended by another transaction while this one waited for the asset.
                [current] = self._leases_where(conn, "lease_id = ?", (lease_id,))
                check_lease_transition(current.status, LeaseStatus.RELEASED)  # raises
            self._flush(conn, pending, now)
            self._capacity_freed(conn)
        return lease

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
                # In the cooling index's order (by asset_id, SQLite walked every asset).
                f"cooldown_until <= ? ORDER BY cooldown_until, asset_id LIMIT ?{d.skip_locked}",
                (d.ts(now), limit),
            ).fetchall()
            if rows:
                pending = Pending()
                for r in rows:
                    asset = self._asset(r)
                    pending.assets[asset.asset_id] = asset
                    self._change_status(conn, asset, AssetStatus.READY, pending, now,
                                        Source.CONTROL_PLANE, "cooldown over")
                self._flush(conn, pending, now)
                self._capacity_freed(conn)
                report.cooled = len(rows)
            # Driven by an index of the queue, never by a scan of every task (PostgreSQL's
            # planner may otherwise start from tasks' side of the join): on SQLite the hinted
            # one, on PostgreSQL the one of overdue instants (migration 0014).
            lead, lead_params = d.overdue_lead(now)
            saved = d.index_plans(conn)
            try:
                overdue = self._x(
                    conn,
                    f"SELECT t.task_id FROM {d.queue_from} WHERE {lead}{d.qa}.status = 'QUEUED' "
                    f"AND t.status = 'QUEUED' AND {d.qa}.has_hints = true AND "
                    # From when the task became runnable: a retry's backoff is not waiting
                    # for resources (migration 0015 keeps PostgreSQL's index instant so).
                    f"{d.plus_ms(d.later('t.queued_at', 't.run_after'), 't.timeout_ms')} <= ? "
                    f"LIMIT ?{d.skip_locked_t}",
                    (*lead_params, d.ts(now), limit),
                ).fetchall()
            finally:
                d.restore_plans(conn, saved)
            if overdue:
                report.no_resource = len(self._fail_queued(
                    conn, [r[0] for r in overdue], "NO_RESOURCE",
                    "no matching assets were free before the task's deadline", now,
                ))
        return report


def _still_fitting(
    matches: Sequence[Match], assets: Mapping[str, AssetSnapshot]
) -> list[Match]:
    """The matches whose picked assets, as locked now, are still leasable with room, at the
    price and in the currency the match (and its budget check) read: an asset repriced or
    moved to another currency meanwhile is left to the next claim, which reads it anew."""
    taken: dict[str, int] = {}
    kept: list[Match] = []
    for m in matches:
        ids = [a.asset_id for _, a in m.picks]
        if all(
            (fresh := assets.get(c.asset_id)) is not None and fresh.status in LEASABLE
            and fresh.current_concurrency + taken.get(c.asset_id, 0) < fresh.max_concurrency
            and fresh.cost_per_lease == c.cost_per_lease and fresh.currency == c.currency
            for _, c in m.picks
        ):
            for i in ids:
                taken[i] = taken.get(i, 0) + 1
            kept.append(m)
    return kept


def _decoded(d: Any, raw: Any, memo: dict[str, Any]) -> Any:
    """A JSON column's value, decoded once per distinct text (SQLite hands out text;
    PostgreSQL's values arrive decoded and pass through)."""
    if not isinstance(raw, str):
        return d.from_js(raw)
    found = memo.get(raw)
    if found is None:
        found = memo[raw] = d.from_js(raw)
    return found


def _effect(status: str, event_type: str) -> str | None:
    if status == "SUCCESS":
        return AssetEventType.TASK_SUCCESS
    if status == "TIMEOUT":
        return AssetEventType.TASK_TIMEOUT
    if status in ("FAILED", "DEAD_LETTER") or event_type == "retrying":
        return AssetEventType.TASK_FAIL
    return None


def _lease_after(cursor: str) -> tuple[datetime, str]:
    """A `lease_cursor` (ports_assets_api) as this store issued it; else a ValidationError."""
    if valid_lease_cursor(cursor):
        when, _, lease_id = cursor.rpartition("|")
        return datetime.fromisoformat(when), lease_id
    raise ValidationError.single("cursor", "is not a cursor this server issued")
