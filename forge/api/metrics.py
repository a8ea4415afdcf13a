"""Prometheus metrics of the API process.

Each ``create_app`` owns its CollectorRegistry (no module-level singletons). Under gunicorn
every worker has its own registry, so request counters are per worker process: a scrape sees
the worker that answered it. The store gauges are computed from the store at scrape time, so
they are the same whichever worker answers.
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator

import falcon
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from forge.clock import Clock
from forge.errors import ForgeError
from forge.store.base import Store

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StoreCollector(Collector):
    """``forge_deployments_total{status}``, ``forge_tasks_total{status}``, ``forge_agents_online``."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        try:
            deps, _ = self.store.list("Deployment")
            insts, _ = self.store.list("Instance")
            nodes, _ = self.store.list("Node")
        except ForgeError as exc:
            log.warning("metrics: cannot read the store: %s", exc.message)
            return
        for name, doc, items in (
            ("forge_deployments_total", "Deployments by phase", deps),
            ("forge_tasks_total", "Instances (tasks) by phase", insts),
        ):
            fam = GaugeMetricFamily(name, doc, labels=["status"])
            for phase, n in sorted(Tally(o.status.phase or "Pending" for o in items).items()):
                fam.add_metric([phase], n)
            yield fam
        online = sum(1 for n in nodes if n.status.is_true("Ready"))
        yield GaugeMetricFamily("forge_agents_online", "Nodes whose Ready condition is True", value=online)


class Metrics:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        self.requests = Counter(
            "forge_api_requests", "API requests by route template, method and status",
            ["route", "method", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "forge_api_request_duration_seconds", "API request latency until the response starts",
            ["route", "method"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.registry.register(StoreCollector(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = self.metrics.clock.monotonic()

    def process_response(self, req: falcon.Request, resp: falcon.Response, resource: object, ok: bool) -> None:
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
