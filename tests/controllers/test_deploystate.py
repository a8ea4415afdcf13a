"""The pure release decisions shared by rollout, rollback and health: records in, facts out."""

from __future__ import annotations

from typing import Any

import pytest

from forge.controllers import deploystate as ds
from forge.controllers.rollout import RolloutSettings, plan_rollout, plan_teardown, rollout_phase
from forge.manifest import parse_manifest
from forge.models import (
    App,
    AppSpec,
    AppStatus,
    Deployment,
    DeploymentConfig,
    DeploymentSpec,
    DeploymentStatus,
    Instance,
    InstanceSpec,
    InstanceStatus,
    ObjectMeta,
    Secret,
    SecretSpec,
    SecretStatus,
)

NOW = 1_800_000_000.0
C = "a" * 40
MANIFEST = parse_manifest("""
run: {command: x}
resources: {memory: 128M, cpu: 0.25, pids: 64}
env: {A: repo, B: repo}
health: {min_ready: 0s}
""")


def app(live: str | None = None, **spec: Any) -> App:
    spec.setdefault("repo", "acme/hello")
    return App(metadata=ObjectMeta(name="hello", generation=1), spec=AppSpec(**spec),
               status=AppStatus(live_deployment=live))


def dep(n: int, phase: str = "", manifest: bool = True, **status: Any) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=f"hello-{n}", generation=1),
        spec=DeploymentSpec(app="hello", commit=C, repo="acme/hello"),
        status=DeploymentStatus(phase=phase, manifest=MANIFEST if manifest else None,
                                created_time="2027-01-15T08:00:00.000Z", **status),
    )


def inst(name: str, phase: str = "", ready: bool = False, reason: str = "", desired: str = "Running") -> Instance:
    dep_name = "-".join(name.split("-")[:2])
    index = int(name.split("-")[2])
    return Instance(
        metadata=ObjectMeta(name=name),
        spec=InstanceSpec(app="hello", deployment=dep_name, index=index, desired=desired,  # type: ignore[arg-type]
                          repo="acme/hello", commit=C),
        status=InstanceStatus(phase=phase, ready=ready, reason=reason),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("name,k", [("hello-3-0", 0), ("hello-3-1-r2", 2), ("my-app-3-0-r10", 10)],
                         ids=["first", "second-replacement", "dashed-app"])
def test_replacement_number(name: str, k: int) -> None:
    """Instance names carry their replacement count as -rK."""
    assert ds.replacement_of(inst("hello-3-0").model_copy(update={"metadata": ObjectMeta(name=name)})) == k


def test_current_by_slot_takes_newest_incarnation() -> None:
    """The newest -rK of each replica index is the current one."""
    items = [inst("hello-3-0"), inst("hello-3-0-r1"), inst("hello-3-1"), inst("hello-4-0")]
    cur = ds.current_by_slot("hello-3", items)
    assert {i: x.metadata.name for i, x in cur.items()} == {("web", 0): "hello-3-0-r1", ("web", 1): "hello-3-1"}


@pytest.mark.parametrize("phase,reason,ready,failing", [
    ("Failed", "BuildFailed", False, True),
    ("Building", "BuildFailed", False, False),
    ("Starting", "HealthCheckFailed", False, True),
    ("Running", "CrashLoopBackOff", False, True),
    ("Running", "OOMKilled", False, True),
    ("Running", "HealthCheckFailed", True, False),
    ("Failed", "Evicted", False, False),
    ("Lost", "", False, False),
], ids=["build-failed", "build-failed-not-final", "health", "crashloop", "oom", "recovered", "other", "lost"])
def test_is_failing(phase: str, reason: str, ready: bool, failing: bool) -> None:
    """Only release-fatal reasons on a not-ready Instance count as the release failing."""
    assert ds.is_failing(inst("hello-1-0", phase, ready, reason)) is failing


@pytest.mark.parametrize("phase,reason,desired,live,replace", [
    ("Lost", "", "Running", False, True),
    ("Lost", "", "Stopped", True, False),
    ("Failed", "Evicted", "Running", False, True),
    ("Failed", "BuildFailed", "Running", False, False),
    ("Failed", "CrashLoopBackOff", "Running", True, True),
    ("Running", "", "Running", True, False),
], ids=["lost", "lost-but-stopping", "failed-other", "failed-fatal-not-live", "failed-live", "running"])
def test_needs_replacement(phase: str, reason: str, desired: str, live: bool, replace: bool) -> None:
    """Lost is always replaced; a fatal failure of a release not yet live fails it instead."""
    assert ds.needs_replacement(inst("hello-1-0", phase, reason=reason, desired=desired), live) is replace


@pytest.mark.parametrize("items,health", [
    ([inst("hello-1-0", "Running", True), inst("hello-1-1", "Running")], "True"),
    ([inst("hello-1-0", "Running"), inst("hello-1-1", "Lost")], "False"),
    ([inst("hello-1-0", "Lost"), inst("hello-1-1", "Building")], "Unknown"),
    ([inst("hello-1-0", "Failed", reason="CrashLoopBackOff")], "False"),
    ([inst("hello-1-0", "Running"), inst("hello-1-0-r1", "Scheduled")], "Unknown"),
    ([], "Unknown"),
], ids=["one-ready", "none-ready", "infra-only", "crashed", "replaced-slot", "empty"])
def test_health_of(items: list[Instance], health: str) -> None:
    """Healthy is False only when nothing is ready and something runs the release and fails."""
    assert ds.health_of("hello-1", items) == health


@pytest.mark.parametrize("tls,listen,url", [
    ("off", "127.0.0.1:8000", "http://hello.example.com:8000"),
    ("off", "0.0.0.0:80", "http://hello.example.com"),
    ("internal", "127.0.0.1:8443", "https://hello.example.com:8443"),
    ("on-demand", "0.0.0.0:443", "https://hello.example.com"),
], ids=["dev", "port-80", "internal-tls", "production"])
def test_app_url(tls: str, listen: str, url: str) -> None:
    """https only when TLS is on; the port shows only when it is not the scheme's default."""
    assert ds.app_url("hello", "example.com", tls, listen) == url


def test_instance_spec_merges_env_and_resources() -> None:
    """The App's config env wins over the manifest's env; resources come from the manifest."""
    secret = Secret(metadata=ObjectMeta(name="hello"), spec=SecretSpec(app="hello"))
    spec = ds.instance_spec(app(), dep(1), DeploymentConfig(env={"B": "app"}), secret, 1)
    assert spec.env == {"A": "repo", "B": "app"}
    assert (spec.resources.memory, spec.resources.cpu, spec.resources.pids) == (128 * 2**20, 0.25, 64)
    assert (spec.secret, spec.index, spec.commit, spec.desired) == ("hello", 1, C, "Running")
    bare = dep(2).model_copy(update={"status": DeploymentStatus(manifest=parse_manifest("run: {command: x}"))})
    spec = ds.instance_spec(app(), bare, DeploymentConfig(), None, 0)
    assert (spec.resources.memory, spec.resources.cpu, spec.secret) == (256 * 2**20, 0.5, None)
    pr = dep(3).model_copy(update={"spec": dep(3).spec.model_copy(update={"ref": "refs/pull/7/head"})})
    assert ds.instance_spec(app(), pr, DeploymentConfig(), None, 0).ref == "refs/pull/7/head", "fetched by its ref"


def test_node_selector_is_config() -> None:
    """The App's nodeSelector reaches the Instance spec, and changing it is a config change."""
    a = app(node_selector={"disk": "ssd"})
    cfg = ds.app_config(a, None)
    assert ds.instance_spec(a, dep(1), cfg, None, 0).node_selector == {"disk": "ssd"}
    assert not ds.same_config(cfg, ds.app_config(app(), None))


@pytest.mark.parametrize("secret,version", [
    (None, None),
    (Secret(metadata=ObjectMeta(name="hello", uid="0123456789", generation=3), spec=SecretSpec(app="hello")),
     "01234567.3"),
    (Secret(metadata=ObjectMeta(name="hello", uid="0123456789", generation=3), spec=SecretSpec(app="hello"),
            status=SecretStatus(updated_time="2027-01-01T00:00:00.000Z")), "01234567.3"),
    (Secret(metadata=ObjectMeta(name="hello", uid="0123456789", generation=7), spec=SecretSpec(app="hello"),
            status=SecretStatus(data_digest="hs256:abc")), "hs256:abc"),
], ids=["none", "generation", "status-ignored", "digest-wins"])
def test_secret_version(secret: Secret | None, version: str | None) -> None:
    """A Secret's version is the API's digest of its values, else its uid and spec generation."""
    assert ds.secret_version(secret) == version


def test_last_good_skips_failed_and_rolled_back() -> None:
    """The rollback target went live and was superseded cleanly; never a rolled-back one."""
    deps = [dep(1, "Superseded", live_time="t"), dep(2, "Failed"), dep(3, "Failed", live_time="t", reason="RolledBack"),
            dep(4, "Superseded", reason="RolledBack", live_time="t"), dep(5, "Live", live_time="t")]
    deps[0].spec.commit = "1" * 40  # a different commit from the live one
    assert ds.last_good_before(deps[-1], deps).metadata.name == "hello-1"  # type: ignore[union-attr]
    assert ds.last_good_before(deps[0], deps) is None


def test_rollback_target_differs_in_commit_or_config() -> None:
    """The default rollback target skips releases with the live one's commit and config."""
    deps = [dep(1, "Superseded", live_time="t"), dep(2, "Superseded", live_time="t"),
            dep(3, "Superseded", live_time="t"), dep(4, "Live", live_time="t")]
    deps[0].spec.commit = "1" * 40
    for d in deps:
        d.status.applied_config = DeploymentConfig(env={"A": "1"})
    assert ds.last_good_before(deps[-1], deps).metadata.name == "hello-1"  # type: ignore[union-attr]
    deps[1].status.applied_config = DeploymentConfig(env={"A": "2"})  # same commit, other config
    assert ds.last_good_before(deps[-1], deps).metadata.name == "hello-2"  # type: ignore[union-attr]


@pytest.mark.parametrize("current,slots,replicas,phase", [
    ("Pending", {}, 2, "Building"),
    ("Pending", {0: inst("hello-1-0", "Running"), 1: inst("hello-1-1", "Scheduled")}, 2, "Building"),
    ("Building", {0: inst("hello-1-0", "Starting")}, 1, "Starting"),
    ("Starting", {0: inst("hello-1-0-r1", "Building")}, 1, "Starting"),
], ids=["no-instances", "one-building", "all-started", "never-backwards"])
def test_rollout_phase(current: str, slots: dict[int, Instance], replicas: int, phase: str) -> None:
    """Building while any replica is not a process yet, then Starting; phases never move back."""
    assert rollout_phase(current, slots, replicas) == phase


def test_plan_promotes_and_supersedes() -> None:
    """All replicas ready: the App's live release switches, the old one is superseded, drain is scheduled."""
    a = app(live="hello-1")
    deps = [dep(1, "Live", live_time="t"), dep(2, "Starting")]
    items = [inst("hello-1-0", "Running", True), inst("hello-2-0", "Running", True)]
    plan = plan_rollout(a, deps, items, None, NOW, RolloutSettings(), "http://hello.localhost")
    assert plan.app_status is not None and plan.app_status.live_deployment == "hello-2"
    assert plan.deployments["hello-2"].phase == "Live" and plan.deployments["hello-1"].phase == "Superseded"
    assert plan.stop == [] and plan.create == [] and plan.requeue_after == pytest.approx(10.0)
    assert [n.reason for n in plan.notes["hello-2"]] == ["Live"]


def test_plan_waits_for_every_replica() -> None:
    """One of two replicas ready is not enough to take traffic."""
    a = app(live="hello-1", replicas=2)
    deps = [dep(1, "Live", live_time="t"), dep(2, "Starting")]
    items = [inst("hello-2-0", "Running", True), inst("hello-2-1", "Running")]
    plan = plan_rollout(a, deps, items, None, NOW, RolloutSettings(), "u")
    assert plan.app_status is None or plan.app_status.live_deployment == "hello-1"
    assert "hello-2" not in plan.deployments or plan.deployments["hello-2"].phase == "Starting"


def test_plan_teardown() -> None:
    """A deleted App's running Instances stop; stopped or never-placed ones go, then empty Deployments."""
    deps = [dep(1), dep(2)]
    items = [inst("hello-1-0", "Running"), inst("hello-2-0", "Stopped", desired="Stopped"),
             inst("hello-2-1", "", desired="Stopped")]
    stop, gone, dead = plan_teardown(deps, items)
    assert (stop, gone, dead) == (["hello-1-0"], ["hello-2-0", "hello-2-1"], ["hello-2"])
