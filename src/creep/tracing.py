"""OpenTelemetry spans, when the optional extra is installed (`pip install 'creep[otel]'`) and
the application set a tracer provider; otherwise every helper here is a no-op that costs a
global lookup (no import errors, no spans, no context work).

Trace context crosses the queue in the task itself: at submission the current span's W3C
`traceparent` is stored in `constraints.traceparent` (unless the submitter set one), and the
worker starts the handler's span as a child of it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError:  # the extra is not installed
    trace = None  # type: ignore[assignment]

TRACEPARENT = "traceparent"
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def valid_traceparent(value: Any) -> bool:
    return isinstance(value, str) and _TRACEPARENT.fullmatch(value) is not None


_provider: Any = None
_tracers: dict[int, tuple[Any, Any]] = {}  # provider -> its creep tracer (made once)


def use_tracer_provider(provider: Any) -> None:
    """Trace with `provider` instead of OpenTelemetry's global one (None: the global one)."""
    global _provider
    _provider = provider


#: Whether OpenTelemetry's environment names a provider class for it to load: read once,
#: with the rest of the environment, instead of on every request (see _global_provider).
_ENV_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER" in os.environ
_UNKNOWN = object()


def _global_provider() -> Any:
    """OpenTelemetry's global provider, None when none is set. get_tracer_provider() looks
    the environment up on each call until one is set (os.environ is slow), so its global is
    read directly; an OpenTelemetry without that attribute takes the public call."""
    provider = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)
    if provider is _UNKNOWN or (provider is None and _ENV_PROVIDER):
        return trace.get_tracer_provider()
    return provider


def tracer() -> Any:
    """creep's tracer, or None when spans would go nowhere (no SDK provider is set)."""
    if trace is None:
        return None
    provider = _provider or _global_provider()
    if provider is None:
        return None
    cached = _tracers.get(id(provider))
    if cached is not None and cached[0] is provider:
        return cached[1]
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return None
    made = provider.get_tracer("creep")
    _tracers.clear()  # one provider at a time, in practice
    _tracers[id(provider)] = (provider, made)
    return made


class _NoSpan:
    """Stands in for a span when tracing is off."""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        pass


NO_SPAN = _NoSpan()


@contextmanager
def span(name: str, attributes: Mapping[str, Any] | None = None, *,
         traceparent: str | None = None, kind: Any = None) -> Iterator[Any]:
    """A span made current for the block (NO_SPAN when tracing is off). With `traceparent`,
    the span's parent is that remote context (a task's submitter)."""
    t = tracer()
    if t is None:
        yield NO_SPAN
        return
    context = None
    if traceparent is not None and valid_traceparent(traceparent):
        context = TraceContextTextMapPropagator().extract({TRACEPARENT: traceparent})
    with t.start_as_current_span(
        name, context=context, kind=kind or SpanKind.INTERNAL, attributes=attributes,
    ) as current:
        yield current


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, if a sampled-or-not real span is current."""
    if trace is None:
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def stamp_traceparent(constraints: dict[str, Any]) -> None:
    """At submission: remember the submitting span in the task (a submitter's own value
    stays)."""
    if TRACEPARENT in constraints or tracer() is None:
        return
    parent = current_traceparent()
    if parent is not None:
        constraints[TRACEPARENT] = parent


def start_server_span(t: Any, scope: Mapping[str, Any], request_id: str) -> tuple[Any, Any]:
    """The SERVER span of an HTTP request, current until end_server_span; its parent is the
    caller's W3C `traceparent` header, if any."""
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())
               if k in (b"traceparent", b"tracestate")}
    parent = TraceContextTextMapPropagator().extract(carrier) if carrier else None
    current = t.start_span(
        scope["method"], context=parent, kind=SpanKind.SERVER,
        attributes={"http.request.method": scope["method"], "url.path": scope["path"],
                    "creep.request_id": request_id},
    )
    token = otel_context.attach(trace.set_span_in_context(current, parent))
    return current, token


def end_server_span(current: Any, token: Any, method: str, route: str, status: int) -> None:
    current.update_name(f"{method} {route}")
    current.set_attribute("http.route", route)
    current.set_attribute("http.response.status_code", status)
    if status >= 500:
        current.set_status(StatusCode.ERROR)
    current.end()
    otel_context.detach(token)
