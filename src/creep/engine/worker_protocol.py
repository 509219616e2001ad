"""The worker protocol behind the HTTP worker endpoints: claim (with a long-poll wait),
heartbeat, progress, complete, fail and task events, every call fenced by the claim token.

A call naming a token the task no longer holds (expired, rescued, finished, or another
claim) raises ClaimLost, which the API answers with 409. Tenant scoping is by tenant_id:
another tenant's task is NotFound.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson

from creep.asset_api import make_entry
from creep.domain.asset_event import AssetEvent, validate_reported_event
from creep.domain.clock import Clock
from creep.domain.errors import ClaimLost, NotFound, ValidationError
from creep.domain.events import TaskEvent, TaskEventType
from creep.domain.ids import is_uuid
from creep.domain.lease import Lease
from creep.domain.ledger import LedgerEntry
from creep.domain.outcomes import MAX_RETRY_DELAY, Backoff, Outcome, OutcomeKind, resolve
from creep.domain.task import TaskOrder
from creep.domain.text import DEPTH_RULE, find_unwritable, may_be_unwritable, too_deep
from creep.ports import ClaimedTask, Completion, HeartbeatResult, Store

#: Longest a claim may wait for work, and the claim TTLs a remote worker may ask for.
MAX_CLAIM_WAIT = 60.0
MIN_CLAIM_TTL, MAX_CLAIM_TTL = 1.0, 3600.0
MAX_CLAIM_BATCH = 1000
MAX_EVENT_PAYLOAD = 64 * 1024
_EVENT_TYPE = re.compile(r"^[a-z][a-z0-9_.:-]{0,63}$")
#: The event that closes a task's SSE stream (`event: end`, with no `id:` line). A task
#: event of that type would read as the close to a client that goes by the name alone.
STREAM_END = "end"
#: Event types creep writes itself, and the stream's close: a worker cannot post them.
RESERVED_EVENT_TYPES = frozenset(e.value for e in TaskEventType) | {
    "artifact_removed", STREAM_END}


class FailKind(StrEnum):
    """How a remote worker ends a task other than with success."""

    RETRY = "retry"  # a retryable error: back off and run again, until retries are spent
    FAILED = "failed"  # a business failure: FAILED with the given result code, no retry
    TIMED_OUT = "timed_out"  # the handler hit its timeout on the worker
    CANCELLED = "cancelled"  # stopped because cancellation was requested
    REQUEUE = "requeue"  # the worker is shutting down: back to the queue, attempt not charged


_OUTCOME = {
    FailKind.RETRY: OutcomeKind.RETRY, FailKind.FAILED: OutcomeKind.FAILED,
    FailKind.TIMED_OUT: OutcomeKind.TIMED_OUT, FailKind.CANCELLED: OutcomeKind.CANCELLED,
    FailKind.REQUEUE: OutcomeKind.REQUEUE,
}


@dataclass(slots=True, frozen=True)
class Beat:
    """A heartbeat's answer about one claim."""

    cancel_requested: bool
    revoked_lease_ids: list[str]


@dataclass(slots=True, frozen=True)
class ClaimBeat:
    """A batch heartbeat's answer about one claim. `held` is false for a claim the task no
    longer holds and for a task that is not the caller's tenant's, or none (never told apart,
    so a batch does not tell whether another tenant's task exists)."""

    task_id: str
    held: bool
    cancel_requested: bool
    revoked_lease_ids: list[str]


@dataclass(slots=True, frozen=True)
class ClaimRequest:
    worker_id: str
    task_types: list[str]
    limit: int
    wait: float
    claim_ttl: float
    #: The worker's id for this claim (a UUID, canonical form): the claim token of what it
    #: claims, so that the same request sent again after a lost answer answers those tasks.
    claim_id: str | None = None
    #: Sent again after a lost answer: look for what the claim_id's claim took first.
    resend: bool = False


def validate_claim(
    worker_id: Any, task_types: Any, limit: Any, wait: Any, claim_ttl: Any,
    claim_id: Any = None, resend: Any = False,
) -> ClaimRequest:
    errors: list[tuple[str, str]] = []
    if claim_id is not None:
        if is_uuid(claim_id):
            claim_id = str(uuid.UUID(claim_id))
        else:
            errors.append(("claim_id", "must be a UUID"))
    if not isinstance(worker_id, str) or not 1 <= len(worker_id) <= 200:
        errors.append(("worker_id", "must be a string of 1 to 200 characters"))
    if (
        not isinstance(task_types, list) or not 1 <= len(task_types) <= 100
        or not all(isinstance(t, str) and 1 <= len(t) <= 200 for t in task_types)
    ):
        errors.append(("task_types", "must be a list of 1 to 100 non-empty strings"))
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_CLAIM_BATCH:
        errors.append(("max_tasks", f"must be an integer from 1 to {MAX_CLAIM_BATCH}"))
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not (
        0 <= wait <= MAX_CLAIM_WAIT
    ):
        errors.append(("wait", f"must be a number of seconds from 0 to {MAX_CLAIM_WAIT:g}"))
    if isinstance(claim_ttl, bool) or not isinstance(claim_ttl, (int, float)) or not (
        MIN_CLAIM_TTL <= claim_ttl <= MAX_CLAIM_TTL
    ):
        errors.append(
            ("claim_ttl", f"must be a number of seconds from {MIN_CLAIM_TTL:g} to {MAX_CLAIM_TTL:g}")
        )
    if errors:
        raise ValidationError(errors)
    return ClaimRequest(worker_id, sorted(set(task_types)), limit, float(wait), float(claim_ttl),
                        claim_id, resend is True and claim_id is not None)


class WorkerProtocol:
    def __init__(
        self, store: Store, clock: Clock, backoff: Backoff | None = None,
        poll_interval: float = 0.25,
    ) -> None:
        self.store = store
        self.clock = clock
        self.backoff = backoff or Backoff()
        self.poll_interval = poll_interval
        self._wakers: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()
        self._wakers_lock = threading.Lock()
        subscribe = getattr(store, "subscribe", None)
        if subscribe is not None:  # in-process wake-ups: a task submitted here ends a wait
            subscribe(self._on_wake)

    def close(self) -> None:
        unsubscribe = getattr(self.store, "unsubscribe", None)
        if unsubscribe is not None:
            unsubscribe(self._on_wake)

    def _on_wake(self, channel: str, payload: str) -> None:
        if channel != "creep_tasks":
            return
        with self._wakers_lock:
            wakers = list(self._wakers)
        for loop, event in wakers:
            if not loop.is_closed():
                loop.call_soon_threadsafe(event.set)

    # -- claim ---------------------------------------------------------------------------------

    def claim_now(self, req: ClaimRequest, tenant_id: str | None) -> list[ClaimedTask] | None:
        """Claim up to req.limit runnable tasks. None: a send of this claim_id claimed before
        (this one may be a resend, or a first send still polling after its resend claimed),
        so nothing more is claimed: one claim_id claims one batch, on any node."""
        now = self.clock.now()
        if req.claim_id is not None:
            return self.store.task_claim_once(req.worker_id, req.task_types, req.limit, now,
                                              req.claim_ttl, req.claim_id, tenant_id)
        if tenant_id is None:
            return self.store.task_claim(req.worker_id, req.task_types, req.limit, now,
                                         req.claim_ttl)
        return self.store.task_claim_scoped(
            req.worker_id, req.task_types, req.limit, now, req.claim_ttl, tenant_id,
        )

    def claimed_before(self, req: ClaimRequest, tenant_id: str | None) -> list[ClaimedTask]:
        """What an earlier request with this claim_id (of this worker and tenant) claimed
        and still runs: its answer was lost (a timeout, a dropped connection, a proxy's 5xx
        after the commit), and the worker sent it again. A first send looks for nothing (the
        look-up reads the RUNNING tasks): it claims, and finds out only then (claim_now
        answers None) whether a send of its claim_id claimed already."""
        if req.claim_id is None or not req.resend:
            return []
        return self.claimed_under(req, tenant_id)

    def claimed_under(self, req: ClaimRequest, tenant_id: str | None) -> list[ClaimedTask]:
        """The tasks still running under req.claim_id (of this worker and tenant), their
        claim renewed for req.claim_ttl, as a new claim's would be: the worker heartbeats
        them only from now (the answer may come late in their claim TTL)."""
        if req.claim_id is None:
            return []
        claimed = self.store.task_claimed(req.worker_id, req.claim_id, tenant_id)
        if not claimed:
            return []
        beat = self.store.task_heartbeat(req.worker_id, [(c.task_id, c.claim_token)
                                                         for c in claimed],
                                         self.clock.now(), req.claim_ttl)
        lost = set(beat.lost)
        return [c for c in claimed if c.task_id not in lost]

    async def claim(
        self, req: ClaimRequest, tenant_id: str | None,
        gone: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[ClaimedTask]:
        """Claim up to req.limit tasks; when none is runnable, wait up to req.wait seconds for
        one (woken by in-process submits, else by polling). `gone` tells whether the client
        left: the wait then ends, and what was claimed for it is given back uncharged (else it
        would sit RUNNING until its claim expired, then retry WORKER_LOST). With a claim_id
        that claimed tasks before (the same request sent again, or its first send still
        waiting when a resend claimed), answers those instead, claiming nothing more."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + req.wait
        event = asyncio.Event()
        waker = (loop, event)
        with self._wakers_lock:
            self._wakers.add(waker)
        try:
            claimed: list[ClaimedTask] | None = await asyncio.to_thread(
                self.claimed_before, req, tenant_id)
            while True:
                event.clear()
                if not claimed:
                    if gone is not None and await gone():
                        return []
                    claimed = await asyncio.to_thread(self.claim_now, req, tenant_id)
                    if claimed is None:
                        # Another send of this claim claimed: its tasks are the answer (not
                        # given back if this send's client left: another send's may read
                        # them).
                        return await asyncio.to_thread(self.claimed_under, req, tenant_id)
                if claimed and gone is not None and await gone():
                    await asyncio.to_thread(self._give_back, req, tenant_id, claimed)
                    return []
                remaining = deadline - loop.time()
                if claimed or remaining <= 0:
                    return claimed
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), min(self.poll_interval, remaining))
        finally:
            with self._wakers_lock:
                self._wakers.discard(waker)

    def _give_back(
        self, req: ClaimRequest, tenant_id: str | None, claimed: Sequence[ClaimedTask]
    ) -> None:
        if req.claim_id is not None:
            # Forgotten first: given back, the claim claimed nothing, so its resend (its
            # client left for a reason) may claim. A resend claiming in between takes other
            # tasks, under the same token: the give-back below names these tasks only.
            self.store.task_claim_forget(req.worker_id, req.claim_id, tenant_id)
        now = self.clock.now()
        completions = []
        for c in claimed:
            outcome = Outcome(c.task_id, c.claim_token, OutcomeKind.REQUEUE,
                              message="the claiming client went away")
            completions.append(Completion(outcome, resolve(
                outcome, attempt=c.attempt, max_attempts=c.max_attempts, now=now,
                backoff=self.backoff)))
        self.store.task_complete_many(completions, now)

    # -- calls on a claimed task ---------------------------------------------------------------

    def _held(self, task_id: str, claim_token: str, tenant_id: str | None) -> TaskOrder:
        task = self.store.task_get(task_id, tenant_id)  # NotFound across tenants
        if not is_uuid(claim_token):
            raise ClaimLost(f"task {task_id}: claim token {claim_token!r} is not held")
        return task

    def heartbeat(
        self, task_id: str, claim_token: str, tenant_id: str | None, *, worker_id: str,
        claim_ttl: float,
    ) -> Beat:
        """Renew the claim; whether cancellation was requested, and which of the claim's
        leases were revoked (the worker then stops the handler, as a database worker does)."""
        self._held(task_id, claim_token, tenant_id)
        _check_claim_ttl(claim_ttl)
        result = self.store.task_heartbeat(
            worker_id, [(task_id, claim_token)], self.clock.now(), claim_ttl
        )
        if result.lost:
            raise ClaimLost(f"task {task_id}: the claim is no longer held")
        return Beat(task_id in result.cancel_requested, result.revoked.get(task_id, []))

    def heartbeat_many(
        self, claims: Sequence[tuple[str, str]], tenant_id: str | None, *, worker_id: str,
        claim_ttl: float,
    ) -> list[ClaimBeat]:
        """The heartbeat of many claims (task_id, claim_token) in one store call: an answer
        per claim, in their order."""
        _check_claim_ttl(claim_ttl)
        _check_unique([task_id for task_id, _ in claims], "claims")
        sent = self._fenceable(claims, tenant_id)
        result = (self.store.task_heartbeat(worker_id, sent, self.clock.now(), claim_ttl)
                  if sent else HeartbeatResult())
        held = {task_id for task_id, _ in sent}.difference(result.lost)
        cancel = set(result.cancel_requested)
        return [
            ClaimBeat(task_id, task_id in held, task_id in held and task_id in cancel,
                      result.revoked.get(task_id, []) if task_id in held else [])
            for task_id, _ in claims
        ]

    def _fenceable(
        self, claims: Sequence[tuple[str, str]], tenant_id: str | None
    ) -> list[tuple[str, str]]:
        """The claims a fenced store call may name: ids that can be stored ones, of tasks
        of this tenant (one read; an admin's claims are not read)."""
        ok = [(task_id, token) for task_id, token in claims
              if is_uuid(task_id) and is_uuid(token)]
        if tenant_id is None or not ok:
            return ok
        owned = self.store.task_get_many([task_id for task_id, _ in ok], tenant_id)
        return [c for c in ok if c[0] in owned]

    def progress(
        self, task_id: str, claim_token: str, tenant_id: str | None, percent: Any,
        message: Any = None,
    ) -> None:
        if isinstance(percent, bool) or not isinstance(percent, int) or not 0 <= percent <= 100:
            raise ValidationError.single("progress", "must be an integer from 0 to 100")
        if message is not None and (not isinstance(message, str) or len(message) > 2000):
            raise ValidationError.single("message", "must be a string of at most 2000 characters")
        self._held(task_id, claim_token, tenant_id)
        if not self.store.task_progress(task_id, claim_token, percent, message, self.clock.now()):
            raise ClaimLost(f"task {task_id}: the claim is no longer held")

    def complete(
        self, task_id: str, claim_token: str, tenant_id: str | None, result: Any = None,
        message: str | None = None,
    ) -> TaskOrder:
        completion = self.prepare_complete(task_id, claim_token, tenant_id, result, message)
        self.apply(completion, self.clock.now())
        return self.store.task_get(task_id)

    def fail(
        self, task_id: str, claim_token: str, tenant_id: str | None, **options: Any
    ) -> TaskOrder:
        completion = self.prepare_fail(task_id, claim_token, tenant_id, **options)
        self.apply(completion, self.clock.now())
        return self.store.task_get(task_id)

    def prepare_complete(
        self, task_id: str, claim_token: str, tenant_id: str | None, result: Any = None,
        message: str | None = None,
    ) -> Completion:
        """Reads only: the completion `apply` writes (split so a caller can wrap the one
        write transaction, e.g. with its audit row)."""
        return self._completion(complete_outcome(task_id, claim_token, result, message),
                                tenant_id)

    def prepare_fail(
        self, task_id: str, claim_token: str, tenant_id: str | None, **options: Any
    ) -> Completion:
        return self._completion(fail_outcome(task_id, claim_token, **options), tenant_id)

    def _completion(self, outcome: Outcome, tenant_id: str | None) -> Completion:
        task = self._held(outcome.task_id, outcome.claim_token, tenant_id)
        resolution = resolve(outcome, attempt=task.attempt, max_attempts=task.max_attempts,
                             now=self.clock.now(), backoff=self.backoff)
        return Completion(outcome, resolution)

    def prepare_many(
        self, outcomes: Sequence[Outcome], tenant_id: str | None
    ) -> list[Completion]:
        """Reads only (one read of the tasks): the completions of the outcomes whose task is
        this tenant's and whose token may hold it; the others cannot apply. A task may appear
        once (the store applies one outcome per task and transaction)."""
        _check_unique([o.task_id for o in outcomes], "items")
        fenceable = self._fenceable([(o.task_id, o.claim_token) for o in outcomes], tenant_id)
        tasks = self.store.task_get_many([task_id for task_id, _ in fenceable])
        now = self.clock.now()
        return [
            Completion(o, resolve(o, attempt=task.attempt, max_attempts=task.max_attempts,
                                  now=now, backoff=self.backoff))
            for o in outcomes if (task := tasks.get(o.task_id)) is not None
        ]

    def apply_many(self, completions: Sequence[Completion], now: datetime) -> set[str]:
        """One fenced write transaction: the ids of the tasks whose claim still held."""
        return set(self.store.task_complete_many(completions, now)) if completions else set()

    def apply(self, completion: Completion, now: datetime) -> None:
        """One fenced write; ClaimLost when the token no longer holds the task."""
        task_id = completion.outcome.task_id
        if task_id not in self.store.task_complete_many([completion], now):
            raise ClaimLost(f"task {task_id}: the claim is no longer held")

    def add_event(
        self, task_id: str, claim_token: str, tenant_id: str | None, event_type: Any,
        payload: Any = None,
    ) -> TaskEvent:
        errors: list[tuple[str, str]] = []
        if not isinstance(event_type, str) or not _EVENT_TYPE.fullmatch(event_type):
            errors.append(("event_type", "must match ^[a-z][a-z0-9_.:-]{0,63}$"))
        elif event_type == STREAM_END:
            errors.append(("event_type", "is reserved: `end` closes the task's event stream; "
                                         "pick another name"))
        elif event_type in RESERVED_EVENT_TYPES:
            errors.append(("event_type", "is written by creep itself; pick another name"))
        body = {} if payload is None else payload
        if not isinstance(body, dict):
            errors.append(("payload", "must be a JSON object"))
        elif too_deep(body):  # orjson.dumps below would raise (a 500) past 254 levels
            errors.append(("payload", DEPTH_RULE))
        elif len(orjson.dumps(body)) > MAX_EVENT_PAYLOAD:
            errors.append(("payload", f"must be at most {MAX_EVENT_PAYLOAD} bytes of JSON"))
        if errors:
            raise ValidationError(errors)
        self._held(task_id, claim_token, tenant_id)
        event = self.store.task_event_append(task_id, claim_token, event_type, body,
                                             self.clock.now())
        if event is None:
            raise ClaimLost(f"task {task_id}: the claim is no longer held")
        return event


    # -- a handler's lease context, for a remote worker (ctx.charge/earn/report_event/leases) --

    def record_money(
        self, task_id: str, claim_token: str, tenant_id: str | None, *, entry_type: str,
        amount: Any, currency: str | None = None, asset_id: str | None = None,
        lease_id: str | None = None, description: str | None = None,
        entry_id: str | None = None,
    ) -> tuple[LedgerEntry, bool]:
        """ctx.charge / ctx.earn: a COST or REVENUE of the running task (BudgetExceeded over
        its max_total_cost), and whether it was a resend. `entry_id` (the worker's) makes a
        resend write nothing more: it answers the entry written then, True."""
        if entry_type not in ("COST", "REVENUE"):
            raise ValidationError.single("entry_type", "must be COST or REVENUE")
        # The ledger's transaction checks the claim (after a resend's own entry: see there).
        task = self._held(task_id, claim_token, tenant_id)
        entry = make_entry(
            self.clock.now(), entry_type=entry_type, amount=amount,
            currency=currency or task.currency, tenant_id=task.tenant_id,
            project_id=task.project_id, task_id=task_id, asset_id=asset_id, lease_id=lease_id,
            description=description, occurred_at=None, entry_id=entry_id,
        )
        try:
            return self.store.ledger_append(entry, claim_token=claim_token)
        except NotFound as exc:  # another tenant's asset or lease reads like a missing one
            raise ValidationError.single(f"{exc.kind}_id", f"unknown {exc.kind}") from None

    def report_asset_event(
        self, task_id: str, claim_token: str, tenant_id: str | None, fields: dict[str, Any],
    ) -> tuple[list[AssetEvent], bool]:
        """ctx.report_event: the event, then what it caused (an auto-ban's LEASE_REVOKED
        events name the leases of this claim it revoked), and whether it was a resend. Sent
        again with its event_id (after a lost answer), the first report's answer, True,
        nothing more written."""
        checked = validate_reported_event(fields)
        # The report's transaction checks the claim (after a resend's own event: see there).
        task = self._held(task_id, claim_token, tenant_id)
        try:
            return self.store.asset_event_report_or_replay(
                checked, self.clock.now(), tenant_id=task.tenant_id, task_id=task_id,
                claim_token=claim_token,
            )
        except NotFound as exc:
            # A 404 on this route says the task is gone (a worker drops its claim): another
            # tenant's asset, or none, is a bad field, as on the ledger route.
            if exc.kind == "task":
                raise
            raise ValidationError.single(f"{exc.kind}_id", f"unknown {exc.kind}") from None

    def claim_leases(self, task_id: str, claim_token: str, tenant_id: str | None) -> list[Lease]:
        """ctx.leases(): the leases this claim holds or held (a revoked one too)."""
        task = self._held(task_id, claim_token, tenant_id)
        leases = self.store.lease_list(task_id=task_id, tenant_id=task.tenant_id)
        return [x for x in leases if x.claim_token == claim_token]


def _check_claim_ttl(claim_ttl: float) -> None:
    if not MIN_CLAIM_TTL <= claim_ttl <= MAX_CLAIM_TTL:
        raise ValidationError.single(
            "claim_ttl", f"must be a number of seconds from {MIN_CLAIM_TTL:g} to {MAX_CLAIM_TTL:g}"
        )


def _check_unique(task_ids: Sequence[str], name: str) -> None:
    seen: set[str] = set()
    errors = []
    for i, task_id in enumerate(task_ids):
        if task_id in seen:
            errors.append((f"{name}[{i}].task_id", "names a task named before in this request"))
        seen.add(task_id)
    if errors:
        raise ValidationError(errors)


def complete_outcome(
    task_id: str, claim_token: str, result: Any = None, message: str | None = None
) -> Outcome:
    """A success, checked (`result` must be JSON)."""
    try:
        result_json = orjson.dumps(result)
    except TypeError:
        raise ValidationError.single("result", "must be JSON") from None
    # From a request body: its model refused NaN and Infinity already (find_bad_text).
    if may_be_unwritable(result_json, result, finite=True) and (
            bad := find_unwritable(result, "result")) is not None:
        raise ValidationError.single(*bad)
    return Outcome(task_id, claim_token, OutcomeKind.SUCCEEDED, result=result, message=message,
                   result_json=result_json)


def fail_outcome(
    task_id: str, claim_token: str, *, kind: Any = "retry", code: Any = None,
    message: Any = None, error: Any = None, retry_delay: Any = None,
) -> Outcome:
    """A failure of `kind` (FailKind), checked."""
    errors: list[tuple[str, str]] = []
    kinds = [k.value for k in FailKind]
    if kind not in kinds:
        errors.append(("kind", f"must be one of {kinds}"))
    for name, value, limit in (("code", code, 64), ("message", message, 2000),
                               ("error", error, 8000)):
        if value is not None and (not isinstance(value, str) or len(value) > limit):
            errors.append((name, f"must be a string of at most {limit} characters"))
    if retry_delay is not None and (
        isinstance(retry_delay, bool) or not isinstance(retry_delay, (int, float))
        or not 0 <= retry_delay <= MAX_RETRY_DELAY
    ):
        errors.append(("retry_delay", f"must be a number of seconds from 0 to "
                                      f"{MAX_RETRY_DELAY:.0f}"))
    if errors:
        raise ValidationError(errors)
    return Outcome(
        task_id, claim_token, _OUTCOME[FailKind(kind)], code=code, message=message,
        error=error, retry_delay=None if retry_delay is None else float(retry_delay),
    )


def claimed_payload(claimed: Sequence[ClaimedTask]) -> list[dict[str, Any]]:
    return [
        {"task": c.task.to_dict(), "claim_token": c.claim_token,
         "deadline_at": c.deadline_at.isoformat()}
        for c in claimed
    ]


