"""RolloutController against a real SQLite store and a fake clock; the agent is simulated by
writing Instance status."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from forge.appmetrics import RequestSample
from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.health import HealthController
from forge.controllers.rollout import RolloutController, RolloutSettings
from forge.models import (
    App,
    Deployment,
    DeploymentConfig,
    ObjectMeta,
    Secret,
    SecretSpec,
    SecretStatus,
    Trigger,
    set_condition,
)
from forge.series import UsageSample
from forge.store.base import Store
from tests.controllers.conftest import condition_of, events_for, manifest_with, snapshot
from tests.controllers.release_helpers import Crash, CrashingStore, get, instances, report, serve_all


@pytest.fixture
def ctl(store: Store, clock: FakeClock, config: Config) -> RolloutController:
    return RolloutController(store, clock, config)


@pytest.fixture
def live_v1(ctl: RolloutController, store: Store, make_app: Callable[..., App],
            make_deployment: Callable[..., Deployment]) -> App:
    """App hello with release hello-1 promoted and serving."""
    app = make_app("hello")
    make_deployment(app, 1, manifest=True)
    ctl.reconcile("hello")
    serve_all(store, "hello-1")
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    return app


def assert_idempotent(ctl: RolloutController, store: Store, key: str = "hello") -> None:
    before = snapshot(store)
    ctl.reconcile(key)
    assert snapshot(store) == before


def test_first_deploy_goes_live(ctl: RolloutController, store: Store, make_app: Callable[..., App],
                                make_deployment: Callable[..., Deployment]) -> None:
    """A first release gets its Instances, goes Building → Starting → Live and becomes the App's live one."""
    make_app("hello", env={"GREETING": "hi"}, replicas=2)
    make_deployment("hello", 1, manifest=True)
    res = ctl.reconcile("hello")
    assert res is not None and res.requeue_after == pytest.approx(120.0 + 600.0)  # + build.timeout (10m)
    insts = instances(store, "hello-1")
    assert [i.metadata.name for i in insts] == ["hello-1-0", "hello-1-1"]
    assert insts[0].spec.env["GREETING"] == "hi" and insts[0].spec.desired == "Running"
    assert insts[0].metadata.owner_ref.name == "hello-1"  # type: ignore[union-attr]
    assert get(store, "Deployment", "hello-1").status.phase == "Building"
    assert condition_of(get(store, "App", "hello"), "Progressing").reason == "ReleaseProgressing"
    assert_idempotent(ctl, store)

    report(store, "hello-1-0", "Running", ready=True)
    report(store, "hello-1-1", "Starting")
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-1").status.phase == "Starting"
    assert get(store, "App", "hello").status.live_deployment is None

    report(store, "hello-1-1", "Running", ready=True)
    ctl.reconcile("hello")
    app, dep = get(store, "App", "hello"), get(store, "Deployment", "hello-1")
    assert (dep.status.phase, app.status.live_deployment) == ("Live", "hello-1")
    assert app.status.url == "http://hello.localhost:8000" and dep.status.live_time
    assert condition_of(app, "Progressing").reason == "ReleaseAvailable"
    [ev] = events_for(store, "hello-1", "Live")
    assert ev.spec.message == f"hello-1 is live (commit {dep.spec.commit[:7]})"
    assert_idempotent(ctl, store)
    HealthController(store, ctl.clock, ctl.config).reconcile("hello")  # Available is health's field
    assert condition_of(get(store, "App", "hello"), "Available").status == "True"


def test_blue_green_keeps_v1_until_v2_ready_then_drains(
    ctl: RolloutController, store: Store, clock: FakeClock, live_v1: App,
    make_deployment: Callable[..., Deployment],
) -> None:
    """v2 starts beside v1; only when v2 is ready does traffic move; v1 drains 10 s, then stops."""
    make_deployment("hello", 2, manifest=True)
    ctl.reconcile("hello")
    assert [i.metadata.name for i in instances(store, "hello-2")] == ["hello-2-0"]
    report(store, "hello-2-0", "Running", ready=False)
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert get(store, "Deployment", "hello-1").status.phase == "Live"

    report(store, "hello-2-0", "Running", ready=True)
    res = ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-2"
    v1 = get(store, "Deployment", "hello-1")
    assert (v1.status.phase, v1.status.reason) == ("Superseded", "Superseded") and v1.status.superseded_time
    assert instances(store, "hello-1")[0].spec.desired == "Running"  # still draining
    assert res is not None and res.requeue_after == pytest.approx(10.0)
    assert events_for(store, "hello-1", "Superseded")
    assert_idempotent(ctl, store)

    clock.advance(9.0)
    assert ctl.reconcile("hello").requeue_after == pytest.approx(1.0)  # type: ignore[union-attr]
    assert instances(store, "hello-1")[0].spec.desired == "Running"
    clock.advance(1.0)
    ctl.reconcile("hello")
    assert instances(store, "hello-1")[0].spec.desired == "Stopped"
    assert instances(store, "hello-2")[0].spec.desired == "Running"
    assert_idempotent(ctl, store)


def test_drain_period_is_configurable(store: Store, clock: FakeClock, config: Config, live_v1: App,
                                      make_deployment: Callable[..., Deployment]) -> None:
    """RolloutSettings.drain_seconds sets how long a superseded release keeps running."""
    ctl = RolloutController(store, clock, config, settings=RolloutSettings(drain_seconds=0.0))
    make_deployment("hello", 2, manifest=True)
    ctl.reconcile("hello")
    serve_all(store, "hello-2")
    ctl.reconcile("hello")
    ctl.reconcile("hello")
    assert instances(store, "hello-1")[0].spec.desired == "Stopped"


def test_newer_push_cancels_older_not_live(ctl: RolloutController, store: Store, live_v1: App,
                                           make_deployment: Callable[..., Deployment]) -> None:
    """A newer release Cancels older ones not yet live and stops their Instances; the live one stays."""
    make_deployment("hello", 2, manifest=True)
    ctl.reconcile("hello")
    report(store, "hello-2-0", "Building")
    make_deployment("hello", 3)  # no manifest yet: the source controller is still fetching
    ctl.reconcile("hello")
    v2, v3 = get(store, "Deployment", "hello-2"), get(store, "Deployment", "hello-3")
    assert (v2.status.phase, v2.status.reason) == ("Cancelled", "NewerRelease")
    assert "hello-3" in v2.status.message and v2.status.finished_time
    assert v3.status.phase == "Pending" and not instances(store, "hello-3")
    assert instances(store, "hello-2")[0].spec.desired == "Stopped"
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert get(store, "App", "hello").status.latest_deployment == "hello-3"
    assert events_for(store, "hello-2", "Cancelled")
    assert_idempotent(ctl, store)


@pytest.mark.parametrize(("manifest", "allowed"), [(True, 120.0 + 600.0), (None, 120.0)],
                         ids=["building", "no-manifest"])
def test_progress_deadline_fails_release(ctl: RolloutController, store: Store, clock: FakeClock, live_v1: App,
                                         make_deployment: Callable[..., Deployment], manifest: Any,
                                         allowed: float) -> None:
    """A release not ready 120 s after creation (plus its build's timeout, 10m by default, once
    its manifest is known) is Failed ProgressDeadlineExceeded; v1 keeps serving."""
    clock.advance(5)
    make_deployment("hello", 2, manifest=manifest)
    res = ctl.reconcile("hello")
    assert res is not None and res.requeue_after == pytest.approx(allowed)
    clock.advance(allowed - 0.5)
    assert ctl.reconcile("hello").requeue_after == pytest.approx(0.5)  # type: ignore[union-attr]
    clock.advance(0.5)
    ctl.reconcile("hello")
    v2 = get(store, "Deployment", "hello-2")
    assert (v2.status.phase, v2.status.reason) == ("Failed", "ProgressDeadlineExceeded")
    assert all(i.spec.desired == "Stopped" for i in instances(store, "hello-2"))
    app = get(store, "App", "hello")
    assert app.status.live_deployment == "hello-1"
    assert condition_of(app, "Progressing").status == "False"
    assert condition_of(app, "Progressing").reason == "ProgressDeadlineExceeded"
    assert events_for(store, "hello-2", "ProgressDeadlineExceeded")[0].spec.type == "Warning"
    assert get(store, "Deployment", "hello-1").status.phase == "Live"
    assert_idempotent(ctl, store)


@pytest.mark.parametrize(("phase", "words", "absent"), [
    ("Building", ["not ready within 1020s", "build was still running", "hello-2-0", "build.timeout is 900s",
                  "raise build.timeout in forge.yaml"], []),
    ("Starting", ["not ready within 1020s of its creation"], ["build"]),
], ids=["still-building", "starting"])
def test_progress_deadline_message_names_a_build_still_running(
        ctl: RolloutController, store: Store, clock: FakeClock, live_v1: App,
        make_deployment: Callable[..., Deployment], phase: str, words: list[str], absent: list[str]) -> None:
    """A release past its deadline while its build still runs says so and names build.timeout."""
    manifest = manifest_with(build={"commands": ["make"], "timeout": "15m"})
    make_deployment("hello", 2, manifest=manifest)
    ctl.reconcile("hello")
    report(store, "hello-2-0", phase)
    clock.advance(120 + 900 + 1)  # the deadline covers the build's own timeout
    ctl.reconcile("hello")
    msg = get(store, "Deployment", "hello-2").status.message
    for w in words:
        assert w in msg, msg
    for w in absent:
        assert w not in msg, msg
    assert_idempotent(ctl, store)


@pytest.mark.parametrize("phase,reason,replaced", [
    ("Lost", "", True),
    ("Failed", "Evicted", True),
    ("Failed", "CrashLoopBackOff", True),
    ("Running", "", False),
    ("Starting", "HealthCheckFailed", False),
], ids=["lost", "failed-other", "failed-crashloop-live", "running", "restarting"])
def test_live_instances_are_replaced(ctl: RolloutController, store: Store, live_v1: App,
                                     phase: str, reason: str, replaced: bool) -> None:
    """A live release's Instance lost with its node (or Failed) gets a replacement APP-N-I-r1."""
    report(store, "hello-1-0", phase, reason=reason)
    ctl.reconcile("hello")
    names = [(i.metadata.name, i.spec.desired) for i in instances(store, "hello-1")]
    if replaced:
        assert names == [("hello-1-0", "Stopped"), ("hello-1-0-r1", "Running")]
        assert get(store, "Instance", "hello-1-0-r1").spec.index == 0
    else:
        assert names == [("hello-1-0", "Running")]
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert_idempotent(ctl, store)


def test_replacements_are_capped(ctl: RolloutController, store: Store, live_v1: App) -> None:
    """A slot is replaced at most MAX_REPLACEMENTS times, so a node-killing release cannot spawn forever."""
    name = "hello-1-0"
    for k in range(1, 12):
        report(store, name, "Lost")
        ctl.reconcile("hello")
        name = f"hello-1-0-r{min(k, 10)}"
    assert len(instances(store, "hello-1")) == 11


def test_zero_replicas_promotes_without_instances(ctl: RolloutController, store: Store,
                                                  make_app: Callable[..., App],
                                                  make_deployment: Callable[..., Deployment]) -> None:
    """replicas: 0 is "scaled to zero": the release goes live at once with no Instances."""
    make_app("hello", replicas=0)
    make_deployment("hello", 1, manifest=True)
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-1").status.phase == "Live"
    assert not instances(store, "hello-1")
    HealthController(store, ctl.clock, ctl.config).reconcile("hello")  # Available is health's field
    assert condition_of(get(store, "App", "hello"), "Available").reason == "NoInstances"


@pytest.mark.parametrize("change,expect", [
    ({"env": {"A": "2"}}, {"env": {"A": "2"}, "replicas": 1}),
    ({"domains": ["www.example.com"]}, {"env": {"A": "1"}, "domains": ["www.example.com"]}),
], ids=["env", "domains"])
def test_config_change_creates_config_release(
    ctl: RolloutController, store: Store, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment], change: dict[str, Any], expect: dict[str, Any],
) -> None:
    """Editing the App's env/domains makes a new release of the live commit (trigger config)."""
    make_app("hello", env={"A": "1"})
    make_deployment("hello", 1, manifest=True, ref="refs/heads/main", config=DeploymentConfig(env={"A": "1"}))
    ctl.reconcile("hello")
    serve_all(store, "hello-1")
    ctl.reconcile("hello")
    assert_idempotent(ctl, store)  # no config drift while nothing changed
    app = get(store, "App", "hello")
    for k, v in change.items():
        setattr(app.spec, k, v)
    store.update(app)
    ctl.reconcile("hello")
    v1, v2 = get(store, "Deployment", "hello-1"), get(store, "Deployment", "hello-2")
    assert v2.spec.trigger.type == "config" and v2.spec.commit == v1.spec.commit
    assert v2.spec.ref == "refs/heads/main"
    got = v2.spec.config.dump()  # type: ignore[union-attr]
    assert {k: got.get(k) for k in expect} == expect
    assert events_for(store, "hello", "ConfigChanged")
    ctl.reconcile("hello")  # v2 has no manifest yet: it waits, and no third release appears
    assert [d.metadata.name for d in store.list("Deployment")[0]] == ["hello-1", "hello-2"]


def test_scale_changes_live_release_in_place(
    ctl: RolloutController, store: Store, clock: FakeClock, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
) -> None:
    """A scale adds or retires Instances of the live release (no new release); the Instances that
    stay are untouched, and a retired one leaves routing a drain before it is asked to stop."""
    make_app("hello", env={"A": "1"})
    make_deployment("hello", 1, manifest=True, config=DeploymentConfig(env={"A": "1"}))
    ctl.reconcile("hello")
    serve_all(store, "hello-1")
    ctl.reconcile("hello")
    first = get(store, "Instance", "hello-1-0")
    app = get(store, "App", "hello")
    app.spec.replicas = 3
    store.update(app)
    ctl.reconcile("hello")
    assert [d.metadata.name for d in store.list("Deployment")[0]] == ["hello-1"]
    assert sorted(i.metadata.name for i in instances(store, "hello-1")) == ["hello-1-0", "hello-1-1", "hello-1-2"]
    assert get(store, "Instance", "hello-1-0").spec == first.spec  # untouched: same record, same spec
    serve_all(store, "hello-1")
    ctl.reconcile("hello")
    assert_idempotent(ctl, store)
    app = get(store, "App", "hello")
    app.spec.replicas = 1
    store.update(app)
    ctl.reconcile("hello")
    gone = [get(store, "Instance", f"hello-1-{i}") for i in (1, 2)]
    assert all(i.spec.unrouted_time and i.spec.desired == "Running" for i in gone)
    app = get(store, "App", "hello")  # up to 2 again before the drain ended: hello-1-1 is routed again
    app.spec.replicas = 2
    store.update(app)
    ctl.reconcile("hello")
    assert get(store, "Instance", "hello-1-1").spec.unrouted_time is None
    assert get(store, "Instance", "hello-1-2").spec.unrouted_time is not None
    app = get(store, "App", "hello")
    app.spec.replicas = 1
    store.update(app)
    ctl.reconcile("hello")
    clock.advance(11)
    ctl.reconcile("hello")
    assert [get(store, "Instance", f"hello-1-{i}").spec.desired for i in (0, 1, 2)] == ["Running", "Stopped", "Stopped"]
    assert get(store, "Instance", "hello-1-0").spec == first.spec
    assert [d.metadata.name for d in store.list("Deployment")[0]] == ["hello-1"]
    assert get(store, "Deployment", "hello-1").status.applied_config.replicas == 1  # type: ignore[union-attr]


def test_secret_change_creates_config_release(ctl: RolloutController, store: Store, live_v1: App) -> None:
    """A new or changed Secret named like the App rolls out as a config release carrying it."""
    sec = store.create(Secret(metadata=ObjectMeta(name="hello"), spec=SecretSpec(app="hello", data={"K": "x"})))
    ctl.reconcile("hello")
    v2 = get(store, "Deployment", "hello-2")
    assert v2.spec.trigger.type == "config" and v2.spec.config.secrets_version
    v2.status.manifest = get(store, "Deployment", "hello-1").status.manifest
    store.update_status(v2)
    ctl.reconcile("hello")
    assert instances(store, "hello-2")[0].spec.secret == "hello"
    serve_all(store, "hello-2")
    ctl.reconcile("hello")
    assert_idempotent(ctl, store)
    sec.status.updated_time = "2030-01-01T00:00:00.000Z"  # the API's second step: not a new version
    sec = store.update_status(sec)
    assert_idempotent(ctl, store)
    sec.spec.data = {"K": "y"}
    sec = store.update(sec)
    ctl.reconcile("hello")
    v3 = get(store, "Deployment", "hello-3")
    assert v3.spec.config.secrets_version == f"{sec.metadata.uid[:8]}.{sec.metadata.generation}"
    assert v3.spec.config.secrets_version != v2.spec.config.secrets_version


def test_key_rotation_is_not_a_config_change(ctl: RolloutController, store: Store, live_v1: App) -> None:
    """Re-encrypted values with the same digest (a key rotation) release nothing; a new digest does."""
    sec = store.create(Secret(metadata=ObjectMeta(name="hello"), spec=SecretSpec(app="hello", data={"K": "ct1"}),
                              status=SecretStatus(keys=["K"], data_digest="hs256:one")))
    ctl.reconcile("hello")
    v2 = get(store, "Deployment", "hello-2")
    assert v2.spec.config.secrets_version == "hs256:one"  # type: ignore[union-attr]
    v2.status.manifest = get(store, "Deployment", "hello-1").status.manifest
    store.update_status(v2)
    ctl.reconcile("hello")
    serve_all(store, "hello-2")
    ctl.reconcile("hello")
    assert_idempotent(ctl, store)
    sec.spec.data = {"K": "ct2"}  # what rotate_all writes: new ciphertext, spec generation bumped
    sec = store.update(sec)
    assert_idempotent(ctl, store)
    assert [d.metadata.name for d in store.list("Deployment")[0]] == ["hello-1", "hello-2"]
    sec.status.data_digest = "hs256:two"
    store.update_status(sec)
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-3").spec.config.secrets_version == "hs256:two"  # type: ignore[union-attr]


def test_app_deleted_stops_then_deletes_everything(ctl: RolloutController, store: Store, live_v1: App,
                                                   clock: FakeClock) -> None:
    """Deleting the App stops its Instances, then deletes them, its Deployments, its shipped
    log lines and its metrics points once stopped (another app's stay)."""
    store.append_logs("hello-1-0", "hello", "hello-1", "app", [(0, "2026-01-01T00:00:00Z", "secret")])
    store.append_logs("other-1-0", "other", "other-1", "app", [(0, "2026-01-01T00:00:00Z", "kept")])
    now = int(clock.now()) // 10 * 10
    for app_name in ("hello", "other"):
        store.add_requests("proxy/p", app_name, [RequestSample(app_name, f"{app_name}-1", now, {"2xx": 1}, [1] + [0] * 11)])
        store.add_usage("node/n", app_name, [(app_name, UsageSample(f"{app_name}-1-0", now, 0.1, 1 << 20))])
    store.delete("App", "hello")
    ctl.reconcile("hello")
    assert instances(store, "hello-1")[0].spec.desired == "Stopped"
    assert store.list("Deployment")[0]
    assert store.read_logs("hello"), "lines stay while an Instance may still ship"
    report(store, "hello-1-0", "Stopped")
    ctl.reconcile("hello")
    assert not store.list("Instance")[0] and not store.list("Deployment")[0]
    assert store.read_logs("hello") == [] and [ln.line for ln in store.read_logs("other")] == ["kept"]
    assert store.read_requests("hello", 10, 0, now) == [] and store.read_usage("hello", 300, 0, now) == []
    assert len(store.read_requests("other", 10, 0, now)) == 1 and len(store.read_usage("other", 300, 0, now)) == 1
    assert_idempotent(ctl, store)


def test_rolled_back_release_is_failed_when_replaced(ctl: RolloutController, store: Store, live_v1: App,
                                                    make_deployment: Callable[..., Deployment]) -> None:
    """A live release marked RolledBack ends Failed (not Superseded) when the rollback goes live."""
    v1 = get(store, "Deployment", "hello-1")
    set_condition(v1.status, "RolledBack", "True", "RolledBack", "rolled back to hello-0", "2027-01-01T00:00:00Z")
    store.update_status(v1)  # rollback's verdict, as its own condition
    make_deployment("hello", 2, manifest=True, trigger={"type": "rollback"}, rollback_of="hello-0")
    ctl.reconcile("hello")
    serve_all(store, "hello-2")
    ctl.reconcile("hello")
    v1 = get(store, "Deployment", "hello-1")
    assert (v1.status.phase, v1.status.reason) == ("Failed", "RolledBack")
    assert instances(store, "hello-1")[0].spec.desired == "Stopped"  # no drain for a broken release


@pytest.mark.parametrize("after", range(0, 6), ids=lambda n: f"crash-after-{n}-writes")
def test_crash_during_promotion_converges(store: Store, clock: FakeClock, config: Config, live_v1: App,
                                          make_deployment: Callable[..., Deployment], after: int) -> None:
    """Dying after any number of writes during a promotion, then reconciling again, ends in the same state."""
    make_deployment("hello", 2, manifest=True)
    RolloutController(store, clock, config).reconcile("hello")
    serve_all(store, "hello-2")
    crashing = RolloutController(CrashingStore(store, after), clock, config)  # type: ignore[arg-type]
    try:
        crashing.reconcile("hello")
    except Crash:
        pass
    ctl = RolloutController(store, clock, config)
    ctl.reconcile("hello")
    app, v1, v2 = get(store, "App", "hello"), get(store, "Deployment", "hello-1"), get(store, "Deployment", "hello-2")
    assert (app.status.live_deployment, v2.status.phase, v1.status.phase) == ("hello-2", "Live", "Superseded")
    assert_idempotent(ctl, store)
    clock.advance(10)
    ctl.reconcile("hello")
    assert instances(store, "hello-1")[0].spec.desired == "Stopped"


@pytest.mark.parametrize("after", range(0, 3), ids=lambda n: f"crash-after-{n}-writes")
def test_crash_during_node_loss_replacement_converges(store: Store, clock: FakeClock, config: Config,
                                                      live_v1: App, after: int) -> None:
    """A crash between creating a replacement and stopping the lost Instance leaves exactly one replacement."""
    report(store, "hello-1-0", "Lost")
    try:
        RolloutController(CrashingStore(store, after), clock, config).reconcile("hello")  # type: ignore[arg-type]
    except Crash:
        pass
    ctl = RolloutController(store, clock, config)
    ctl.reconcile("hello")
    names = [(i.metadata.name, i.spec.desired) for i in instances(store, "hello-1")]
    assert names == [("hello-1-0", "Stopped"), ("hello-1-0-r1", "Running")]
    assert_idempotent(ctl, store)


def test_release_failed_during_its_promotion_is_switched_back(
    ctl: RolloutController, store: Store, live_v1: App, make_deployment: Callable[..., Deployment],
) -> None:
    """If rollback fails a release in the instant rollout switched traffic to it, rollout switches back."""
    make_deployment("hello", 2, manifest=True)
    ctl.reconcile("hello")
    app = get(store, "App", "hello")
    app.status.live_deployment = "hello-2"  # rollout's first write of a promotion …
    store.update_status(app)
    v2 = get(store, "Deployment", "hello-2")  # … raced by rollback failing the release
    v2.status.phase, v2.status.reason = "Failed", "CrashLoopBackOff"
    store.update_status(v2)
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert get(store, "Deployment", "hello-1").status.phase == "Live"
    assert get(store, "Deployment", "hello-2").status.phase == "Failed"
    assert instances(store, "hello-2")[0].spec.desired == "Stopped"
    assert_idempotent(ctl, store)


def test_promotion_waits_for_min_ready(ctl: RolloutController, store: Store, clock: FakeClock, live_v1: App,
                                       make_deployment: Callable[..., Deployment]) -> None:
    """A ready release is promoted only once every Instance has stayed ready for health.min_ready."""
    make_deployment("hello", 2, manifest=manifest_with(health={"min_ready": "10s"}))
    ctl.reconcile("hello")
    report(store, "hello-2-0", "Running", ready=True, ready_time=clock.now_iso())
    res = ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert res is not None and res.requeue_after == pytest.approx(10.0)
    assert get(store, "Deployment", "hello-2").status.phase == "Starting"
    clock.advance(9.5)
    assert ctl.reconcile("hello").requeue_after == pytest.approx(0.5)  # type: ignore[union-attr]
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    clock.advance(0.5)
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-2"


def test_restart_inside_min_ready_fails_the_release(ctl: RolloutController, store: Store, clock: FakeClock,
                                                    live_v1: App, make_deployment: Callable[..., Deployment],
                                                    config: Config) -> None:
    """The process dies 5 s after its first good probe and comes back ready: the release fails
    (CrashLoopBackOff) and never takes traffic; v1 keeps serving."""
    from forge.controllers.rollback import RollbackController

    rb = RollbackController(store, clock, config)
    make_deployment("hello", 2, manifest=manifest_with(health={"min_ready": "10s"}))
    ctl.reconcile("hello")
    report(store, "hello-2-0", "Running", ready=True, ready_time=clock.now_iso())
    ctl.reconcile("hello")
    clock.advance(5)
    report(store, "hello-2-0", "Running", ready=True, ready_time=clock.now_iso(), restarts=1)
    rb.reconcile("hello")
    ctl.reconcile("hello")
    v2 = get(store, "Deployment", "hello-2")
    assert (v2.status.phase, v2.status.reason) == ("Failed", "CrashLoopBackOff")
    assert "restarted 1 time(s) before the release went live" in v2.status.message
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert instances(store, "hello-2")[0].spec.desired == "Stopped"
    clock.advance(60)
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"


def test_unordered_push_never_cancels_and_a_stale_one_lets_the_older_release_go_on(
    ctl: RolloutController, store: Store, live_v1: App, make_deployment: Callable[..., Deployment],
) -> None:
    """A newer push the source controller has not ordered yet (no manifest) cancels nothing; once
    it is found stale (Cancelled StalePush) the release it would have replaced goes on to Live."""
    make_deployment("hello", 2, manifest=True, trigger=Trigger(type="webhook", delivery_id="b"))
    ctl.reconcile("hello")
    make_deployment("hello", 3, trigger=Trigger(type="webhook", delivery_id="a-late"))
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-2").status.phase not in ("Cancelled", "Failed")
    late = get(store, "Deployment", "hello-3")
    late.status.phase, late.status.reason = "Cancelled", "StalePush"
    store.update_status(late)
    ctl.reconcile("hello")
    assert instances(store, "hello-2")
    serve_all(store, "hello-2")
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-2").status.phase in ("Starting", "Live")


@pytest.mark.parametrize(("trigger", "same_commit", "build"), [
    (Trigger(type="config"), True, "hello-1"),
    (Trigger(type="rollback"), True, "hello-1"),
    (Trigger(type="webhook", delivery_id="again"), True, "hello-1"),
    (Trigger(type="api", force=True), True, "hello-2"),
    (Trigger(type="webhook", delivery_id="new"), False, "hello-2"),
], ids=["config", "rollback", "push-of-same-commit", "deploy-force", "new-commit"])
def test_release_reuses_the_build_of_the_same_commit(
    ctl: RolloutController, store: Store, live_v1: App, make_deployment: Callable[..., Deployment],
    trigger: Trigger, same_commit: bool, build: str,
) -> None:
    """A release of a commit (and build inputs) that already went live runs that build: its
    Instances name it, so a node that has it starts them without a fetch or a build."""
    commit = get(store, "Deployment", "hello-1").spec.commit if same_commit else "e" * 40
    make_deployment("hello", 2, commit=commit, manifest=True, trigger=trigger)
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-2").status.build == build
    assert {i.spec.build for i in instances(store, "hello-2")} == {build}
