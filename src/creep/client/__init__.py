"""The Python client SDK of the creep REST API.

    from creep.client import Client
    with Client("http://127.0.0.1:8000", key) as c:      # or CREEP_API_URL / CREEP_API_KEY
        task = c.create_task(task_type="ECHO", env="dev", input_payload={"x": 1})
        for event in c.follow_task_events(task.task_id):
            print(event.event_type)
"""

from creep.client._core import NO_RETRY, RetryPolicy, RetryStats
from creep.client.async_client import AsyncClient
from creep.client.errors import ApiProblem, ClientError, TransportError
from creep.client.models import (
    ApiKey,
    Artifact,
    Asset,
    AssetEvent,
    AuditEvent,
    BanPolicy,
    Batch,
    Claimed,
    CreatedKey,
    Execution,
    Lease,
    LedgerEntry,
    LedgerGroup,
    LedgerSummary,
    Page,
    ReportedEvent,
    Schedule,
    Task,
    TaskEvent,
    Tenant,
)
from creep.client.sync_client import Client

__all__ = [
    "NO_RETRY", "ApiKey", "ApiProblem", "Artifact", "Asset", "AssetEvent", "AsyncClient",
    "AuditEvent", "BanPolicy", "Batch", "Claimed", "Client", "ClientError", "CreatedKey", "Execution",
    "Lease", "LedgerEntry", "LedgerGroup", "LedgerSummary", "Page", "ReportedEvent",
    "RetryPolicy", "RetryStats", "Schedule", "Task", "TaskEvent", "Tenant", "TransportError",
]
