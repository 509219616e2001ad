"""creep's tracer follows OpenTelemetry's global provider without asking the environment on
every request (tracing.tracer is called once per HTTP request)."""

from __future__ import annotations

import os

import pytest

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from creep import tracing


def test_tracer_follows_the_global_provider_once_it_is_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    assert tracing.tracer() is None
    provider = TracerProvider()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)  # what set_tracer_provider sets
    made = tracing.tracer()
    assert made is not None and made is tracing.tracer()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    assert tracing.tracer() is None


def test_an_environment_provider_is_still_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", None)
    monkeypatch.setattr(trace, "_TRACER_PROVIDER_SET_ONCE", type(
        trace._TRACER_PROVIDER_SET_ONCE)())  # a fresh Once: the provider may be set again
    monkeypatch.setattr(tracing, "_ENV_PROVIDER", True)
    monkeypatch.setitem(os.environ, "OTEL_PYTHON_TRACER_PROVIDER", "sdk_tracer_provider")
    assert tracing.tracer() is not None
    assert isinstance(trace._TRACER_PROVIDER, TracerProvider)
