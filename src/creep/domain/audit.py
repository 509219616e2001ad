"""AuditEvent (seed 003): who changed what, with the object before and after."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

#: Seed 003: old_object and new_object are each at most 64 KB.
MAX_OBJECT_BYTES = 64 * 1024
_MARKER = "...[truncated]"


class AuditAction(StrEnum):
    """Seed 003's camelCase actions, plus what creep's resources need."""

    CREATED = "created"
    UPDATED = "updated"
    DELETED = "deleted"
    READ = "read"
    ENABLED = "enabled"
    DISABLED = "disabled"
    BYPASSED = "bypassed"
    FORCE_PUSH = "forcePush"
    LOGIN = "login"
    LOGOUT = "logout"
    GRANTED = "granted"
    REVOKED = "revoked"
    # creep
    CANCELLED = "cancelled"
    RETRIED = "retried"
    RESTORED = "restored"
    TRIGGERED = "triggered"
    BANNED = "banned"
    UNBANNED = "unbanned"
    ARCHIVED = "archived"
    RELEASED = "released"
    REPORTED = "reported"
    UPLOADED = "uploaded"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    FAILED = "failed"
    LOG_LEVEL_CHANGED = "logLevelChanged"


class ResourceType(StrEnum):
    """Seed 003's resource types that apply to creep, plus creep's own (camelCase)."""

    USER = "user"
    ROLE = "role"
    INSTANCE = "instance"
    SCHEDULED_TASK = "scheduledTask"
    TENANT = "tenant"
    API_KEY = "apiKey"
    TASK = "task"
    BATCH = "batch"
    ARTIFACT = "artifact"
    ASSET = "asset"
    LEASE = "lease"
    ASSET_EVENT = "assetEvent"
    LEDGER_ENTRY = "ledgerEntry"
    BAN_POLICY = "banPolicy"
    WORKER = "worker"


@dataclass(slots=True)
class DiffObject:
    old_object: str | None = None
    new_object: str | None = None
    old_object_truncated: bool = False
    new_object_truncated: bool = False
    truncated_fields: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "old_object": self.old_object,
            "new_object": self.new_object,
            "old_object_truncated": self.old_object_truncated,
            "new_object_truncated": self.new_object_truncated,
            "truncated_fields": self.truncated_fields,
        }


@dataclass(slots=True)
class AuditEvent:
    id: str
    seq: int
    timestamp: int  # Unix milliseconds, as in the seed
    action: str
    resource_type: str
    resource: dict[str, Any]  # {type, identifier, data}
    user: dict[str, Any]  # Principal {uid, username, type}
    tenant_id: str | None
    diff_object: dict[str, Any]
    client_ip: str | None
    user_agent: str | None
    request_method: str | None
    request_id: str | None
    data: dict[str, str]
    created_at: datetime


def _dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str, option=orjson.OPT_SORT_KEYS)


def truncate_object(obj: Any, limit: int = MAX_OBJECT_BYTES) -> tuple[str | None, list[str]]:
    """JSON of `obj` in at most `limit` bytes, shortening the largest fields first.

    Field-wise: the biggest top-level values are cut (strings keep a prefix, anything else
    becomes a marker with its size) until the whole fits. Returns (json, truncated field names).
    """
    if obj is None:
        return None, []
    raw = _dumps(obj)
    if len(raw) <= limit:
        return raw.decode(), []
    if not isinstance(obj, dict):
        return orjson.dumps({"_truncated": f"{len(raw)} bytes"}).decode(), ["*"]
    out = dict(obj)
    sizes = sorted(((len(_dumps(v)), k) for k, v in out.items()), reverse=True)
    truncated: list[str] = []
    total = len(raw)
    for size, key in sizes:
        if total <= limit:
            break
        value = out[key]
        excess = total - limit
        if isinstance(value, str) and size - excess - len(_MARKER) - 16 > 0:
            keep = max(0, len(value.encode()) - excess - len(_MARKER) - 16)
            short = value.encode()[:keep].decode("utf-8", "ignore") + _MARKER
        else:
            short = f"[truncated: {size} bytes]"
        out[key] = short
        truncated.append(str(key))
        total += len(_dumps(short)) - size  # the key and separators stay as they were
    if total <= limit:
        total = len(_dumps(out))  # exact, once
    if total > limit:  # thousands of small fields: keep only their names
        out = {"_truncated": f"{len(raw)} bytes", "_fields": sorted(map(str, obj))[:100]}
        truncated = ["*"]
    return _dumps(out).decode(), truncated


def build_diff(old: Any, new: Any, limit: int = MAX_OBJECT_BYTES) -> DiffObject:
    old_json, old_cut = truncate_object(old, limit)
    new_json, new_cut = truncate_object(new, limit)
    return DiffObject(
        old_object=old_json,
        new_object=new_json,
        old_object_truncated=bool(old_cut),
        new_object_truncated=bool(new_cut),
        truncated_fields=[f"old_object.{f}" for f in old_cut] + [f"new_object.{f}" for f in new_cut],
    )
