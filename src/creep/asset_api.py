"""The Python API for assets, leases, asset events and the ledger (mixed into Creep).

Every method takes `tenant_id` like the task methods do: with it, objects of other tenants
are not found.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from creep.domain.asset import (
    AssetFilter,
    AssetMaintenanceReport,
    AssetSnapshot,
    AssetStatus,
    currency_code,
    money,
    name_items,
    sku_pattern_rule,
    validate_asset_changes,
    validate_asset_spec,
)
from creep.domain.asset_event import (
    AssetEvent,
    BanPolicy,
    occurred_at_rule,
    validate_ban_policy,
    validate_reported_event,
)
from creep.domain.clock import INSTANT_RULE, Clock, storable_instant
from creep.domain.errors import ConflictError, IdTaken, NotFound, ValidationError, check_member
from creep.domain.ids import canonical_uuid, is_uuid, uuid7
from creep.domain.lease import Lease, LeaseStatus
from creep.domain.ledger import EntryType, LedgerEntry, LedgerSummary
from creep.domain.text import bad_text
from creep.ports import Store


class AssetApi:
    clock: Clock

    @property
    def store(self) -> Store:
        raise NotImplementedError  # Creep opens it

    # -- assets ----------------------------------------------------------------------------

    def create_asset(self, **fields: Any) -> AssetSnapshot:
        """Add one asset to the pool (status NEW or READY; event IMPORTED). With an asset_id
        that exists: see import_assets."""
        return self.import_assets([fields])[0]

    def import_assets(self, assets: Iterable[Mapping[str, Any]]) -> list[AssetSnapshot]:
        """Bulk import in one transaction: all valid, or nothing is written. The same import
        again (every asset_id given, each made by the same fields) returns those assets as
        they are now and writes nothing; an asset_id of another asset, or existing assets
        beside new ones, raise IdTaken naming `assets[i].asset_id`."""
        errors: list[tuple[str, str]] = []
        specs = []
        for i, fields in enumerate(assets):
            try:
                specs.append(validate_asset_spec(fields, prefix=f"assets[{i}]."))
            except ValidationError as exc:
                errors.extend(exc.errors)
        seen: dict[str, int] = {}
        for i, spec in enumerate(specs):
            first = seen.setdefault(spec.asset_id, i)
            if first != i:
                errors.append((f"assets[{i}].asset_id", f"repeats assets[{first}].asset_id"))
        if errors:
            raise ValidationError(errors)
        try:
            return self.store.asset_create_many(specs, self.clock.now())
        except IdTaken as exc:  # an asset_id that exists already
            raise name_items(exc, [s.asset_id for s in specs], "assets[{}].") from None

    def get_asset(self, asset_id: str, *, tenant_id: str | None = None) -> AssetSnapshot:
        return self.store.asset_get(canonical_uuid(asset_id), tenant_id)

    def list_assets(
        self, *, tenant_id: str | None = None, status: str | None = None,
        sku_category: str | None = None, sku_code: str | None = None,
        project_id: str | None = None, after: str | None = None, limit: int = 100,
    ) -> list[AssetSnapshot]:
        """Assets ordered by asset_id; pass the last one's asset_id as `after` for the next page."""
        _check_limit(limit)
        after = canonical_uuid(after)
        if after is not None and not is_uuid(after):
            raise ValidationError.single("after", "must be the asset_id of the last asset read")
        if status is not None and status not in AssetStatus.__members__:
            raise ValidationError.single(
                "status", f"must be one of {[s.value for s in AssetStatus]}")
        if sku_code is not None and (rule := sku_pattern_rule(sku_code)) is not None:
            raise ValidationError.single("sku_code", rule)
        flt = AssetFilter(tenant_id, status, sku_category, sku_code, project_id)
        return self.store.asset_list(flt, after=after, limit=limit)

    def update_asset(
        self, asset_id: str, expected_version: int, *, tenant_id: str | None = None,
        **changes: Any,
    ) -> AssetSnapshot:
        """Change an asset that still has `version == expected_version` (else VersionConflict)."""
        return self._update_assets(
            [(asset_id, expected_version, changes)], tenant_id, by_item=False)[0]

    def update_assets(
        self, items: Iterable[tuple[str, int, Mapping[str, Any]]], *,
        tenant_id: str | None = None,
    ) -> list[AssetSnapshot]:
        """Bulk update, all or nothing: (asset_id, expected_version, changes) each. Errors
        name the item: `items[1].max_concurrency`."""
        return self._update_assets(list(items), tenant_id, by_item=True)

    def _update_assets(
        self, items: list[tuple[str, int, Mapping[str, Any]]], tenant_id: str | None,
        by_item: bool,
    ) -> list[AssetSnapshot]:
        errors: list[tuple[str, str]] = []
        checked = []
        for i, (asset_id, version, changes) in enumerate(items):
            if isinstance(version, bool) or not isinstance(version, int) or version < 1:
                errors.append((f"items[{i}].expected_version" if by_item else
                               "expected_version", "must be the asset's version (an integer >= 1)"))
            try:
                checked.append((canonical_uuid(asset_id), version, validate_asset_changes(
                    changes, f"items[{i}]." if by_item else "")))
            except ValidationError as exc:
                errors.extend(exc.errors)
        if errors:
            raise ValidationError(errors)
        seen: set[str] = set()
        for i, (asset_id, _, _) in enumerate(checked):
            if asset_id in seen:
                raise ValidationError.single(
                    f"items[{i}].asset_id", "names an asset already changed in this call")
            seen.add(asset_id)
            if not is_uuid(asset_id):
                raise NotFound("asset", asset_id)
        try:
            return self.store.asset_update_many(checked, self.clock.now(), tenant_id=tenant_id)
        except ValidationError as exc:  # max_concurrency below an asset's leases, IN_USE
            if not by_item:
                raise
            raise name_items(exc, [a for a, _, _ in checked], "items[{}].") from None
        except ConflictError as exc:  # an illegal transition, a SOLD/ARCHIVED asset's fields
            hit = next((i for i, (a, _, _) in enumerate(checked) if a in exc.message), None)
            if by_item and hit is not None:
                exc.args = (f"items[{hit}]: {exc.message}",)  # the same error, its item named
            raise

    def ban_asset(
        self, asset_id: str, *, reason: str | None = None, tenant_id: str | None = None
    ) -> AssetSnapshot:
        """BANNED by an operator: active leases are REVOKED (event BANNED)."""
        return self._set_asset_status(asset_id, AssetStatus.BANNED, reason, tenant_id)

    def unban_asset(
        self, asset_id: str, *, reason: str | None = None, tenant_id: str | None = None
    ) -> AssetSnapshot:
        """BANNED -> READY (event UNBANNED); earlier failures no longer count to auto-ban.
        An asset that is not BANNED is a ConflictError (a NEW one is activated by
        `update_asset(..., status="READY")`)."""
        return self._set_asset_status(asset_id, AssetStatus.READY, reason, tenant_id,
                                      only_from=AssetStatus.BANNED)

    def archive_asset(
        self, asset_id: str, *, reason: str | None = None, tenant_id: str | None = None
    ) -> AssetSnapshot:
        return self._set_asset_status(asset_id, AssetStatus.ARCHIVED, reason, tenant_id)

    def sell_asset(
        self, asset_id: str, *, reason: str | None = None, tenant_id: str | None = None
    ) -> AssetSnapshot:
        return self._set_asset_status(asset_id, AssetStatus.SOLD, reason, tenant_id)

    def _set_asset_status(
        self, asset_id: str, status: AssetStatus, reason: str | None, tenant_id: str | None,
        only_from: AssetStatus | None = None,
    ) -> AssetSnapshot:
        asset_id = canonical_uuid(asset_id)
        if not is_uuid(asset_id):
            raise NotFound("asset", asset_id)
        asset, _ = self.store.asset_set_status(
            asset_id, status, self.clock.now(), tenant_id=tenant_id, reason=reason,
            only_from=only_from,
        )
        return asset

    def set_ban_policy(
        self, sku_category: str, *, max_failures: int, window_seconds: int,
        failure_event_types: list[str] | None = None, tenant_id: str = "default",
    ) -> BanPolicy:
        """Auto-ban assets of `sku_category`: `max_failures` failure events on one asset
        within `window_seconds` -> BANNED (event ASSET_BANNED, caused by the last failure)."""
        policy = validate_ban_policy(
            tenant_id, sku_category, max_failures, window_seconds, failure_event_types
        )
        return self.store.ban_policy_set(policy, self.clock.now())

    def get_ban_policy(self, sku_category: str, *, tenant_id: str = "default") -> BanPolicy | None:
        return self.store.ban_policy_get(tenant_id, sku_category)

    def list_ban_policies(self, *, tenant_id: str | None = "default") -> list[BanPolicy]:
        """The tenant's policies by sku_category (tenant_id=None: every tenant's)."""
        policies: list[BanPolicy] = []
        while True:
            after = (policies[-1].tenant_id, policies[-1].sku_category) if policies else None
            page = self.store.ban_policy_list(tenant_id, after=after, limit=1000)
            policies += page
            if len(page) < 1000:
                return policies

    def delete_ban_policy(self, sku_category: str, *, tenant_id: str = "default") -> BanPolicy:
        """Stop auto-banning assets of `sku_category` (banned ones stay BANNED); the policy
        removed. NotFound when there is none."""
        return self.store.ban_policy_delete(tenant_id, sku_category)

    # -- leases ----------------------------------------------------------------------------

    def list_leases(
        self, *, tenant_id: str | None = None, task_id: str | None = None,
        asset_id: str | None = None, status: str | None = None, limit: int = 1000,
    ) -> list[Lease]:
        _check_limit(limit)
        check_member("status", status, LeaseStatus)
        return self.store.lease_list(
            tenant_id=tenant_id, task_id=canonical_uuid(task_id),
            asset_id=canonical_uuid(asset_id), status=status, limit=limit,
        )

    def release_lease(self, lease_id: str, *, tenant_id: str | None = None) -> Lease:
        """Release an active lease by hand (e.g. one kept by constraints.keep_leases)."""
        return self.store.lease_release(
            canonical_uuid(lease_id), self.clock.now(), tenant_id=tenant_id)

    # -- asset events ----------------------------------------------------------------------

    def report_asset_event(self, *, tenant_id: str = "default", **fields: Any) -> AssetEvent:
        """Record an event about an asset from outside a task (e.g. a provider's webhook).
        `task_id` names the task that caused it (else it follows from `lease_id`): the event
        then carries the task's correlation_id and is listed with the task's events. A lease
        named must be the tenant's, on `asset_id` and of that task; an unknown task or lease
        raises ValidationError. `old_status`/`new_status` are asset statuses: an old_status
        that is not the asset's is a ConflictError (a stale view, nothing stored); a
        new_status other than its status is applied as an operator's change (a ban revokes
        its leases) through the transition table (IllegalTransition otherwise), by creep's
        own event (BANNED, UNBANNED, COOLING_START, ...) caused by this one. creep's own
        event types are refused, as is an occurred_at more than 5 minutes ahead. The auto-ban
        policy applies; `asset_events`/`asset_event_chain` show what followed."""
        checked = validate_reported_event(fields)
        return self.store.asset_event_report(checked, self.clock.now(), tenant_id=tenant_id)[0]

    def asset_events(
        self, *, asset_id: str | None = None, task_id: str | None = None,
        event_type: str | None = None, tenant_id: str | None = None, limit: int = 1000,
    ) -> list[AssetEvent]:
        """Events of an asset or a task, oldest first."""
        if asset_id is None and task_id is None:
            raise ValidationError.single("asset_id", "give asset_id or task_id")
        _check_limit(limit)
        return self.store.asset_events_list(
            tenant_id=tenant_id, asset_id=canonical_uuid(asset_id),
            task_id=canonical_uuid(task_id), event_type=event_type, limit=limit,
        )

    def asset_timeline(
        self, correlation_id: str, *, tenant_id: str | None = None, limit: int = 1000
    ) -> list[AssetEvent]:
        """Every event of one correlation_id, in time order."""
        _check_limit(limit)
        return self.store.asset_events_list(
            tenant_id=tenant_id, correlation_id=correlation_id, limit=limit
        )

    def asset_event_chain(self, event_id: str, *, tenant_id: str | None = None) -> list[AssetEvent]:
        """The event, then its cause, its cause's cause ... up to the root."""
        return self.store.asset_event_chain(canonical_uuid(event_id), tenant_id)

    # -- ledger ----------------------------------------------------------------------------

    def record_ledger_entry(
        self, *, entry_type: str, amount: Decimal | int | str, currency: str,
        tenant_id: str = "default", project_id: str | None = None, task_id: str | None = None,
        asset_id: str | None = None, lease_id: str | None = None,
        description: str | None = None, occurred_at: datetime | None = None,
        entry_id: str | None = None,
    ) -> LedgerEntry:
        """Append one entry. Tied to a task: the currency must be the task's, and a cost that
        would take it over max_total_cost raises BudgetExceeded (nothing is written), and a
        deleted task (in the recycle bin) raises TaskDeleted until it is restored.
        `entry_id` (a UUID the caller picks) makes it safe to call again after a failure:
        the same entry again returns the one written then and writes nothing; another entry
        under that id raises IdTaken (a ConflictError)."""
        entry = make_entry(
            self.clock.now(), entry_type=entry_type, amount=amount, currency=currency,
            tenant_id=tenant_id, project_id=project_id, task_id=task_id, asset_id=asset_id,
            lease_id=lease_id, description=description, occurred_at=occurred_at,
            entry_id=entry_id,
        )
        return self.store.ledger_append(entry, occurred_given=occurred_at is not None)[0]

    def ledger_entries(
        self, *, tenant_id: str | None = None, project_id: str | None = None,
        task_id: str | None = None, since: datetime | None = None,
        until: datetime | None = None, limit: int = 1000,
    ) -> list[LedgerEntry]:
        _check_limit(limit)
        _check_range(since, until)
        return self.store.ledger_list(
            tenant_id=tenant_id, project_id=project_id, task_id=canonical_uuid(task_id),
            since=since, until=until, limit=limit,
        )

    def ledger_summary(
        self, *, tenant_id: str | None = None, project_id: str | None = None,
        task_id: str | None = None, since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LedgerSummary]:
        """Cost, revenue and margin per currency over [since, until) of occurred_at."""
        _check_range(since, until)
        return self.store.ledger_summary(
            tenant_id=tenant_id, project_id=project_id, task_id=canonical_uuid(task_id),
            since=since, until=until,
        )

    def maintain_assets(self) -> AssetMaintenanceReport:
        """Run the leader-only asset sweeps once (workers do it on their maintenance tick)."""
        return self.store.asset_maintain(self.clock.now())


def _check_limit(limit: Any) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise ValidationError.single("limit", "must be an integer >= 0")


def _check_range(since: datetime | None, until: datetime | None) -> None:
    errors = [(name, "must be a timezone-aware datetime")
              for name, value in (("since", since), ("until", until))
              if value is not None and (not isinstance(value, datetime) or value.tzinfo is None)]
    if errors:
        raise ValidationError(errors)


def make_entry(
    now: datetime, *, entry_type: str, amount: Any, currency: str, tenant_id: str,
    project_id: str | None, task_id: str | None, asset_id: str | None, lease_id: str | None,
    description: str | None, occurred_at: datetime | None, entry_id: str | None = None,
) -> LedgerEntry:
    """A checked entry; `entry_id` (the caller's, a UUID) or a new one."""
    errors: list[tuple[str, str]] = []
    try:
        etype = EntryType(entry_type)
    except ValueError:
        errors.append(("entry_type", f"must be one of {[t.value for t in EntryType]}"))
        etype = EntryType.COST
    value = money(errors, "amount", amount, signed=etype is EntryType.ADJUSTMENT)
    if etype is not EntryType.ADJUSTMENT and value == 0 and not errors:
        errors.append(("amount", "must be > 0 (only an ADJUSTMENT may be signed)"))
    cur = currency_code(errors, "currency", currency)
    # Stored as creep writes ids: SQLite compares them as text (PostgreSQL as uuids).
    refs: dict[str, str | None] = {"entry_id": entry_id, "task_id": task_id,
                                   "asset_id": asset_id, "lease_id": lease_id}
    for name, ref in refs.items():
        if ref is not None:
            try:
                refs[name] = str(uuid.UUID(ref))
            except (ValueError, AttributeError, TypeError):
                errors.append((name, "must be a UUID"))
    if occurred_at is not None and not storable_instant(occurred_at):
        errors.append(("occurred_at", INSTANT_RULE))
    elif (rule := occurred_at_rule(occurred_at, now)) is not None:  # as a reported event's
        errors.append(("occurred_at", rule))
    for name, text, required in (("tenant_id", tenant_id, True),
                                 ("project_id", project_id, False),
                                 ("description", description, False)):
        if text is None and not required:
            continue
        if not isinstance(text, str) or (required and not text.strip()):
            errors.append((name, "must be a non-empty string" if required else "must be a string"))
        elif (rule := bad_text(text)) is not None:
            errors.append((name, rule))
    if errors:
        raise ValidationError(errors)
    return LedgerEntry(
        entry_id=refs["entry_id"] or uuid7(), tenant_id=tenant_id, project_id=project_id,
        task_id=refs["task_id"], asset_id=refs["asset_id"], lease_id=refs["lease_id"],
        entry_type=etype, amount=value, currency=cur, description=description,
        occurred_at=occurred_at or now, recorded_at=now,
    )
