"""The pieces of the Store a Worker uses, over the HTTP worker protocol.

`creep worker --api-url URL --api-key KEY` runs the ordinary Worker on this adapter: claims
long-poll `POST /v1/workers/claim` (each with a claim_id, sent again when its answer is
lost); a heartbeat round is one `POST /v1/workers/heartbeat`
and a batch of results one `POST /v1/workers/complete` (a server without them, 404/405: the
per-task routes); progress goes to the per-task route. Every call is fenced by the claim
token (a 409, or `held`/`applied` false, means the claim was lost). Outcomes are sent as
what happened (`complete`, or `fail` with a kind); the server decides retries and backoff.
Maintenance (rescuing expired claims) is the server side's job, so leadership is never taken.
A handler's ctx.charge / ctx.earn / ctx.report_event / ctx.leases() go to the claim-fenced
per-task routes (ledger, asset-events, leases).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import orjson

from creep.domain.asset_event import AssetEvent, Severity
from creep.domain.errors import (
    ClaimLost,
    ConflictError,
    CreepError,
    IdTaken,
    NotWritten,
    SafeToResend,
    StorageError,
    ValidationError,
)
from creep.domain.lease import Lease, LeaseStatus
from creep.domain.ledger import BudgetExceeded, EntryType, LedgerEntry
from creep.domain.outcomes import MAX_RETRY_DELAY, Outcome, OutcomeKind
from creep.domain.task import TaskOrder, TaskStatus
from creep.ports import ClaimedTask, Completion, HeartbeatResult, Listener

log = logging.getLogger("creep.worker")
_FAIL_KIND = {
    OutcomeKind.RETRY: "retry", OutcomeKind.FAILED: "failed",
    OutcomeKind.TIMED_OUT: "timed_out", OutcomeKind.CANCELLED: "cancelled",
    OutcomeKind.REQUEUE: "requeue",
}
_TS_FIELDS = ("created_at", "queued_at", "started_at", "finished_at", "updated_at", "run_after",
              "claim_expires_at", "deleted_at")
#: Answers that mean "this claim is not yours (any more)".
_LOST = (404, 409)
#: Client errors worth sending again: the server is busy, not refusing the request.
_TRANSIENT = (408, 429)
#: Answers of a server that has no batch routes (older than them).
_NO_ROUTE = (404, 405)
#: Most claims or outcomes in one batch request (the server's bound).
MAX_BATCH = 1000
CLAIM_PATH = "/v1/workers/claim"
HEARTBEAT_PATH, COMPLETE_PATH = "/v1/workers/heartbeat", "/v1/workers/complete"


class HttpWorkerStore:
    dialect = "http"

    def __init__(
        self, api_url: str, api_key: str, *, claim_wait: float = 5.0, timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = api_url.rstrip("/")
        self.claim_wait = claim_wait
        self._claim_failures = 0
        #: The claim request sent without an answer (a timeout, a dropped connection, a 5xx:
        #: the server may have committed it), sent again as it is before any other claim.
        self._unanswered: dict[str, Any] | None = None
        #: False once the server answered that it has no batch routes.
        self.batch_routes = True
        #: False once the server refused a ledger entry's entry_id (older than it).
        self.ledger_entry_ids = True
        #: False once the server refused a claim's claim_id (older than it).
        self.claim_ids = True
        # task_id -> claim token of the claims this worker runs: ctx.charge and ctx.leases()
        # name only the task, and the API fences their calls by the token.
        self._tokens: dict[str, str] = {}
        self._http = httpx.Client(
            base_url=self.url, timeout=httpx.Timeout(timeout + claim_wait),
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "creep-worker"},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    # -- HTTP ----------------------------------------------------------------------------------

    def _send(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """The answer, unless it is one to try again later (unreachable, 5xx, 408, 429):
        StorageError, NotWritten when the request surely wrote nothing (safe to resend even
        when it is not idempotent, as a worker's task event is not)."""
        try:
            r = self._http.post(path, content=orjson.dumps(body, default=_json_default),
                                headers={"Content-Type": "application/json"})
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
            raise NotWritten(f"creep API at {self.url} unreachable: {exc}") from exc
        except httpx.HTTPError as exc:
            raise StorageError(f"creep API at {self.url} unreachable: {exc}") from exc
        if r.status_code < 500 and r.status_code not in _TRANSIENT:
            return r
        message = f"POST {path}: HTTP {r.status_code}: {r.text[:500]}"
        if r.status_code in _TRANSIENT:  # refused before the route ran (rate limit, timeout)
            raise NotWritten(message, _retry_after(r))
        raise StorageError(message)

    def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        r = self._send(path, body)
        if r.status_code in _LOST or r.is_success:
            return r
        raise ValidationError.single(path, f"HTTP {r.status_code}: {r.text[:500]}")

    # -- what the Worker calls -----------------------------------------------------------------

    def task_claim(
        self, worker_id: str, task_types: Sequence[str], limit: int, now: datetime,
        claim_ttl: float,
    ) -> list[ClaimedTask]:
        """Long-poll for work. An unreachable or failing server raises StorageError after a
        backoff pause (the worker tries again; a burst run does not take it for an empty
        queue); a refusal (bad key, invalid request) raises ConflictError.

        Each claim carries a claim_id of its own. A claim left unanswered is sent again,
        the same claim_id and all, before any new one: if the server had committed it, the
        answer is what it claimed then (else those tasks would sit RUNNING until their claim
        expired, and then be charged an attempt they never ran)."""
        # A worker claims up to half its concurrency at once; the route takes MAX_BATCH.
        # The claim resent asks for no more than this one: the worker's room only grows
        # until it has claimed.
        body = {**self._unanswered, "resend": True} if self._unanswered else {
            "worker_id": worker_id, "task_types": list(task_types),
            "max_tasks": min(limit, MAX_BATCH), "wait": self.claim_wait,
            "claim_ttl": claim_ttl, "claim_id": str(uuid.uuid4()),
        }
        self._unanswered = body
        try:
            r = self._send_claim(body)
        except StorageError as exc:
            delay = min(5.0, 0.25 * 2 ** self._claim_failures)
            if isinstance(exc, NotWritten) and exc.retry_after is not None:
                delay = max(delay, min(exc.retry_after, 30.0))
            self._claim_failures += 1
            log.warning("claim failed (retrying in %.2fs): %s", delay, exc)
            time.sleep(delay)  # on the worker's store thread, not its event loop
            raise
        except ValidationError:
            self._unanswered = None  # refused: nothing was claimed
            raise
        self._unanswered = None
        self._claim_failures = 0
        if not r.is_success:
            raise ConflictError(f"claim refused: HTTP {r.status_code}: {r.text[:500]}")
        claimed = [
            ClaimedTask(task_from_json(item["task"]), item["claim_token"],
                        datetime.fromisoformat(item["deadline_at"]))
            for item in r.json()["items"]
        ]
        self._tokens.update((c.task_id, c.claim_token) for c in claimed)
        return claimed

    def _send_claim(self, body: dict[str, Any]) -> httpx.Response:
        if not self.claim_ids:
            body = {k: v for k, v in body.items() if k not in ("claim_id", "resend")}
        r = self._send(CLAIM_PATH, body)
        if (r.status_code == 422 and "claim_id" in body
                and {"claim_id"} <= set(_fields(r)) <= {"claim_id", "resend"}):
            log.info("the creep API takes no claim_id: a claim whose answer is lost is not "
                     "answered again (its tasks run once their claim expires)")
            self.claim_ids = False
            return self._send_claim(body)
        if r.status_code in _LOST or r.is_success:
            return r
        raise ValidationError.single(CLAIM_PATH, f"HTTP {r.status_code}: {r.text[:500]}")

    def task_heartbeat(
        self, worker_id: str, claims: Sequence[tuple[str, str]], now: datetime, claim_ttl: float
    ) -> HeartbeatResult:
        """A round of at most MAX_BATCH claims per request. A request failing after others
        were answered ends the round with what they answered (a cancel, a lost claim to act
        on); the claims it did not renew are sent again next round."""
        result = HeartbeatResult()
        for start in range(0, len(claims), MAX_BATCH):
            chunk = claims[start:start + MAX_BATCH]
            try:
                if not (self.batch_routes and self._heartbeat_batch(worker_id, chunk,
                                                                    claim_ttl, result)):
                    self._heartbeat_each(worker_id, chunk, claim_ttl, result)
            except CreepError as exc:
                if not (start or result.lost or result.cancel_requested or result.revoked):
                    raise
                log.warning("heartbeat of %d of %d claims failed, acting on the answers "
                            "received: %s", len(claims) - start, len(claims), exc)
                break
        return result

    def _heartbeat_batch(
        self, worker_id: str, claims: Sequence[tuple[str, str]], claim_ttl: float,
        result: HeartbeatResult,
    ) -> bool:
        """One request for the round; False when the server has no such route."""
        r = self._send(HEARTBEAT_PATH, {
            "worker_id": worker_id, "claim_ttl": claim_ttl,
            "claims": [{"task_id": task_id, "claim_token": token} for task_id, token in claims],
        })
        if r.status_code in _NO_ROUTE:
            self._no_batch_routes(r)
            return False
        if not r.is_success:
            raise ValidationError.single(HEARTBEAT_PATH,
                                         f"HTTP {r.status_code}: {r.text[:500]}")
        tokens = dict(claims)
        for item in r.json()["items"]:
            task_id = item["task_id"]
            if not item["held"]:
                result.lost.append(task_id)
                self._forget(task_id, tokens[task_id])
                continue
            if item["cancel_requested"]:
                result.cancel_requested.append(task_id)
            if revoked := item["revoked_lease_ids"]:
                result.revoked[task_id] = revoked
        return True

    def _no_batch_routes(self, r: httpx.Response) -> None:
        log.info("the creep API has no batch worker routes (HTTP %d): one request per task",
                 r.status_code)
        self.batch_routes = False

    def _heartbeat_each(
        self, worker_id: str, claims: Sequence[tuple[str, str]], claim_ttl: float,
        result: HeartbeatResult,
    ) -> None:
        for task_id, token in claims:
            r = self._post(f"/v1/tasks/{task_id}/heartbeat", {
                "claim_token": token, "claim_ttl": claim_ttl, "worker_id": worker_id,
            })
            if r.status_code in _LOST:
                result.lost.append(task_id)
                self._forget(task_id, token)
                continue
            answer = r.json()
            if answer["cancel_requested"]:
                result.cancel_requested.append(task_id)
            if revoked := answer.get("revoked_lease_ids"):  # absent from older servers
                result.revoked[task_id] = revoked

    def task_progress(
        self, task_id: str, claim_token: str, progress: int, message: str | None, now: datetime
    ) -> bool:
        # A database worker records any message; the API takes 2,000 characters, as for an
        # outcome's message (a longer one would raise its 422 into the handler).
        r = self._post(f"/v1/tasks/{task_id}/progress", {
            "claim_token": claim_token, "progress": progress, "message": _cut(message, 2000)})
        if not r.is_success:
            self._forget(task_id, claim_token)
        return r.is_success

    def task_complete_many(self, completions: Sequence[Completion], now: datetime) -> list[str]:
        """The ids of the tasks whose outcome this call wrote. The Worker sends a batch again
        after a failure that may have reached the server (a timeout, a 5xx): what the first
        send wrote then answers `applied` false (the token no longer holds the task), which
        is not a lost claim to act on, only nothing more to write (the outcome stands)."""
        applied: list[str] = []
        for chunk in _chunks(completions):
            if not (self.batch_routes and self._complete_batch(chunk, applied)):
                applied += self._complete_each(chunk)
        return applied

    def _complete_batch(self, completions: Sequence[Completion], applied: list[str]) -> bool:
        """One request for the batch; False when the server did not take it as a batch: it
        has no such route (404/405), or it refused an item (e.g. a result too large), which
        the per-task routes then single out (see _refused)."""
        r = self._send(COMPLETE_PATH, {"items": [
            {"task_id": c.outcome.task_id, **_outcome_body(c.outcome)} for c in completions]})
        if r.status_code in _NO_ROUTE:
            self._no_batch_routes(r)
            return False
        if not r.is_success:
            log.warning("the creep API refused a batch of %d outcomes (HTTP %d: %s); "
                        "sending them one by one", len(completions), r.status_code,
                        r.text[:500])
            return False
        for c in completions:
            self._forget(c.outcome.task_id, c.outcome.claim_token)
        applied += [item["task_id"] for item in r.json()["items"] if item["applied"]]
        return True

    def _complete_each(self, completions: Sequence[Completion]) -> list[str]:
        applied: list[str] = []
        for c in completions:
            o = c.outcome
            body = _outcome_body(o)
            kind = body.pop("outcome")
            r = self._send(f"/v1/tasks/{o.task_id}/{kind}", body)
            self._forget(o.task_id, o.claim_token)
            if r.is_success:
                applied.append(o.task_id)
            elif r.status_code not in _LOST:
                self._refused(o.task_id, o.claim_token, r)
        return applied

    def _refused(self, task_id: str, token: str, r: httpx.Response) -> None:
        """The API refused an outcome (e.g. a result too large): retrying the same request
        would block every later completion, so the run ends as a retry with the refusal as
        its error, as a handler's exception would. If even that is refused, the task is left
        to its claim's expiry (then WORKER_LOST)."""
        refusal = f"HTTP {r.status_code}: {r.text[:1500]}"
        log.error("task %s: the creep API refused its outcome (%s); failing this run",
                  task_id, refusal)
        fallback = self._send(f"/v1/tasks/{task_id}/fail", {
            "claim_token": token, "kind": "retry",
            "message": f"the creep API refused the worker's outcome: {refusal}"})
        if not (fallback.is_success or fallback.status_code in _LOST):
            log.error("task %s: the fallback failure was refused too (HTTP %d); the task "
                      "retries when its claim expires", task_id, fallback.status_code)

    def _forget(self, task_id: str, token: str) -> None:
        if self._tokens.get(task_id) == token:
            del self._tokens[task_id]

    # -- a handler's lease context (ctx.charge / earn / report_event / leases) -----------------

    def _token(self, task_id: str | None) -> str:
        token = self._tokens.get(task_id or "")
        if token is None:
            raise ClaimLost(f"task {task_id}: this worker holds no claim on it")
        return token

    def _fenced(self, path: str, body: dict[str, Any]) -> Any:
        """A claim-fenced call's JSON answer; its refusals raised as a database worker's
        store would raise them."""
        r = self._send(path, body)
        if r.is_success:
            return r.json()
        problem = _problem(r)
        if r.status_code == 409 and problem.get("type", "").endswith("budget-exceeded"):
            raise BudgetExceeded(problem.get("detail") or "max_total_cost exceeded")
        if r.status_code == 404 or (
            r.status_code == 409 and problem.get("type", "").endswith("claim-lost")
        ):
            raise ClaimLost(f"{path}: the claim is no longer held")
        errors = [(e.get("field", "body"), e.get("rule", "is invalid"))
                  for e in problem.get("errors") or []]
        if r.status_code == 409 and errors and \
                problem.get("type", "").endswith("idempotency-conflict"):
            raise IdTaken(errors)  # an entry_id of another entry, as the database's store
        if r.status_code == 409:  # the call's own conflict (an event id that exists already)
            raise ConflictError(problem.get("detail") or f"{path}: HTTP 409")
        raise ValidationError(errors or [(path, f"HTTP {r.status_code}: {r.text[:500]}")])

    def ledger_record(
        self, entry: LedgerEntry, *, enforce_budget: bool = True,
        claim_token: str | None = None,
    ) -> LedgerEntry:
        """ctx.charge / ctx.earn (the budget is always enforced over the API). Sent with the
        entry's id, which the server writes once: a failure that may have reached it (a
        timeout, a 5xx) is SafeToResend, so the Worker sends it again (a server older than
        entry_id answers a 422 on it: then it is sent without, and not again)."""
        path = f"/v1/tasks/{entry.task_id}/ledger"
        body = {
            "claim_token": claim_token or self._token(entry.task_id),
            "entry_type": entry.entry_type.value,
            "amount": str(entry.amount), "currency": entry.currency,
            "asset_id": entry.asset_id, "lease_id": entry.lease_id,
            "description": entry.description,
        }
        if self.ledger_entry_ids:
            try:
                d = self._fenced(path, {**body, "entry_id": entry.entry_id})
            except NotWritten:
                raise
            except StorageError as exc:
                raise SafeToResend(f"{exc} (sent again with its entry_id: written once)") \
                    from exc
            except ValidationError as exc:
                if [name for name, _ in exc.errors] != ["entry_id"]:
                    raise
                log.info("the creep API takes no ledger entry_id: a charge whose answer is "
                         "lost is not sent again")
                self.ledger_entry_ids = False
                d = self._fenced(path, body)
        else:
            d = self._fenced(path, body)
        return LedgerEntry(**{**d, "entry_type": EntryType(d["entry_type"]),
                              "amount": Decimal(d["amount"]),
                              "occurred_at": datetime.fromisoformat(d["occurred_at"]),
                              "recorded_at": datetime.fromisoformat(d["recorded_at"])})

    def asset_event_report(
        self, fields: dict[str, Any], now: datetime, *, tenant_id: str,
        task_id: str | None = None, claim_token: str | None = None,
    ) -> list[AssetEvent]:
        """ctx.report_event: the event, then what it caused (e.g. LEASE_REVOKED). Sent with
        its event_id (ctx.report_event picks one), which the server writes once: a failure
        that may have reached it (a timeout, a 5xx) is SafeToResend, so the Worker sends it
        again and gets the first send's answer."""
        sent = {k: v for k, v in fields.items() if v is not None and v != [] and v != {}}
        try:
            d = self._fenced(f"/v1/tasks/{task_id}/asset-events",
                             {**sent, "claim_token": claim_token or self._token(task_id)})
        except NotWritten:
            raise
        except StorageError as exc:
            if not sent.get("event_id"):
                raise
            raise SafeToResend(f"{exc} (sent again with its event_id: written once)") \
                from exc
        return [_event_from_json(e) for e in (d["event"], *d["caused"])]

    def lease_list(
        self, *, tenant_id: str | None = None, task_id: str | None = None, **_: Any,
    ) -> list[Lease]:
        """ctx.leases(): the leases of this worker's claim on the task. It only reads: any
        failure to try again later (a timeout, a 5xx) is NotWritten, so the Worker sends it
        again."""
        token = self._token(task_id)
        try:
            d = self._fenced(f"/v1/tasks/{task_id}/leases", {"claim_token": token})
        except NotWritten:
            raise
        except StorageError as exc:
            raise NotWritten(f"{exc} (a read: sent again)") from exc
        return [_lease_from_json(x, token) for x in d["items"]]

    # Leadership and maintenance stay on the server side.
    def lock_acquire(self, lock_key: str, holder_id: str, ttl: float, now: datetime,
                     purpose: str = "") -> str | None:
        return None

    def lock_renew(self, lock_key: str, holder_id: str, token: str, ttl: float,
                   now: datetime) -> bool:
        return False

    def lock_release(self, lock_key: str, token: str, now: datetime) -> bool:
        return False

    def listener(self) -> Listener | None:
        return None  # the claim long-polls instead

    def subscribe(self, callback: Callable[[str, str], None]) -> None:
        """No in-process wake-ups: the claim long-polls."""

    def unsubscribe(self, callback: Callable[[str, str], None]) -> None:
        """See subscribe."""


def _outcome_body(o: Outcome) -> dict[str, Any]:
    """An outcome as /complete or /fail (`outcome` names which) takes it."""
    if o.kind is OutcomeKind.SUCCEEDED:
        result = orjson.loads(o.result_json) if o.result_json is not None else o.result
        return {"outcome": "complete", "claim_token": o.claim_token, "result": result}
    return {"outcome": "fail", "claim_token": o.claim_token, "kind": _FAIL_KIND[o.kind],
            "code": _cut(o.code, 64), "message": _cut(o.message, 2000),
            "error": _cut(o.error, 8000, keep_end=True),
            "retry_delay": _retry_delay(o.retry_delay)}


def _chunks(completions: Sequence[Completion]) -> Iterator[list[Completion]]:
    """Batches of at most MAX_BATCH, in order, each naming a task once (a batch route
    refuses a task named twice: a run's stale outcome and its next run's, say)."""
    chunk: list[Completion] = []
    seen: set[str] = set()
    for c in completions:
        if len(chunk) == MAX_BATCH or c.outcome.task_id in seen:
            yield chunk
            chunk, seen = [], set()
        chunk.append(c)
        seen.add(c.outcome.task_id)
    if chunk:
        yield chunk


def _retry_after(r: httpx.Response) -> float | None:
    """The Retry-After header's seconds (creep sends whole seconds; a date is ignored)."""
    try:
        seconds = float(r.headers.get("retry-after", ""))
    except ValueError:
        return None
    return seconds if 0 <= seconds < 3600 else None


def _problem(r: httpx.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _fields(r: httpx.Response) -> list[str]:
    """The fields a 422 names."""
    return [str(e.get("field")) for e in _problem(r).get("errors") or [] if isinstance(e, dict)]


def _event_from_json(d: dict[str, Any]) -> AssetEvent:
    return AssetEvent(**{
        **d, "severity": None if d["severity"] is None else Severity(d["severity"]),
        "occurred_at": datetime.fromisoformat(d["occurred_at"]),
        "recorded_at": datetime.fromisoformat(d["recorded_at"]),
    })


def _lease_from_json(d: dict[str, Any], claim_token: str) -> Lease:
    times = {name: None if d[name] is None else datetime.fromisoformat(d[name])
             for name in ("acquired_at", "expires_at", "released_at")}
    return Lease(**{**d, **times, "status": LeaseStatus(d["status"]),
                    "cost": Decimal(d["cost"]), "claim_token": claim_token})


def _retry_delay(delay: float | None) -> float | None:
    """A Retry delay as the API takes it, meaning what it means on a database worker: a
    negative or NaN delay is none, and one past the last storable instant (inf included)
    waits until then."""
    if delay is None:
        return None
    return min(delay, MAX_RETRY_DELAY) if delay > 0 else 0.0


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _cut(text: str | None, limit: int, keep_end: bool = False) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[-limit:] if keep_end else text[:limit]


def task_from_json(d: dict[str, Any]) -> TaskOrder:
    """A TaskOrder from the API's JSON form of it."""
    values = dict(d)
    for name in _TS_FIELDS:
        if values.get(name) is not None:
            values[name] = datetime.fromisoformat(values[name])
    for name in ("max_total_cost", "business_value_hint"):
        if values.get(name) is not None:
            values[name] = Decimal(values[name])
    values["status"] = TaskStatus(values["status"])
    known = set(TaskOrder.__dataclass_fields__)
    return TaskOrder(**{k: v for k, v in values.items() if k in known})
