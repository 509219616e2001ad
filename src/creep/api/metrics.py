"""Prometheus metrics: HTTP requests, tasks created, and the queue depth read from the
database at scrape time (so every API node reports the same, shared numbers)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from creep.ports_api import ApiStore

log = logging.getLogger("creep.api")
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _QueueDepth(Collector):
    def __init__(self, store: ApiStore) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "creep_queue_depth", "Unfinished tasks by status and priority band (0-9, by tens)",
            labels=["status", "priority_band"],
        )
        try:
            rows = self.store.queue_depth()
        except Exception as exc:  # a scrape must not fail because the database did
            log.warning("queue depth unavailable: %s", exc)
            rows = []
        for status, band, count in rows:
            family.add_metric([status, str(band)], count)
        yield family


class Metrics:
    def __init__(self, store: ApiStore) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Histogram(
            "creep_http_request_duration_seconds", "HTTP requests by route and status",
            ["method", "route", "status"], registry=self.registry, buckets=_BUCKETS,
        )
        self.tasks_created = Counter(
            "creep_tasks_created_total", "Tasks created through the API",
            ["task_type"], registry=self.registry,
        )
        self.rate_limited = Counter(
            "creep_rate_limited_total", "Requests refused by the per-tenant rate limit",
            registry=self.registry,
        )
        self.registry.register(_QueueDepth(store))
        # Labelled children, cached: labels() takes a lock and builds a key on every call.
        # Label values are bounded (route templates, statuses, task types), so are these.
        self._http_children: dict[tuple[str, str, int], Any] = {}
        self._created_children: dict[str, Any] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http_requests.labels(
                method, route, str(status))
        child.observe(seconds)

    def task_created(self, task_type: str) -> None:
        child = self._created_children.get(task_type)
        if child is None:
            child = self._created_children[task_type] = self.tasks_created.labels(task_type)
        child.inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
