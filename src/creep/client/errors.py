"""Errors of the client: an API problem (RFC 7807) or a transport failure."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Anything the client could not do."""


class TransportError(ClientError):
    """The server could not be reached (or the connection broke), after retries."""


class ApiProblem(ClientError):
    """The server answered with a problem: `status`, `type`, `title`, `detail`, `errors`
    (for validation: a list of {field, in, rule}) and the whole body in `body`."""

    def __init__(self, status: int, body: dict[str, Any], retry_after: float | None = None):
        self.status = status
        self.body = body
        self.type: str = str(body.get("type") or "about:blank")
        self.title: str = str(body.get("title") or f"HTTP {status}")
        self.detail: str = str(body.get("detail") or self.title)
        raw_errors = body.get("errors")
        self.errors: list[dict[str, Any]] = raw_errors if isinstance(raw_errors, list) else []
        self.request_id: str | None = body.get("instance") or None
        self.retry_after = retry_after
        super().__init__(f"{status} {self.title}: {self.detail}")

    @property
    def short_type(self) -> str:
        """The last part of `type` (e.g. "validation", "not-found", "rate-limited")."""
        return self.type.rstrip("/").rsplit("/", 1)[-1]
