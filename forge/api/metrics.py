"""Prometheus metrics of the API process.

Each ``create_app`` owns its CollectorRegistry (no module-level singletons). Under gunicorn
(``forge server``: several worker processes) the request and webhook counters live in
prometheus_client's multiprocess files (``PROMETHEUS_MULTIPROC_DIR``, set up by
``forge.api.server`` before the workers fork), and a scrape sums every worker's — the dead
ones' too — so whichever worker answers, counters never go down and histograms stay whole.
The store metrics are read from the store at scrape time, the same from every worker:

- ``forge_deployments_total{status}`` / ``forge_tasks_total{status}``: counters of the
  Deployments / Instances that reached each phase, from the marks the tally controller keeps
  (never deleted, so they only grow, even after the gc removes old records);
- ``forge_deploy_duration_seconds``: histogram of push-to-live seconds, from the same marks;
- ``forge_agents_online``: gauge of Nodes whose Ready condition is True.
"""

from __future__ import annotations

import logging
import os
from bisect import bisect_right
from collections.abc import Iterator
from typing import Final, get_args

import falcon
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from forge.clock import Clock
from forge.errors import ForgeError
from forge.marks import DEPLOYMENTS_METRIC, DURATION_LABEL, DURATION_METRIC, TASKS_METRIC
from forge.models import DeploymentPhase, InstancePhase, Node
from forge.store.base import Store

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV: Final[str] = "PROMETHEUS_MULTIPROC_DIR"

DURATION_BUCKETS: Final[tuple[float, ...]] = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
DEPLOYMENT_PHASES: Final[tuple[str, ...]] = tuple(p for p in get_args(DeploymentPhase) if p)
INSTANCE_PHASES: Final[tuple[str, ...]] = tuple(p for p in get_args(InstancePhase) if p)


def histogram_buckets(
    values: list[float], bounds: tuple[float, ...] = DURATION_BUCKETS
) -> list[tuple[str, float]]:
    """Cumulative ``(le, count)`` pairs for ``values``, ending with ``+Inf``."""
    ordered = sorted(values)
    out = [(floatToGoString(b), float(bisect_right(ordered, b))) for b in bounds]  # values <= b
    out.append(("+Inf", float(len(ordered))))
    return out


class StoreCollector(Collector):
    """Counters and the deploy-duration histogram from the store's marks; agents online."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            deployments = self.store.tally(DEPLOYMENTS_METRIC)
            tasks = self.store.tally(TASKS_METRIC)
            durations = self.store.observations(DURATION_METRIC, DURATION_LABEL)
            nodes, _ = self.store.list(Node)
        except ForgeError as exc:
            log.warning("metrics: cannot read the store: %s", exc.message)
            return
        for name, doc, counts, known in (
            (DEPLOYMENTS_METRIC, "Deployments that reached each phase", deployments, DEPLOYMENT_PHASES),
            (TASKS_METRIC, "Instances (tasks) that reached each phase", tasks, INSTANCE_PHASES),
        ):
            fam = CounterMetricFamily(name, doc, labels=["status"])
            for phase in sorted(set(known) | set(counts)):
                fam.add_metric([phase], counts.get(phase, 0))
            yield fam
        yield HistogramMetricFamily(
            DURATION_METRIC,
            "Seconds from a Deployment's creation (the push) until it went live",
            buckets=histogram_buckets(durations),
            sum_value=sum(durations),
        )
        online = sum(1 for n in nodes if n.status.is_true("Ready"))
        yield GaugeMetricFamily("forge_agents_online", "Nodes whose Ready condition is True", value=online)


class Metrics:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        self.requests = Counter(
            "forge_api_requests",
            "API requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "forge_api_request_duration_seconds",
            "API request latency until the response starts",
            ["route", "method"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        store_metrics = StoreCollector(store)
        self.registry.register(store_metrics)
        multiproc = os.environ.get(MULTIPROC_ENV)
        if multiproc:
            # Scrapes read every worker's files (the per-process registry above would show one).
            self.scrape = CollectorRegistry()
            MultiProcessCollector(self.scrape, path=multiproc)
            self.scrape.register(store_metrics)
        else:
            self.scrape = self.registry

    def render(self) -> bytes:
        return generate_latest(self.scrape)


class MetricsMiddleware:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = self.metrics.clock.monotonic()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: object, ok: bool
    ) -> None:
        route = req.uri_template or "unmatched"
        status = str(resp.status_code)
        self.metrics.requests.labels(route, req.method, status).inc()
        started = getattr(req.context, "started", None)
        if started is not None:
            self.metrics.latency.labels(route, req.method).observe(self.metrics.clock.monotonic() - started)


class MetricsResource:
    auth = False

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = CONTENT_TYPE
        resp.data = self.metrics.render()
