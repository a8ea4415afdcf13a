"""The API's /metrics: seed names with the right types, monotonic counters from the tally, promtool-clean."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge.api.metrics import histogram_buckets
from forge.clock import FakeClock, iso
from forge.controllers.tally import TallyController
from forge.models import (
    LABEL_APP,
    LABEL_DEPLOYMENT,
    Deployment,
    DeploymentSpec,
    Instance,
    InstanceSpec,
    Node,
    ObjectMeta,
    set_condition,
)
from tests.api.conftest import COMMIT1, COMMIT2, Api, app_body, make_api
from tests.metrics_helpers import Exposition, assert_promtool_clean, needs_promtool, parse_exposition

T0 = 1_900_000_000.0


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = make_api(tmp_path)
    yield a
    a.store.close()


def add_deployment(api: Api, n: int, commit: str, created: float) -> None:
    d = api.store.create(Deployment(
        metadata=ObjectMeta(name=f"hello-{n}", labels={LABEL_APP: "hello"}),
        spec=DeploymentSpec(app="hello", repo="acme/hello", commit=commit),
    ))
    d.status.created_time = iso(created)
    api.store.update_status(d)


def add_instance(api: Api, deployment: str, commit: str) -> None:
    api.store.create(Instance(
        metadata=ObjectMeta(name=f"{deployment}-0", labels={LABEL_APP: "hello", LABEL_DEPLOYMENT: deployment}),
        spec=InstanceSpec(app="hello", deployment=deployment, repo="acme/hello", commit=commit),
    ))


def set_status(api: Api, kind: str, name: str, **fields: Any) -> None:
    obj = api.store.get(kind, name)
    for k, v in fields.items():
        setattr(obj.status, k, v)
    api.store.update_status(obj)


def tally_and_scrape(api: Api, keys: list[str]) -> tuple[str, Exposition]:
    """Run the tally controller over every key (as its watch would), then scrape /metrics."""
    tally = TallyController(api.store, FakeClock(T0), api.config)
    for key in sorted(set(tally.all_keys()) | set(keys)):
        tally.reconcile(key)
    r = api.req("GET", "/metrics", token=None)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return r.text, parse_exposition(r.text)


def monotonic_samples(exp: Exposition) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples that must never decrease: the store counters and the deploy-duration histogram."""
    names = ("forge_deployments_total", "forge_tasks_total", "forge_deploy_duration_seconds_bucket",
             "forge_deploy_duration_seconds_count", "forge_deploy_duration_seconds_sum")
    return {k: v for k, v in exp.samples.items() if k[0] in names}


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    """A value equal to a bound falls in that bucket; every bucket counts all values below it; +Inf counts all."""
    got = dict(histogram_buckets([0.5, 2.0, 2.0, 45.0, 900.0], (1, 2, 60)))
    assert got == {"1.0": 1.0, "2.0": 3.0, "60.0": 4.0, "+Inf": 5.0}


@needs_promtool
def test_api_metrics_pass_promtool_and_counters_never_decrease(api: Api) -> None:
    """Seed names and types are exposed, promtool finds nothing, and counters survive Superseded and deletion."""
    api.create("apps", app_body())
    node = api.store.create(Node(metadata=ObjectMeta(name="n1")))
    set_condition(node.status, "Ready", "True", "NodeReady", "", iso(T0))
    api.store.update_status(node)
    api.req("GET", "/api/v1/apps/hello")
    api.req("POST", "/api/v1/webhook/github", token=None, json={})  # refused: counted under an outcome

    add_deployment(api, 1, COMMIT1, T0)
    add_instance(api, "hello-1", COMMIT1)
    set_status(api, "Deployment", "hello-1", phase="Building")
    set_status(api, "Instance", "hello-1-0", phase="Running", ready=True)
    scrapes = [tally_and_scrape(api, [])]

    set_status(api, "Deployment", "hello-1", phase="Live", live_time=iso(T0 + 45))
    scrapes.append(tally_and_scrape(api, []))

    add_deployment(api, 2, COMMIT2, T0 + 90)
    add_instance(api, "hello-2", COMMIT2)
    set_status(api, "Instance", "hello-2-0", phase="Running", ready=True)
    set_status(api, "Deployment", "hello-2", phase="Live", live_time=iso(T0 + 100))
    set_status(api, "Deployment", "hello-1", phase="Superseded", superseded_time=iso(T0 + 100))
    set_status(api, "Instance", "hello-1-0", phase="Stopped", ready=False)
    scrapes.append(tally_and_scrape(api, []))

    api.store.delete("Instance", "hello-1-0")
    api.store.delete("Deployment", "hello-1")  # what the gc does to old releases
    scrapes.append(tally_and_scrape(api, ["Deployment/hello-1", "Instance/hello-1-0"]))

    for text, exp in scrapes:
        assert_promtool_clean(text)
        assert exp.types["forge_deployments_total"] == "counter"
        assert exp.types["forge_tasks_total"] == "counter"
        assert exp.types["forge_agents_online"] == "gauge"
        assert exp.types["forge_deploy_duration_seconds"] == "histogram"
        assert exp.types["forge_webhook_deliveries_total"] == "counter"
        assert exp.types["forge_api_requests_total"] == "counter"
        assert exp.value("forge_agents_online") == 1.0
    for (_, before), (_, after) in zip(scrapes, scrapes[1:], strict=False):
        old, new = monotonic_samples(before), monotonic_samples(after)
        assert set(old) <= set(new)
        assert [k for k in old if new[k] < old[k]] == []

    last = scrapes[-1][1]
    deployments = last.by_label("forge_deployments_total", "status")
    assert {k: v for k, v in deployments.items() if v} == {"Pending": 2, "Building": 1, "Live": 2, "Superseded": 1}
    assert set(deployments) >= {"Pending", "Building", "Starting", "Live", "Superseded", "Failed", "Cancelled"}
    tasks = last.by_label("forge_tasks_total", "status")
    assert {k: v for k, v in tasks.items() if v} == {"Pending": 2, "Running": 2, "Stopped": 1}
    assert monotonic_samples(last) == monotonic_samples(scrapes[-2][1])  # deleting records takes nothing away
    assert last.value("forge_deploy_duration_seconds_count") == 2.0
    assert last.value("forge_deploy_duration_seconds_sum") == 55.0
    assert last.value("forge_deploy_duration_seconds_bucket", le="10.0") == 1.0
    assert last.value("forge_deploy_duration_seconds_bucket", le="30.0") == 1.0
    assert last.value("forge_deploy_duration_seconds_bucket", le="60.0") == 2.0
    assert last.value("forge_deploy_duration_seconds_bucket", le="+Inf") == 2.0
    outcomes = last.by_label("forge_webhook_deliveries_total", "outcome")
    assert sum(outcomes.values()) == 1.0
