"""Prometheus metrics. Two kinds, so that many API nodes on one database report right:

- Cluster-wide, from the database (identical on every node; aggregate with max(), not sum()):
  gauges computed at scrape time (queue depth, leases, assets, ledger totals) and the task
  lifecycle counters and histograms of the rollup folded from task events
  (`creep/engine/metrics_fold.py`). A node reads them at most once per `metrics_cache_seconds`.
- Per process (sum() across nodes): HTTP request durations and rate-limit refusals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from creep.engine import metrics_fold as mf
from creep.ports_api import ApiStore

log = logging.getLogger("creep.api")
#: Distinct currency labels of the ledger gauges (CREEP_METRICS_MAX_CURRENCIES).
DEFAULT_MAX_CURRENCIES = 50
OTHER_CURRENCY = "_other"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_COUNTERS = {
    mf.CREATED: ("creep_tasks_created", "Tasks created, by task type", ["task_type"]),
    mf.FINISHED: ("creep_tasks_finished", "Tasks that reached a final status (a retried "
                  "task counts each time it does), by task type and status",
                  ["task_type", "status"]),
}
_HISTOGRAMS = {
    mf.CLAIM_TO_START: ("Seconds from a task becoming claimable to a worker starting it",
                        ["task_type"]),
    mf.RUN_TIME: ("Seconds a task attempt ran, by task type and the status it left RUNNING "
                  "for", ["task_type", "status"]),
}


class DatabaseMetrics(Collector):
    """Everything /metrics derives from the database, refreshed at most once per `ttl`."""

    def __init__(self, store: ApiStore, ttl: float, max_task_types: int | None = None,
                 max_currencies: int = DEFAULT_MAX_CURRENCIES) -> None:
        self.store = store
        self.ttl = ttl
        self.max_task_types = max_task_types
        self.max_currencies = max_currencies
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._families: list[Metric] = []

    def describe(self) -> list[Metric]:
        return []  # registering must not read the database (collect() would)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            if time.monotonic() - self._at >= self.ttl:
                try:
                    self._families = self._read()
                except Exception as exc:  # a scrape must not fail because the database did
                    log.warning("database metrics unavailable: %s", exc)
                self._at = time.monotonic()
            families = self._families
        yield from families

    def _read(self) -> list[Metric]:
        mf.fold_task_events(self.store, max_task_types=self.max_task_types)
        families: list[Metric] = [*_rollup(self.store.metric_values())]
        depth = GaugeMetricFamily(
            "creep_queue_depth", "Unfinished tasks by status and priority band (0-9, by tens)",
            labels=["status", "priority_band"],
        )
        for status, band, count in self.store.queue_depth():
            depth.add_metric([status, str(band)], count)
        gauges = self.store.metric_gauges()
        leases = GaugeMetricFamily("creep_leases", "Asset leases held now (status ACTIVE)",
                                   labels=["status"])
        for status, count in gauges.leases:
            leases.add_metric([status], count)
        assets = GaugeMetricFamily(
            "creep_assets", "Assets by status, of the statuses but SOLD and ARCHIVED",
            labels=["status"])
        for status, count in gauges.assets:
            assets.add_metric([status], count)
        amount = GaugeMetricFamily(
            "creep_ledger_amount", "Sum of ledger entry amounts by entry type and currency",
            labels=["entry_type", "currency"],
        )
        entries = GaugeMetricFamily(
            "creep_ledger_entries", "Ledger entries by entry type and currency",
            labels=["entry_type", "currency"],
        )
        shown, other = _cap_currencies(gauges.ledger, self.max_currencies)
        for entry_type, currency, total, n in shown:
            amount.add_metric([entry_type, currency], float(total))
            entries.add_metric([entry_type, currency], n)
        for entry_type, n in other:
            entries.add_metric([entry_type, OTHER_CURRENCY], n)
        return [*families, depth, leases, assets, amount, entries]


def _cap_currencies(
    ledger: list[tuple[str, str, Decimal, int]], limit: int
) -> tuple[list[tuple[str, str, Decimal, int]], list[tuple[str, int]]]:
    """The ledger rows of the `limit` currencies with the most entries (ties by name), and
    the entry counts by entry type of all the others (currency="_other"; no amount, as a sum
    over several currencies means nothing). Any 3-4 capital letters are a currency, so a
    tenant could otherwise add series on every node by making them up; the currencies that
    carry the money keep theirs."""
    per_currency: dict[str, int] = {}
    for _, currency, _, n in ledger:
        per_currency[currency] = per_currency.get(currency, 0) + n
    kept = set(sorted(per_currency, key=lambda c: (-per_currency[c], c))[:limit])
    other: dict[str, int] = {}
    for entry_type, currency, _, n in ledger:
        if currency not in kept:
            other[entry_type] = other.get(entry_type, 0) + n
    return [r for r in ledger if r[1] in kept], sorted(other.items())


def _rollup(values: list[tuple[str, str, float]]) -> Iterator[Metric]:
    """The rollup's rows as counter and histogram families (empty families included, so a
    fresh database still names every metric)."""
    grouped: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, text, value in values:
        grouped.setdefault(name, []).append((orjson.loads(text), value))
    for name, (family_name, doc, label_names) in _COUNTERS.items():
        counter = CounterMetricFamily(family_name, doc, labels=label_names)
        for labels, value in sorted(grouped.get(name, []), key=lambda r: sorted(r[0].items())):
            counter.add_metric([labels.get(n, "") for n in label_names], value)
        yield counter
    for name, (doc, label_names) in _HISTOGRAMS.items():
        histogram = HistogramMetricFamily(name, doc, labels=label_names)
        series: dict[tuple[str, ...], dict[str, float]] = {}
        for labels, value in grouped.get(f"{name}_bucket", []):
            key = tuple(labels.get(n, "") for n in label_names)
            series.setdefault(key, {})[labels["le"]] = value
        sums = {tuple(labels.get(n, "") for n in label_names): value
                for labels, value in grouped.get(f"{name}_sum", [])}
        for key in sorted(series):
            per_bucket, running, cumulative = series[key], 0.0, []
            for le in [*mf.BUCKET_LABELS, "+Inf"]:  # the rollup's buckets are not cumulative
                running += per_bucket.get(le, 0.0)
                cumulative.append((le, running))
            histogram.add_metric(list(key), cumulative, sum_value=sums.get(key, 0.0))
        yield histogram


class _RateLimited(Collector):
    def __init__(self, rejected: Callable[[], int]) -> None:
        self.rejected = rejected

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("creep_rate_limited", "Requests refused by the per-tenant "
                                  "rate limit (429), in this process", value=self.rejected())


class Metrics:
    def __init__(self, store: ApiStore, cache_seconds: float = 2.0,
                 rate_limited: Callable[[], int] = lambda: 0,
                 max_task_types: int | None = mf.DEFAULT_MAX_TASK_TYPES,
                 max_currencies: int = DEFAULT_MAX_CURRENCIES) -> None:
        self.registry = CollectorRegistry()
        self.http_requests = Histogram(
            "creep_http_request_duration_seconds", "HTTP requests by route and status",
            ["method", "route", "status"], registry=self.registry, buckets=_BUCKETS,
        )
        self.registry.register(_RateLimited(rate_limited))
        self.database = DatabaseMetrics(store, cache_seconds, max_task_types, max_currencies)
        self.registry.register(self.database)
        # Labelled children, cached: labels() takes a lock and builds a key on every call.
        # Label values are bounded (route templates, statuses), so are these.
        self._http_children: dict[tuple[str, str, int], Any] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        child = self._http_children.get(key)
        if child is None:
            child = self._http_children[key] = self.http_requests.labels(
                method, route, str(status))
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
