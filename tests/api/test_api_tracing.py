"""OpenTelemetry spans (the `otel` extra), collected by the SDK's in-memory exporter: a real
HTTP server (uvicorn, in this process so the exporter sees its spans) and a real worker on
SQLite and PostgreSQL. The handler's span is a child of the submitting request's span."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from creep import Creep, tracing
from creep.api.app import create_app
from creep.api.settings import Settings
from tests.api.conftest import ADMIN_KEY, _pg_schema, free_port
from tests.conftest import require_postgres


@pytest.fixture
def exporter() -> Iterator[tuple[InMemorySpanExporter, TracerProvider]]:
    provider = TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.use_tracer_provider(provider)
    yield spans, provider
    tracing.use_tracer_provider(None)
    provider.shutdown()


@pytest.fixture(params=["sqlite", "postgres"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(base URL, database URL) of a uvicorn server running creep's app in a thread."""
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/traced.db"
    else:
        require_postgres()
        url, drop = _pg_schema()
    settings = Settings(database_url=url, admin_key=ADMIN_KEY, maintenance_interval_seconds=0)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        if drop is not None:
            drop()


def _one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


def test_spans_from_request_to_handler(
    served: tuple[str, str], exporter: tuple[InMemorySpanExporter, TracerProvider],
) -> None:
    base, database_url = served
    spans, provider = exporter
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    assert httpx.post(f"{base}/v1/tenants", json={"tenant_id": "traced"},
                      headers=admin).status_code == 201
    client_tracer = provider.get_tracer("test-client")
    with client_tracer.start_as_current_span("client submit") as client_span:
        headers = {**admin, "traceparent": tracing.current_traceparent() or "",
                   "X-Request-ID": "trace-me-1"}
        r = httpx.post(f"{base}/v1/tasks", headers=headers,
                       json={"task_type": "TRACED", "tenant_id": "traced"})
        assert r.status_code == 201, r.text
    task_id = r.json()["task_id"]
    stored = r.json()["constraints"][tracing.TRACEPARENT]
    bad = httpx.post(f"{base}/v1/tasks", headers=admin, json={
        "task_type": "TRACED", "tenant_id": "traced", "constraints": {"traceparent": "nope"}})
    assert bad.status_code == 422
    assert [e["field"] for e in bad.json()["errors"]] == ["constraints.traceparent"]

    seen: list[Any] = []
    with Creep(database_url) as app:
        @app.handler("TRACED")
        def traced(ctx: Any) -> dict[str, str]:
            # The handler runs inside its span: its own spans nest there.
            seen.append(tracing.current_traceparent())
            return {"ok": "yes"}

        stats = app.run_worker(burst=True, install_signals=False)
    assert stats["completed"] == 1

    finished = list(spans.get_finished_spans())
    server = [s for s in finished if s.kind is SpanKind.SERVER
              and s.attributes and s.attributes.get("creep.request_id") == "trace-me-1"]
    assert len(server) == 1
    request_span = server[0]
    assert request_span.name == "POST /v1/tasks"
    assert request_span.attributes is not None
    assert request_span.attributes["http.route"] == "/v1/tasks"
    assert request_span.attributes["http.response.status_code"] == 201
    # The request continues the client's trace ...
    assert request_span.parent is not None
    assert request_span.parent.span_id == client_span.get_span_context().span_id
    trace_id = client_span.get_span_context().trace_id
    assert request_span.context.trace_id == trace_id
    # ... the task remembers the request's span ...
    flags = f"{int(request_span.context.trace_flags):02x}"
    assert stored == f"00-{trace_id:032x}-{request_span.context.span_id:016x}-{flags}"
    submit = _one(finished, "creep.task.submit")
    assert submit.parent is not None and submit.parent.span_id == request_span.context.span_id
    assert submit.attributes is not None and submit.attributes["creep.task_id"] == task_id
    # ... and the handler's span is its child, in the same trace.
    run = _one(finished, "creep.task.run")
    assert run.context.trace_id == trace_id
    assert run.parent is not None and run.parent.span_id == request_span.context.span_id
    assert run.attributes is not None
    assert (run.attributes["creep.task_id"], run.attributes["creep.task_type"],
            run.attributes["creep.attempt"], run.attributes["creep.outcome"]) == (
        task_id, "TRACED", 1, "succeeded")
    assert seen == [f"00-{trace_id:032x}-{run.context.span_id:016x}-{flags}"]
    claims = [s for s in finished if s.name == "creep.claim"]
    assert sum(int((s.attributes or {}).get("creep.claimed", 0)) for s in claims) == 1
    complete = _one(finished, "creep.complete")
    assert complete.attributes is not None and complete.attributes["creep.tasks"] == 1


def test_no_spans_without_a_tracer_provider(served: tuple[str, str]) -> None:
    base, _ = served
    assert tracing.tracer() is None  # the global provider is OpenTelemetry's no-op proxy
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    httpx.post(f"{base}/v1/tenants", json={"tenant_id": "plain"}, headers=admin)
    r = httpx.post(f"{base}/v1/tasks", headers=admin,
                   json={"task_type": "PLAIN", "tenant_id": "plain"})
    assert r.status_code == 201 and "traceparent" not in r.json()["constraints"]


def test_creep_works_without_opentelemetry(tmp_path: Path) -> None:
    """Without OpenTelemetry at all (the engine; FastAPI itself needs opentelemetry-api):
    imports succeed, tasks run, no spans are attempted."""
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name == "opentelemetry" or name.startswith("opentelemetry."):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from creep import Creep, tracing
import creep.engine.worker
assert tracing.trace is None and tracing.tracer() is None
with Creep("sqlite:///{tmp_path}/plain.db") as app:
    app.handler("NOOTEL")(lambda ctx: "done")
    task = app.submit(task_type="NOOTEL")
    assert "traceparent" not in task.constraints
    assert app.run_worker(burst=True, install_signals=False)["completed"] == 1
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
