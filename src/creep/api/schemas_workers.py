"""Request/response models of the artifact and HTTP worker routes (OpenAPI contract)."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictFloat, StrictInt

from creep.api.asset_schemas import AssetEventIn
from creep.api.schemas import TaskOut, _In
from creep.domain.artifacts import Artifact
from creep.domain.outcomes import MAX_RETRY_DELAY
from creep.engine.worker_protocol import (
    MAX_CLAIM_BATCH,
    MAX_CLAIM_TTL,
    MAX_CLAIM_WAIT,
    MIN_CLAIM_TTL,
)

# -- artifacts ---------------------------------------------------------------------------------

ArtifactKindName = Literal["input", "output", "preview", "log"]


class ArtifactOut(BaseModel):
    artifact_id: str
    task_id: str
    tenant_id: str
    kind: ArtifactKindName
    file_name: str
    mime_type: str
    size_bytes: int
    width: int | None
    height: int | None
    checksum: str = Field(description="sha256 of the content, hex")
    object_key: str = Field(description="where the content lives under the artifact directory")
    metadata: dict[str, Any]
    created_at: datetime
    url: str = Field(description="download path of the content")


class ArtifactPage(BaseModel):
    items: list[ArtifactOut]


def artifact_json(a: Artifact) -> dict[str, Any]:
    return {
        "artifact_id": a.artifact_id, "task_id": a.task_id, "tenant_id": a.tenant_id,
        "kind": a.kind.value, "file_name": a.file_name, "mime_type": a.mime_type,
        "size_bytes": a.size_bytes, "width": a.width, "height": a.height,
        "checksum": a.checksum, "object_key": a.object_key, "metadata": a.metadata,
        "created_at": a.created_at.isoformat(),
        "url": f"/v1/artifacts/{a.artifact_id}/content",
    }


# -- the HTTP worker protocol ------------------------------------------------------------------

TaskTypeName = Field(min_length=1, max_length=200)
Token = Field(min_length=1, max_length=64, description="the claim_token the claim returned")


class ClaimIn(_In):
    task_types: list[str] = Field(min_length=1, max_length=100,
                                  description="the task types this worker can run")
    max_tasks: StrictInt = Field(default=1, ge=1, le=MAX_CLAIM_BATCH)
    wait: StrictFloat = Field(default=0, ge=0, le=MAX_CLAIM_WAIT,
                        description="seconds to wait for work when none is runnable (long poll)")
    claim_ttl: StrictFloat = Field(default=30, ge=MIN_CLAIM_TTL, le=MAX_CLAIM_TTL,
                             description="seconds the claim lives unless renewed by heartbeat")
    worker_id: str | None = Field(default=None, min_length=1, max_length=200)
    claim_id: str | None = Field(
        default=None, max_length=64,
        description="a UUID the worker picks per claim, used as the claim_token of what it "
                    "claims: sent again after a lost answer (a timeout, a dropped connection, "
                    "a 5xx) with `resend`, the request answers the tasks it claimed that "
                    "still run under it, and claims nothing more; a claim_id claims once, "
                    "even when a resend meets its first send still on the server")
    resend: StrictBool = Field(
        default=False,
        description="true when this request is sent again, its claim_id unchanged, after its "
                    "answer was lost: the server then looks for what that claim took (a "
                    "first send pays no such look-up)")


class ClaimedOut(BaseModel):
    task: TaskOut
    claim_token: str
    deadline_at: datetime


class ClaimOut(BaseModel):
    items: list[ClaimedOut]


class HeartbeatIn(_In):
    claim_token: str = Token
    claim_ttl: StrictFloat = Field(default=30, ge=MIN_CLAIM_TTL, le=MAX_CLAIM_TTL)
    worker_id: str | None = Field(default=None, min_length=1, max_length=200)


class HeartbeatOut(BaseModel):
    cancel_requested: bool = Field(description="stop the task and report it with /fail "
                                               "kind=cancelled")
    revoked_lease_ids: list[str] = Field(
        description="leases of this claim revoked (asset banned, sold or archived): stop the "
        "task and report it with /fail kind=retry code=LEASE_REVOKED")


TaskId = Field(min_length=1, max_length=64)
FailKindName = Literal["retry", "failed", "timed_out", "cancelled", "requeue"]


class ClaimRefIn(_In):
    task_id: str = TaskId
    claim_token: str = Token


class HeartbeatManyIn(_In):
    claims: list[ClaimRefIn] = Field(min_length=1, max_length=MAX_CLAIM_BATCH,
                                     description="the claims to renew, each task once")
    claim_ttl: StrictFloat = Field(default=30, ge=MIN_CLAIM_TTL, le=MAX_CLAIM_TTL)
    worker_id: str | None = Field(default=None, min_length=1, max_length=200)


class ClaimBeatOut(HeartbeatOut):
    task_id: str
    held: bool = Field(description="false: the claim is lost (or the task is not this "
                                   "tenant's); drop the task")


class HeartbeatManyOut(BaseModel):
    items: list[ClaimBeatOut] = Field(description="one per claim, in their order")


class ProgressIn(_In):
    claim_token: str = Token
    progress: StrictInt = Field(ge=0, le=100)
    message: str | None = Field(default=None, max_length=2000)


class ProgressOut(BaseModel):
    task_id: str
    progress: int


class CompleteIn(_In):
    claim_token: str = Token
    result: Any = Field(default=None, description="the task's result_payload (JSON)")
    message: str | None = Field(default=None, max_length=2000)


class FailIn(_In):
    claim_token: str = Token
    kind: FailKindName = Field(
        default="retry",
        description="retry: back off and run again until retries are spent; failed: business "
        "failure, no retry; timed_out; cancelled; requeue: give back without charging an attempt",
    )
    code: str | None = Field(default=None, max_length=64, description="result_code for failed")
    message: str | None = Field(default=None, max_length=2000)
    error: str | None = Field(default=None, max_length=8000, description="e.g. a traceback")
    retry_delay: StrictFloat | None = Field(
        default=None, ge=0, le=MAX_RETRY_DELAY, allow_inf_nan=False,
        description="seconds; a run_after past 9999-12-31T23:59:59Z is that instant")


#: The fields of an OutcomeIn that only a `fail` outcome takes.
FAIL_ONLY = ("kind", "code", "error", "retry_delay")


class OutcomeIn(_In):
    """One outcome of a batch: the body of /complete (`outcome` complete) or of /fail
    (`outcome` fail) with its `task_id`."""

    task_id: str = TaskId
    outcome: Literal["complete", "fail"]
    claim_token: str = Token
    result: Any = Field(default=None, description="complete: the task's result_payload")
    message: str | None = Field(default=None, max_length=2000)
    kind: FailKindName = Field(default="retry", description="fail: as /fail's `kind`")
    code: str | None = Field(default=None, max_length=64)
    error: str | None = Field(default=None, max_length=8000)
    retry_delay: StrictFloat | None = Field(default=None, ge=0, le=MAX_RETRY_DELAY,
                                            allow_inf_nan=False)


class CompleteManyIn(_In):
    items: list[OutcomeIn] = Field(min_length=1, max_length=MAX_CLAIM_BATCH,
                                   description="each task once")


class AppliedOut(BaseModel):
    task_id: str
    applied: bool = Field(description="false: the claim token is stale (the task is no "
                                      "longer this claim's, or not this tenant's); nothing "
                                      "written for it")


class CompleteManyOut(BaseModel):
    items: list[AppliedOut] = Field(description="one per item, in their order")


class WorkerEventIn(_In):
    claim_token: str = Token
    event_type: str = Field(
        pattern=r"^[a-z][a-z0-9_.:-]{0,63}$",
        description="not a type creep writes itself, nor `end` (the event stream's close)")
    payload: dict[str, Any] = Field(default_factory=dict)


# -- a handler's lease context on a remote worker ---------------------------------------------


class WorkerLedgerIn(_In):
    claim_token: str = Token
    entry_type: Literal["COST", "REVENUE"] = Field(description="ctx.charge / ctx.earn")
    amount: Decimal = Field(allow_inf_nan=False, description="> 0")
    currency: str | None = Field(default=None, pattern=r"^[A-Z]{3,4}$",
                                 description="the task's currency (the default)")
    asset_id: str | None = Field(default=None, max_length=64)
    lease_id: str | None = Field(default=None, max_length=64)
    description: str | None = Field(default=None, max_length=2000)
    entry_id: str | None = Field(
        default=None, max_length=64,
        description="a UUID the worker picks: the same request sent again (after a lost "
        "answer) answers the entry written the first time and writes nothing")


class WorkerAssetEventIn(AssetEventIn):
    """An asset event the task's handler reports (ctx.report_event): `asset_id` may be left
    out when the claim holds one lease; tenant and correlation are the task's."""

    claim_token: str = Token
    asset_id: str | None = Field(default=None, max_length=64)  # type: ignore[assignment]

    def fields(self) -> dict[str, Any]:
        return self.model_dump(exclude_unset=True, exclude={"tenant_id", "claim_token"})


class ClaimTokenIn(_In):
    claim_token: str = Token
