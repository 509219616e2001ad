"""creep: a durable task control plane on SQLite or PostgreSQL."""

from creep.app import Creep
from creep.domain.asset import AssetSnapshot, AssetStatus
from creep.domain.asset_event import AssetEvent, BanPolicy, Severity
from creep.domain.clock import Clock, FrozenClock, SystemClock
from creep.domain.errors import (
    ClaimLost,
    ConflictError,
    CreepError,
    IdempotencyConflict,
    IdTaken,
    IllegalTransition,
    NotFound,
    SchemaOutOfDate,
    SchemaTooNew,
    StorageError,
    TaskDeleted,
    TaskUnfinished,
    ValidationError,
    VersionConflict,
)
from creep.domain.events import TaskEvent
from creep.domain.lease import Lease, LeaseStatus
from creep.domain.ledger import BudgetExceeded, EntryType, LedgerEntry, LedgerSummary
from creep.domain.outcomes import Backoff, Fail, Retry, TaskCancelled
from creep.domain.task import ResultCode, TaskOrder, TaskStatus
from creep.domain.task_spec import Limits
from creep.engine.context import SyncTaskContext, TaskContext
from creep.engine.worker import Worker, WorkerSettings

__version__ = "0.1.0"

__all__ = [
    "AssetEvent",
    "AssetSnapshot",
    "AssetStatus",
    "Backoff",
    "BanPolicy",
    "BudgetExceeded",
    "ClaimLost",
    "Clock",
    "ConflictError",
    "Creep",
    "CreepError",
    "EntryType",
    "Fail",
    "FrozenClock",
    "IdTaken",
    "IdempotencyConflict",
    "IllegalTransition",
    "Lease",
    "LeaseStatus",
    "LedgerEntry",
    "LedgerSummary",
    "Limits",
    "NotFound",
    "ResultCode",
    "Retry",
    "SchemaOutOfDate",
    "SchemaTooNew",
    "Severity",
    "StorageError",
    "SyncTaskContext",
    "SystemClock",
    "TaskCancelled",
    "TaskContext",
    "TaskDeleted",
    "TaskEvent",
    "TaskOrder",
    "TaskStatus",
    "TaskUnfinished",
    "ValidationError",
    "VersionConflict",
    "Worker",
    "WorkerSettings",
    "__version__",
]
