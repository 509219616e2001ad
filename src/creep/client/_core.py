"""What the sync and async clients share: settings, retry policy, response decoding,
the Server-Sent Events parser. No I/O here."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import httpx
import orjson

from creep.client.errors import ApiProblem, ClientError
from creep.client.models import Model, Page
from creep.domain.ids import uuid7

DEFAULT_URL = "http://127.0.0.1:8000"
RETRY_STATUSES = frozenset({429, 503})
M = TypeVar("M", bound=Model)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Backoff on 429/503 (and on connection failures): waits `Retry-After` when the server
    sends it, else `base * 2**attempt` with jitter; every wait is capped at `max_delay`.
    A 503 may come after the server wrote the request, so it is retried only for a call that
    cannot write twice (see `Call.resendable`); a 429 or a refused connection, for any; any
    lost answer (a 5xx, a timeout, a dropped connection) of a call the server knows again
    (`Call.again`: a claim with its claim_id)."""

    max_retries: int = 4
    base_delay: float = 0.25
    max_delay: float = 10.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.max_delay)
        backoff = self.base_delay * (2**attempt)
        return float(min(backoff / 2 + random.uniform(0, backoff / 2), self.max_delay))


NO_RETRY = RetryPolicy(max_retries=0)


@dataclass(slots=True)
class RetryStats:
    """How many times this client retried (for logs and tests)."""

    retries: int = 0
    waited: float = 0.0
    statuses: list[int] = field(default_factory=list)


def resolve(url: str | None, key: str | None) -> tuple[str, str | None]:
    """Explicit values win over CREEP_API_URL / CREEP_API_KEY. A malformed URL raises
    ClientError (not httpx's InvalidURL, which would escape every caller's handling)."""
    given = url or os.environ.get("CREEP_API_URL") or DEFAULT_URL
    if not given.startswith(("http://", "https://")):
        raise ClientError(f"the API URL must start with http:// or https:// (got {given!r})")
    base = given.rstrip("/")
    try:
        parsed = httpx.URL(base)
    except httpx.InvalidURL as exc:
        raise ClientError(f"the API URL is not valid: {exc} (got {given!r})") from None
    if not parsed.host:
        raise ClientError(f"the API URL names no host (got {given!r})")
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise ClientError(f"the API URL's port must be 1-65535 (got {given!r})")
    return base, key or os.environ.get("CREEP_API_KEY") or None


def headers(key: str | None) -> dict[str, str]:
    out = {"User-Agent": "creep-client", "Accept": "application/json"}
    if key:
        out["Authorization"] = f"Bearer {key}"
    return out


def call_timeout(base: httpx.Timeout, wait: float) -> httpx.Timeout:
    """The client's timeout for a call the server may hold back `wait` seconds (a claim's
    long poll): its read timeout counts from the end of that wait, not from the request."""
    if wait <= 0 or base.read is None:
        return base
    return httpx.Timeout(connect=base.connect, read=base.read + wait, write=base.write,
                         pool=base.pool)


def retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        pass
    try:
        from datetime import UTC

        return (parsedate_to_datetime(raw) - datetime.now(UTC)).total_seconds()
    except (TypeError, ValueError):
        return None


def problem(response: httpx.Response) -> ApiProblem:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"title": response.reason_phrase or f"HTTP {response.status_code}",
                "detail": response.text[:500]}
    return ApiProblem(response.status_code, body, retry_after(response))


def json_of(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise problem(response)
    return orjson.loads(response.content) if response.content else None


def one(response: httpx.Response, model: type[M]) -> M:
    return model.from_json(json_of(response))


def page(response: httpx.Response, model: type[M]) -> Page[M]:
    data = json_of(response)
    return Page([model.from_json(item) for item in data["items"]], data.get("next_cursor"))


def params(**values: Any) -> dict[str, Any]:
    """Query parameters without the Nones (booleans as true/false, datetimes ISO 8601,
    `from_` sent as `from`)."""
    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None:
            continue
        name = "from" if name == "from_" else name
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, datetime):
            value = value.isoformat()
        elif isinstance(value, list | tuple) and name == "group_by":
            value = ",".join(value)
        out[name] = value
    return out


def jsonable(value: Any) -> Any:
    """A request body with Decimals as decimal strings and datetimes as ISO 8601 (what the
    API takes; the standard JSON encoder refuses both)."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value


def task_body(order: dict[str, Any] | None, fields: dict[str, Any]) -> dict[str, Any]:
    """A task order with an idempotency key (generated when not given, so a retried POST can
    never create the task twice)."""
    body = {**(order or {}), **fields}
    if not body.get("idempotency_key"):
        body["idempotency_key"] = str(uuid.uuid4())
    return body


def claim_body(task_types: list[str], max_tasks: int, wait: float, claim_ttl: float,
               worker_id: str | None, claim_id: str | None, resend: bool,
               claim_ids: bool) -> dict[str, Any]:
    """A claim with its claim_id: the caller's, else (unless the server takes none) a new
    UUID, so that the claim can be sent again after a lost answer."""
    if claim_id is None and claim_ids:
        claim_id = str(uuid.uuid4())
    body = params(task_types=task_types, max_tasks=max_tasks, wait=wait, claim_ttl=claim_ttl,
                  worker_id=worker_id, claim_id=claim_id)
    if resend:
        body["resend"] = True
    return body


def with_id(body: dict[str, Any], name: str,
            new_id: Callable[[], str] = uuid7) -> dict[str, Any]:
    """`body` with its `name` id (chosen here, once per call, when not given): sent again
    after a lost answer, the server answers what it wrote the first time and writes nothing."""
    return body if body.get(name) else {**body, name: new_id()}


def batch_body(title: str, tasks: list[dict[str, Any]], tenant_id: str | None,
               metadata: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"title": title, "tasks": tasks, "metadata": metadata or {}}
    if tenant_id is not None:
        body["tenant_id"] = tenant_id
    return body


@dataclass(slots=True)
class SseEvent:
    event: str = "message"
    data: str = ""
    id: str | None = None

    @property
    def is_stream_end(self) -> bool:
        """The close of a task's event stream: `event: end` with no `id:` line. Every task
        event has an id, so one of type `end` (a worker could post one before the name was
        reserved) is an event, not the close."""
        return self.event == "end" and self.id is None


class SseParser:
    """Incremental text/event-stream parser: feed lines, get complete events."""

    def __init__(self) -> None:
        self._event = SseEvent()
        self._data: list[str] = []

    def feed(self, line: str) -> Iterator[SseEvent]:
        line = line.rstrip("\r\n")
        if not line:
            if self._data or self._event.event != "message" or self._event.id is not None:
                self._event.data = "\n".join(self._data)
                yield self._event
            self._event, self._data = SseEvent(), []
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event.event = value
        elif name == "id":
            self._event.id = value
