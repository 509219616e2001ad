"""One exception root for everything creep raises on purpose."""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class CreepError(Exception):
    """A creep operation failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())

    @property
    def message(self) -> str:
        return str(self.args[0])


class ValidationError(CreepError):
    """Input failed validation."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        # Each error is (field path, rule it broke); all are reported at once.
        self.errors = errors
        super().__init__("; ".join(f"{field}: {rule}" for field, rule in errors))

    @classmethod
    def single(cls, field: str, rule: str) -> ValidationError:
        return cls([(field, rule)])


def one_order_errors(exc: ValidationError) -> ValidationError:
    """The errors of a create of one order, named as that order's own fields: the stores
    check what they create as a list (`tasks[0].depends_on[0]`), while a single submit's
    other checks name `depends_on[0]`, and its body has no `tasks`."""
    prefix = "tasks[0]."
    return ValidationError([
        (field.removeprefix(prefix), rule) for field, rule in exc.errors])


def check_member(name: str, value: object, enum: type[StrEnum]) -> None:
    """Raise a ValidationError naming `name` and the enum's values unless `value` is None or
    one of them: a filter outside its enum would otherwise just match nothing."""
    values = [member.value for member in enum]
    if value is not None and (not isinstance(value, str) or value not in values):
        raise ValidationError.single(name, f"must be one of {values}")


class NotFound(CreepError):
    """No such object."""

    def __init__(self, kind: str, key: Any) -> None:
        self.kind = kind
        self.key = key
        super().__init__(f"{kind} {key} not found")


class ConflictError(CreepError):
    """The request conflicts with the current state."""


class IdempotencyConflict(ConflictError):
    """The idempotency key was already used with a different request body."""

    def __init__(self, tenant_id: str, env: str, idempotency_key: str, task_id: str) -> None:
        self.key = (tenant_id, env, idempotency_key)
        self.task_id = task_id
        super().__init__(
            f"idempotency_key {idempotency_key!r} (tenant {tenant_id!r}, env {env!r}) "
            f"was already used for task {task_id} with a different body"
        )


class IdTaken(ConflictError):
    """An id the caller chose (a ledger entry's entry_id, an asset's asset_id) names
    something else already: a create sent again must be the same create. `errors` name the
    id's field and say why, as a ValidationError's do."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {rule}" for field, rule in errors))

    @classmethod
    def single(cls, field: str, rule: str) -> IdTaken:
        return cls([(field, rule)])


class VersionConflict(ConflictError):
    """The object changed since the version the caller read."""

    def __init__(self, kind: str, key: Any, expected: int, actual: int | None) -> None:
        self.kind = kind
        self.key = key
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"{kind} {key}: version {expected} is stale (current version is {actual})"
        )


class IllegalTransition(ConflictError):
    """The requested state change is not in the transition table."""

    def __init__(self, kind: str, old: str, new: str) -> None:
        self.kind = kind
        self.old = old
        self.new = new
        super().__init__(f"{kind}: illegal transition {old} -> {new}")


class TaskUnfinished(ConflictError):
    """Only a finished task can be deleted (moved to the recycle bin)."""

    def __init__(self, task_id: str, status: str) -> None:
        self.task_id = task_id
        self.status = status
        super().__init__(
            f"task {task_id} is {status}: only a finished task can be deleted; cancel it first"
        )


class TaskDeleted(ConflictError):
    """The task is deleted (in the recycle bin): it changes only once restored."""

    def __init__(self, task_id: str, change: str) -> None:
        self.task_id = task_id
        super().__init__(f"task {task_id} is deleted: restore it before it can be {change}")


class ClaimLost(ConflictError):
    """The worker no longer holds the claim it names (expired, rescued or fenced)."""


class StorageError(CreepError):
    """The database failed; the original error is the cause."""


class SafeToResend(StorageError):
    """A store call failed in a way that sending it again cannot write twice: it may have
    been written, but the server writes it once however often it is sent (an HTTP worker's
    ledger entry by its entry_id, an asset event by its event_id). `retry_after`: the
    seconds the server asked to wait, if it said."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotWritten(SafeToResend):
    """A store call was refused before anything was written (the API's 429 or 408, a
    connection never made): sending it again cannot write twice."""


class SchemaOutOfDate(StorageError):
    """The database schema is not the version this creep was written for: older (run `creep
    migrate`) or, as SchemaTooNew, newer. Checked once, when a store that is not migrated
    is first used."""

    def __init__(self, version: int, expected: int) -> None:
        self.version, self.expected = version, expected
        if version == 0:
            message = (f"the database has no creep schema (this creep needs version "
                       f"{expected}): run `creep migrate`")
        else:
            message = (f"the database's schema is version {version}, older than this creep "
                       f"needs ({expected}): run `creep migrate`")
        super().__init__(message)


class SchemaTooNew(SchemaOutOfDate):
    """A newer creep migrated the database: code that does not know its schema must not use
    it; upgrade creep."""

    def __init__(self, version: int, expected: int) -> None:
        self.version, self.expected = version, expected
        StorageError.__init__(
            self, f"the database's schema is version {version}, newer than this creep knows "
            f"({expected}): upgrade creep")
