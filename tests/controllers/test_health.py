"""HealthController: Instance reports → Deployment readiness → App Available, on a real store."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.health import HealthController
from forge.models import App, Deployment, DeploymentConfig, Instance
from forge.store.base import Store
from tests.controllers.conftest import condition_of, snapshot
from tests.controllers.release_helpers import get, report


@pytest.fixture
def ctl(store: Store, clock: FakeClock, config: Config) -> HealthController:
    return HealthController(store, clock, config)


@pytest.fixture
def live_app(store: Store, make_app: Callable[..., App], make_deployment: Callable[..., Deployment],
             make_instance: Callable[..., Instance]) -> App:
    """hello-1 live with two Instances, nothing reported yet."""
    app = make_app("hello")
    make_deployment(app, 1, manifest=True, phase="Live", config=DeploymentConfig(replicas=2))
    make_instance("hello-1", 0)
    make_instance("hello-1", 1)
    app.status.live_deployment = "hello-1"
    return store.update_status(app)  # type: ignore[return-value]


@pytest.mark.parametrize("reports,ready,replicas,dep_ready,available", [
    ([], 0, 2, "False", ("False", "NoReadyInstances")),
    ([("hello-1-0", "Running", True)], 1, 2, "False", ("True", "MinimumReplicasAvailable")),
    ([("hello-1-0", "Running", True), ("hello-1-1", "Running", True)], 2, 2, "True",
     ("True", "MinimumReplicasAvailable")),
    ([("hello-1-0", "Starting", True)], 0, 2, "False", ("False", "NoReadyInstances")),
    ([("hello-1-0", "Running", True), ("hello-1-1", "Lost", False)], 1, 1, "False",
     ("True", "MinimumReplicasAvailable")),
], ids=["none-ready", "one-ready", "all-ready", "ready-flag-but-starting", "one-lost"])
def test_readiness_rolls_up(ctl: HealthController, store: Store, live_app: App,
                            reports: list[tuple[str, str, bool]], ready: int, replicas: int,
                            dep_ready: str, available: tuple[str, str]) -> None:
    """readyReplicas counts Running+ready Instances; Ready needs all; Available needs one on the live release."""
    for name, phase, is_ready in reports:
        report(store, name, phase, ready=is_ready)
    ctl.reconcile("hello")
    dep, app = get(store, "Deployment", "hello-1"), get(store, "App", "hello")
    assert (dep.status.ready_replicas, dep.status.replicas) == (ready, replicas)
    assert condition_of(dep, "Ready").status == dep_ready
    cond = condition_of(app, "Available")
    assert (cond.status, cond.reason) == available
    before = snapshot(store)
    ctl.reconcile("hello")
    assert snapshot(store) == before


def test_transition_time_moves_only_with_status(ctl: HealthController, store: Store, clock: FakeClock,
                                                live_app: App) -> None:
    """Available's lastTransitionTime marks the flip, not every recount."""
    report(store, "hello-1-0", "Running", ready=True)
    ctl.reconcile("hello")
    t0 = condition_of(get(store, "App", "hello"), "Available").last_transition_time
    clock.advance(5)
    report(store, "hello-1-1", "Running", ready=True)
    ctl.reconcile("hello")
    cond = condition_of(get(store, "App", "hello"), "Available")
    assert cond.last_transition_time == t0 and cond.message.startswith("2/2")
    clock.advance(5)
    report(store, "hello-1-0", "Running", ready=False)
    report(store, "hello-1-1", "Running", ready=False)
    ctl.reconcile("hello")
    cond = condition_of(get(store, "App", "hello"), "Available")
    assert cond.status == "False" and cond.last_transition_time == clock.now_iso()


def test_only_the_live_release_counts_for_available(ctl: HealthController, store: Store, live_app: App,
                                                    make_deployment: Callable[..., Deployment],
                                                    make_instance: Callable[..., Instance]) -> None:
    """A ready Instance of a release that is not live does not make the App Available."""
    make_deployment("hello", 2, manifest=True, phase="Starting")
    make_instance("hello-2", 0, phase="Running", ready=True)
    ctl.reconcile("hello")
    assert condition_of(get(store, "App", "hello"), "Available").status == "False"
    assert get(store, "Deployment", "hello-2").status.ready_replicas == 1


def test_no_live_release(ctl: HealthController, store: Store, make_app: Callable[..., App]) -> None:
    """An App with nothing live is not Available, with a reason saying so."""
    make_app("hello")
    ctl.reconcile("hello")
    assert condition_of(get(store, "App", "hello"), "Available").reason == "NoLiveRelease"


def test_finished_release_is_not_ready(ctl: HealthController, store: Store, live_app: App,
                                       make_deployment: Callable[..., Deployment],
                                       make_instance: Callable[..., Instance]) -> None:
    """A superseded release still draining counts its processes but is never Ready."""
    make_deployment("hello", 0, manifest=True, phase="Superseded")
    make_instance("hello-0", 0, phase="Running", ready=True)
    ctl.reconcile("hello")
    dep = get(store, "Deployment", "hello-0")
    assert dep.status.ready_replicas == 1
    assert (condition_of(dep, "Ready").status, condition_of(dep, "Ready").reason) == ("False", "Superseded")


def test_deleted_app_still_updates_deployments(ctl: HealthController, store: Store, live_app: App) -> None:
    """With the App gone the key still reconciles its Deployments and touches no App."""
    store.delete("App", "hello")
    report(store, "hello-1-0", "Running", ready=True)
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-1").status.ready_replicas == 1
