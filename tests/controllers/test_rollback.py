"""RollbackController with the RolloutController beside it (they meet only in the store),
a real SQLite store, a fake clock and the agent simulated through Instance status."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.health import HealthController
from forge.controllers.rollback import RollbackController, RollbackSettings
from forge.controllers.rollout import RolloutController
from forge.models import App, Deployment
from forge.store.base import Store
from tests.controllers.conftest import condition_of, events_for, snapshot
from tests.controllers.release_helpers import Crash, CrashingStore, get, instances, report, serve_all


@pytest.fixture
def rollout(store: Store, clock: FakeClock, config: Config) -> RolloutController:
    return RolloutController(store, clock, config)


@pytest.fixture
def ctl(store: Store, clock: FakeClock, config: Config) -> RollbackController:
    return RollbackController(store, clock, config)


@pytest.fixture
def release(rollout: RolloutController, store: Store, clock: FakeClock,
            make_deployment: Callable[..., Deployment]) -> Callable[[int], None]:
    """``release(n)``: push hello-n, serve it, promote it and let the previous one drain away."""

    def go(n: int) -> None:
        make_deployment("hello", n, manifest=True)
        rollout.reconcile("hello")
        serve_all(store, f"hello-{n}")
        rollout.reconcile("hello")
        clock.advance(10)
        rollout.reconcile("hello")
        assert get(store, "App", "hello").status.live_deployment == f"hello-{n}"

    return go


def assert_idempotent(ctl: RollbackController, store: Store) -> None:
    before = snapshot(store)
    ctl.reconcile("hello")
    assert snapshot(store) == before


@pytest.mark.parametrize("phase,reason", [
    ("Failed", "BuildFailed"),
    ("Starting", "HealthCheckFailed"),
    ("Running", "CrashLoopBackOff"),
    ("Starting", "OOMKilled"),
], ids=["build-failed", "health-check-failed", "crash-loop", "oom-killed"])
def test_failing_new_release_fails_and_v1_keeps_serving(
    ctl: RollbackController, rollout: RolloutController, store: Store, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment], release: Callable[[int], None], phase: str, reason: str,
) -> None:
    """An Instance reporting a release-fatal reason fails the release, stops it, and v1 stays live."""
    make_app("hello", replicas=2)
    release(1)
    make_deployment("hello", 2, manifest=True)
    rollout.reconcile("hello")
    report(store, "hello-2-0", "Running", ready=True)
    report(store, "hello-2-1", phase, reason=reason, message="exit status 1 at step 2")
    ctl.reconcile("hello")
    assert condition_of(get(store, "Deployment", "hello-2"), "Failing").reason == reason  # type: ignore[union-attr]
    rollout.reconcile("hello")  # the phase's one writer ends it on rollback's verdict
    v2 = get(store, "Deployment", "hello-2")
    assert (v2.status.phase, v2.status.reason) == ("Failed", reason)
    assert v2.status.message == "instance hello-2-1: exit status 1 at step 2"
    assert [i.spec.desired for i in instances(store, "hello-2")] == ["Stopped", "Stopped"]
    [ev] = events_for(store, "hello-2", reason)
    assert ev.spec.type == "Warning" and "hello-1 keeps serving" in ev.spec.message
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert_idempotent(ctl, store)
    rollout.reconcile("hello")  # rollout agrees: nothing to promote, v1 untouched
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert get(store, "Deployment", "hello-1").status.phase == "Live"
    assert all(i.spec.desired == "Running" for i in instances(store, "hello-1"))


@pytest.mark.parametrize("phase,reason,ready", [
    ("Building", "BuildFailed", False),
    ("Running", "HealthCheckFailed", True),
    ("Starting", "", False),
    ("Failed", "Evicted", False),
], ids=["build-failed-not-final", "recovered", "plain-starting", "other-failure"])
def test_non_fatal_reports_leave_release_alone(
    ctl: RollbackController, rollout: RolloutController, store: Store, make_app: Callable[..., App],
    release: Callable[[int], None], make_deployment: Callable[..., Deployment], phase: str, reason: str,
    ready: bool,
) -> None:
    """Only a release-fatal reason on a not-ready Instance fails a release."""
    make_app("hello")
    release(1)
    make_deployment("hello", 2, manifest=True)
    rollout.reconcile("hello")
    report(store, "hello-2-0", phase, ready=ready, reason=reason)
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-2").status.phase != "Failed"


def unready(store: Store, dep: str, reason: str = "HealthCheckFailed") -> None:
    for inst in instances(store, dep):
        if inst.spec.desired == "Running":
            report(store, inst.metadata.name, "Running", ready=False, reason=reason)


def test_unhealthy_live_rolls_back_to_last_good(
    ctl: RollbackController, rollout: RolloutController, store: Store, clock: FakeClock,
    make_app: Callable[..., App], release: Callable[[int], None],
) -> None:
    """A live release with no ready Instance for 10 s is rolled back to the last good one, once."""
    make_app("hello", env={"V": "1"})
    release(1)
    release(2)
    unready(store, "hello-2")
    res = ctl.reconcile("hello")
    v2 = get(store, "Deployment", "hello-2")
    assert condition_of(v2, "Healthy").status == "False"
    assert res is not None and res.requeue_after == pytest.approx(10.0)
    assert events_for(store, "hello-2", "Unhealthy")
    clock.advance(9)
    assert ctl.reconcile("hello").requeue_after == pytest.approx(1.0)  # type: ignore[union-attr]
    assert len(store.list("Deployment")[0]) == 2
    clock.advance(1)
    ctl.reconcile("hello")
    v1, v2, v3 = (get(store, "Deployment", f"hello-{n}") for n in (1, 2, 3))
    assert (v3.spec.trigger.type, v3.spec.rollback_of, v3.spec.commit) == ("rollback", "hello-1", v1.spec.commit)
    assert v3.spec.config.env == {"V": "1"}  # type: ignore[union-attr]
    assert v2.status.phase == "Live" and condition_of(v2, "RolledBack").status == "True"  # type: ignore[union-attr]
    [ev] = events_for(store, "hello-2", "RollingBack")
    assert ev.spec.type == "Warning" and ev.spec.message.startswith("rolling back hello-2 to hello-1: ")
    assert_idempotent(ctl, store)
    clock.advance(60)
    ctl.reconcile("hello")
    assert len(store.list("Deployment")[0]) == 3

    v3.status.manifest = v1.status.manifest  # the source controller's part
    store.update_status(v3)
    rollout.reconcile("hello")
    serve_all(store, "hello-3")
    rollout.reconcile("hello")
    v2 = get(store, "Deployment", "hello-2")
    assert get(store, "App", "hello").status.live_deployment == "hello-3"
    assert (v2.status.phase, v2.status.reason) == ("Failed", "RolledBack")
    ctl.reconcile("hello")
    assert condition_of(get(store, "Deployment", "hello-3"), "Healthy").status == "True"
    rollout.reconcile("hello")  # the pinned rollback config does not trigger a config release
    assert len(store.list("Deployment")[0]) == 3


def test_rollback_off_only_warns(ctl: RollbackController, store: Store, clock: FakeClock,
                                 make_app: Callable[..., App], release: Callable[[int], None]) -> None:
    """With rollbackOnFailure off an unhealthy live release is reported, never replaced."""
    make_app("hello", rollback_on_failure=False)
    release(1)
    release(2)
    unready(store, "hello-2")
    ctl.reconcile("hello")
    clock.advance(300)
    ctl.reconcile("hello")
    assert len(store.list("Deployment")[0]) == 2
    assert condition_of(get(store, "Deployment", "hello-2"), "RolledBack") is None
    assert sum(e.spec.count for e in events_for(store, "hello-2", "Unhealthy")) == 1
    assert_idempotent(ctl, store)


def set_min_ready(store: Store, dep: str, seconds: float) -> None:
    d = get(store, "Deployment", dep)
    assert d.status.manifest is not None
    d.status.manifest = d.status.manifest.model_copy(
        update={"health": d.status.manifest.health.model_copy(update={"min_ready_seconds": float(seconds)})}
    )
    store.update_status(d)


def test_brief_recovery_does_not_restart_the_clock(ctl: RollbackController, store: Store, clock: FakeClock,
                                                   make_app: Callable[..., App],
                                                   release: Callable[[int], None]) -> None:
    """Unready, ready again for less than min_ready, unready again: one incident, counted from
    the first failure, rolled back 10 s after it — and one Unhealthy Event, not two."""
    make_app("hello")
    release(1)
    release(2)
    set_min_ready(store, "hello-2", 10)
    unready(store, "hello-2")
    ctl.reconcile("hello")
    clock.advance(4)
    serve_all(store, "hello-2")
    ctl.reconcile("hello")
    assert condition_of(get(store, "Deployment", "hello-2"), "Healthy").status == "True"
    assert get(store, "Deployment", "hello-2").status.failing_since is not None
    clock.advance(3)
    unready(store, "hello-2")
    ctl.reconcile("hello")
    clock.advance(3)
    ctl.reconcile("hello")
    assert len(store.list("Deployment")[0]) == 3, "rolled back 10 s after the first failure"
    assert sum(e.spec.count for e in events_for(store, "hello-2", "Unhealthy")) == 1


def test_stable_recovery_ends_the_incident(ctl: RollbackController, store: Store, clock: FakeClock,
                                           make_app: Callable[..., App], release: Callable[[int], None]) -> None:
    """Ready again for a whole stable period (30 s) without a failure: the incident is over
    (Recovered), and a later failure starts a new one with its own full window."""
    make_app("hello")
    release(1)
    release(2)
    set_min_ready(store, "hello-2", 5)
    unready(store, "hello-2")
    ctl.reconcile("hello")
    clock.advance(2)
    serve_all(store, "hello-2")
    assert ctl.reconcile("hello").requeue_after == pytest.approx(30.0)  # type: ignore[union-attr]
    clock.advance(29)
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-2").status.failing_since is not None
    clock.advance(1)
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-2").status.failing_since is None
    assert events_for(store, "hello-2", "Recovered")
    clock.advance(1)
    unready(store, "hello-2")
    ctl.reconcile("hello")
    clock.advance(9)
    assert ctl.reconcile("hello").requeue_after == pytest.approx(1.0)  # type: ignore[union-attr]
    assert len(store.list("Deployment")[0]) == 2
    assert sum(e.spec.count for e in events_for(store, "hello-2", "Unhealthy")) == 2  # merged, counted


def test_restarts_of_a_live_release_count_as_failures(ctl: RollbackController, store: Store, clock: FakeClock,
                                                      make_app: Callable[..., App],
                                                      release: Callable[[int], None]) -> None:
    """A live release that keeps restarting (ready again each time) is rolled back 10 s after
    its first restart, though it is never unready when the controller looks."""
    make_app("hello")
    release(1)
    release(2)
    set_min_ready(store, "hello-2", 10)
    ctl.reconcile("hello")
    for k in range(1, 4):
        report(store, "hello-2-0", "Running", ready=True, restarts=k)
        ctl.reconcile("hello")
        if k == 1:
            [ev] = events_for(store, "hello-2", "Unhealthy")
            assert ev.spec.type == "Warning" and "restarted" in ev.spec.message
        clock.advance(4)
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-3").spec.trigger.type == "rollback"


@pytest.mark.parametrize("phase", ["Lost", "Scheduled", "Building"])
def test_infrastructure_trouble_is_not_a_bad_release(ctl: RollbackController, store: Store, clock: FakeClock,
                                                     make_app: Callable[..., App],
                                                     release: Callable[[int], None], phase: str) -> None:
    """Instances lost with a node or rebuilding elsewhere leave Healthy Unknown and never roll back."""
    make_app("hello")
    release(1)
    release(2)
    report(store, "hello-2-0", phase)
    ctl.reconcile("hello")
    clock.advance(120)
    ctl.reconcile("hello")
    assert condition_of(get(store, "Deployment", "hello-2"), "Healthy").status == "Unknown"
    assert len(store.list("Deployment")[0]) == 2


def test_no_earlier_good_release_means_no_rollback(ctl: RollbackController, store: Store, clock: FakeClock,
                                                   make_app: Callable[..., App],
                                                   release: Callable[[int], None]) -> None:
    """The first release has nothing to roll back to: a condition says so, nothing is created."""
    make_app("hello")
    release(1)
    unready(store, "hello-1")
    ctl.reconcile("hello")
    clock.advance(31)
    ctl.reconcile("hello")
    v1 = get(store, "Deployment", "hello-1")
    assert condition_of(v1, "RollbackPossible").reason == "NoEarlierRelease"
    assert len(store.list("Deployment")[0]) == 1
    assert_idempotent(ctl, store)


def test_failed_rollback_is_not_retried(ctl: RollbackController, store: Store, clock: FakeClock,
                                        make_app: Callable[..., App], release: Callable[[int], None]) -> None:
    """When the rollback release itself fails, no second rollback is attempted for the incident."""
    make_app("hello")
    release(1)
    release(2)
    unready(store, "hello-2")
    ctl.reconcile("hello")
    clock.advance(30)
    ctl.reconcile("hello")
    v3 = get(store, "Deployment", "hello-3")
    v3.status.phase, v3.status.reason = "Failed", "FetchFailed"
    store.update_status(v3)
    clock.advance(60)
    ctl.reconcile("hello")
    assert len(store.list("Deployment")[0]) == 3


def test_newer_push_in_flight_defers_rollback(ctl: RollbackController, store: Store, clock: FakeClock,
                                              make_app: Callable[..., App], release: Callable[[int], None],
                                              make_deployment: Callable[..., Deployment]) -> None:
    """A newer release already on its way is left to land or fail before rolling back."""
    make_app("hello")
    release(1)
    release(2)
    make_deployment("hello", 3, phase="Building", manifest=True)
    unready(store, "hello-2")
    ctl.reconcile("hello")
    clock.advance(31)
    ctl.reconcile("hello")
    assert len(store.list("Deployment")[0]) == 3
    v3 = get(store, "Deployment", "hello-3")
    v3.status.phase, v3.status.reason = "Failed", "BuildFailed"
    store.update_status(v3)
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-4").spec.rollback_of == "hello-1"


@pytest.mark.parametrize("after", range(0, 3), ids=lambda n: f"crash-after-{n}-writes")
def test_crash_while_rolling_back_makes_one_rollback(store: Store, clock: FakeClock, config: Config,
                                                     make_app: Callable[..., App],
                                                     release: Callable[[int], None], after: int) -> None:
    """Dying anywhere in the rollback write sequence still yields exactly one rollback release."""
    make_app("hello")
    release(1)
    release(2)
    unready(store, "hello-2")
    settings = RollbackSettings(unhealthy_window_seconds=5)
    RollbackController(store, clock, config, settings=settings).reconcile("hello")
    clock.advance(5)
    try:
        RollbackController(CrashingStore(store, after), clock, config,  # type: ignore[arg-type]
                           settings=settings).reconcile("hello")
    except Crash:
        pass
    ctl = RollbackController(store, clock, config, settings=settings)
    ctl.reconcile("hello")
    assert [d.metadata.name for d in store.list("Deployment")[0]] == ["hello-1", "hello-2", "hello-3"]
    assert condition_of(get(store, "Deployment", "hello-2"), "RolledBack").status == "True"  # type: ignore[union-attr]
    assert_idempotent(ctl, store)


def settle(store: Store, *controllers: RolloutController | RollbackController | HealthController) -> int:
    """Reconcile every controller until a full round writes nothing; the number of rounds."""
    for rounds in range(1, 20):
        before = snapshot(store)
        for c in controllers:
            c.reconcile("hello")
        if snapshot(store) == before:
            return rounds
    raise AssertionError("controllers keep rewriting each other's records")


def test_three_controllers_converge_without_flapping(
    ctl: RollbackController, rollout: RolloutController, store: Store, clock: FakeClock, config: Config,
    make_app: Callable[..., App], make_deployment: Callable[..., Deployment],
) -> None:
    """Rollout, rollback and health share records without rewriting each other forever."""
    health = HealthController(store, clock, config)
    make_app("hello", replicas=2)
    make_deployment("hello", 1, manifest=True)
    assert settle(store, rollout, ctl, health) <= 3
    serve_all(store, "hello-1")
    assert settle(store, rollout, ctl, health) <= 3
    app, v1 = get(store, "App", "hello"), get(store, "Deployment", "hello-1")
    assert app.status.live_deployment == "hello-1" and condition_of(app, "Available").status == "True"
    assert (v1.status.ready_replicas, condition_of(v1, "Ready").status, condition_of(v1, "Healthy").status) == (
        2, "True", "True")
    make_deployment("hello", 2, manifest=True)
    settle(store, rollout, ctl, health)
    report(store, "hello-2-0", "Failed", reason="BuildFailed", message="pip install failed")
    settle(store, rollout, ctl, health)
    app = get(store, "App", "hello")
    assert app.status.live_deployment == "hello-1" and condition_of(app, "Available").status == "True"
    assert condition_of(app, "Progressing").reason == "BuildFailed"
    assert get(store, "Deployment", "hello-2").status.phase == "Failed"


def test_crash_loop_rolls_back_before_the_window(ctl: RollbackController, store: Store, clock: FakeClock,
                                                 make_app: Callable[..., App], release: Callable[[int], None]) -> None:
    """A second restart inside one incident rolls back at once, well before the 10 s window."""
    make_app("hello")
    release(1)
    release(2)
    ctl.reconcile("hello")
    for k in range(1, 3):
        assert len(store.list("Deployment")[0]) == 2
        report(store, "hello-2-0", "Starting", ready=False, reason="CrashLoopBackOff", restarts=k)
        ctl.reconcile("hello")
        clock.advance(1)
    v3 = get(store, "Deployment", "hello-3")
    assert v3.spec.trigger.type == "rollback"
    assert "failed 2 times" in condition_of(get(store, "Deployment", "hello-2"), "RolledBack").message  # type: ignore[union-attr]


@pytest.mark.parametrize("gap,kind", [
    (14.0, "crash"), (13.0, "probes"), (5.0, "crash"), (25.0, "probes"),
], ids=["crash-every-14s", "probes-fail-every-13s", "crash-every-5s", "probes-fail-every-25s"])
def test_flapping_release_is_rolled_back_at_its_second_failure(
    ctl: RollbackController, store: Store, clock: FakeClock, make_app: Callable[..., App],
    release: Callable[[int], None], gap: float, kind: str,
) -> None:
    """A live release failing every ``gap`` seconds (a crash, or probes failing until the agent
    restarts it), ready again for a moment in between (a "Recovered" look), is one incident: it
    is rolled back when the second failure is seen — within 15 s of the first for a ~15 s flap
    — not after four crashes."""
    make_app("hello")
    release(1)
    release(2)
    set_min_ready(store, "hello-2", 10)
    ctl.reconcile("hello")
    first = clock.now()
    for k in (1, 2):
        if kind == "crash":
            report(store, "hello-2-0", "Starting", ready=False, reason="CrashLoopBackOff", restarts=k)
        else:
            report(store, "hello-2-0", "Starting", ready=False, reason="HealthCheckFailed", restarts=k)
        ctl.reconcile("hello")
        if k == 1:
            assert len(store.list("Deployment")[0]) == 2, "one failure alone is not a rollback"
            clock.advance(2)
            report(store, "hello-2-0", "Running", ready=True, restarts=k)  # brief recovery
            ctl.reconcile("hello")
            clock.advance(gap - 2)
            ctl.reconcile("hello")
            assert not events_for(store, "hello-2", "Recovered")
    assert clock.now() - first <= 25.0
    v3 = get(store, "Deployment", "hello-3")
    assert v3.spec.trigger.type == "rollback" and v3.spec.rollback_of == "hello-1"
    assert condition_of(get(store, "Deployment", "hello-2"), "RolledBack").status == "True"  # type: ignore[union-attr]
    assert sum(e.spec.count for e in events_for(store, "hello-2", "Unhealthy")) == 1


def test_one_failure_then_stability_is_not_a_rollback(
    ctl: RollbackController, store: Store, clock: FakeClock, make_app: Callable[..., App],
    release: Callable[[int], None],
) -> None:
    """One crash that comes back ready within the window, then stays up: Recovered, no rollback;
    a failure after that is a new incident, not a second failure of the old one."""
    make_app("hello")
    release(1)
    release(2)
    ctl.reconcile("hello")
    report(store, "hello-2-0", "Starting", ready=False, reason="CrashLoopBackOff", restarts=1)
    ctl.reconcile("hello")
    clock.advance(3)
    report(store, "hello-2-0", "Running", ready=True, restarts=1)
    ctl.reconcile("hello")
    clock.advance(30)
    ctl.reconcile("hello")
    assert events_for(store, "hello-2", "Recovered")
    clock.advance(5)
    report(store, "hello-2-0", "Starting", ready=False, reason="CrashLoopBackOff", restarts=2)
    ctl.reconcile("hello")
    assert len(store.list("Deployment")[0]) == 2


@pytest.mark.parametrize("phase,reason", [("Starting", ""), ("Building", ""), ("Pending", "")],
                         ids=["starting", "building", "pending"])
def test_platform_restart_of_a_live_release_is_not_a_failure(
    ctl: RollbackController, store: Store, clock: FakeClock, make_app: Callable[..., App],
    release: Callable[[int], None], phase: str, reason: str,
) -> None:
    """After forge up or its agent restarted, the live release's processes start again (not ready
    yet, no crash counted, no failure reason): Healthy is Unknown, no incident, no rollback — its
    readiness is judged by its probes, not by min_ready or the window."""
    make_app("hello")
    release(1)
    release(2)
    ctl.reconcile("hello")
    report(store, "hello-2-0", phase, ready=False, reason=reason, restarts=0)
    ctl.reconcile("hello")
    clock.advance(60)
    ctl.reconcile("hello")
    v2 = get(store, "Deployment", "hello-2")
    assert condition_of(v2, "Healthy").status == "Unknown"
    assert v2.status.failing_since is None and not events_for(store, "hello-2", "Unhealthy")
    assert len(store.list("Deployment")[0]) == 2


@pytest.mark.parametrize("scale", [
    {"replicas": 3},
    {"replicas": 2, "processes": {"worker": 2}},
], ids=["web", "web-and-worker"])
def test_rollback_after_a_scale_keeps_the_apps_counts(
    ctl: RollbackController, rollout: RolloutController, store: Store, clock: FakeClock,
    make_app: Callable[..., App], release: Callable[[int], None], scale: dict,
) -> None:
    """Scale, then the live release turns unhealthy: the automatic rollback goes back to the last
    good release's code and config but keeps the App's replica counts (sim seed 887: it ran 1
    replica while the App said 3)."""
    make_app("hello", env={"V": "1"})
    release(1)
    release(2)
    app = get(store, "App", "hello")
    for key, value in scale.items():
        setattr(app.spec, key, value)
    store.update(app)
    rollout.reconcile("hello")  # the scale, in place on hello-2
    serve_all(store, "hello-2")
    unready(store, "hello-2")
    ctl.reconcile("hello")
    clock.advance(10)
    ctl.reconcile("hello")
    v1, v3 = get(store, "Deployment", "hello-1"), get(store, "Deployment", "hello-3")
    assert (v3.spec.trigger.type, v3.spec.rollback_of) == ("rollback", "hello-1")
    assert v1.status.applied_config.replicas == 1  # type: ignore[union-attr]
    cfg = v3.spec.config
    assert cfg is not None and cfg.env == {"V": "1"}
    assert (cfg.replicas, cfg.processes) == (scale["replicas"], scale.get("processes"))
    v3.status.manifest = v1.status.manifest  # the source controller's part
    store.update_status(v3)
    rollout.reconcile("hello")
    web = [i for i in instances(store, "hello-3") if i.spec.process == "web"]
    assert len(web) == scale["replicas"]
