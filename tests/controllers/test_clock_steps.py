"""Deadlines and waits that fit the release and survive steps of the wall clock.

The rollout and rollback controllers measure the progress deadline, ``min_ready`` and the
unhealthy window with a ``Stopwatch`` (monotonic from their first look), so ``FakeClock.step``
— the wall clock alone jumping, as ``date -s`` or an NTP correction does — must move none of
them; ``advance`` (real time passing) moves them all."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from forge.clock import FakeClock, iso
from forge.config import Config
from forge.controllers.rollback import RollbackController
from forge.controllers.rollout import RolloutController
from forge.manifest import validate_data
from forge.models import App, Deployment, Manifest
from forge.store.base import Store
from tests.controllers.release_helpers import get, instances, report, serve_all

STEPS = [7200.0, -4 * 3600.0]
STEP_IDS = ["plus-2h", "minus-4h"]


@pytest.fixture
def ctl(store: Store, clock: FakeClock, config: Config) -> RolloutController:
    return RolloutController(store, clock, config)


@pytest.fixture
def live_v1(
    ctl: RolloutController,
    store: Store,
    make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
) -> App:
    app = make_app("hello")
    make_deployment(app, 1, manifest=True)
    ctl.reconcile("hello")
    serve_all(store, "hello-1")
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    return app


def manifest(build_timeout: float = 600.0, min_ready: float = 10.0, **extra: Any) -> Manifest:
    """A forge.yaml with a 150 s build, validated as a push's would be."""
    return validate_data({
        "run": {"command": "x"},
        "build": {"commands": ["sleep 150"], "timeout": f"{build_timeout:g}s"},
        "health": {"min_ready": f"{min_ready:g}s"},
        **extra,
    })


def phase(store: Store, name: str) -> tuple[str, str]:
    d = get(store, "Deployment", name)
    return d.status.phase, d.status.reason


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
def test_wall_clock_step_during_a_build_moves_no_deadline(
    ctl: RolloutController,
    store: Store,
    clock: FakeClock,
    live_v1: App,
    make_deployment: Callable[..., Deployment],
    step: float,
) -> None:
    """A step of the leader's wall clock during a build neither fails the release at once (+2 h)
    nor stretches its deadline (−4 h): it fails exactly when its allowance has really passed."""
    make_deployment("hello", 2, manifest=manifest(build_timeout=300))
    ctl.reconcile("hello")
    report(store, "hello-2-0", "Building")
    clock.advance(5)
    clock.step(step)
    res = ctl.reconcile("hello")
    assert phase(store, "hello-2")[0] == "Building"
    assert res is not None and res.requeue_after == pytest.approx(120 + 300 - 5)
    clock.advance(120 + 300 - 5 - 0.5)
    ctl.reconcile("hello")
    assert phase(store, "hello-2")[0] == "Building"
    clock.advance(0.5)
    ctl.reconcile("hello")
    assert phase(store, "hello-2") == ("Failed", "ProgressDeadlineExceeded")


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
def test_wall_clock_step_during_min_ready_moves_no_promotion(
    ctl: RolloutController,
    store: Store,
    clock: FakeClock,
    live_v1: App,
    make_deployment: Callable[..., Deployment],
    step: float,
) -> None:
    """Waiting out min_ready, the leader's clock steps: +2 h does not promote early, −4 h does
    not leave the release in Starting; it is promoted after 10 s of real time."""
    make_deployment("hello", 2, manifest=manifest())
    ctl.reconcile("hello")
    report(store, "hello-2-0", "Running", ready=True, ready_time=clock.now_iso())
    ctl.reconcile("hello")
    clock.step(step)
    clock.advance(9.5)
    res = ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert res is not None and res.requeue_after == pytest.approx(0.5)
    clock.advance(0.5)
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-2"
    assert phase(store, "hello-2")[0] == "Live"


@pytest.mark.parametrize("skew", STEPS, ids=STEP_IDS)
def test_ready_time_from_a_skewed_clock_is_bounded(
    ctl: RolloutController,
    store: Store,
    clock: FakeClock,
    live_v1: App,
    make_deployment: Callable[..., Deployment],
    skew: float,
) -> None:
    """A controller that has been watching sees an Instance turn ready whose readyTime comes
    from a clock hours off (the agent's machine, or the leader stepped just before): min_ready
    counts from when it was seen ready, never cut short nor stretched by hours."""
    clock.advance(30)  # the controller has been watching for a while
    ctl.reconcile("hello")
    make_deployment("hello", 2, manifest=manifest())
    ctl.reconcile("hello")
    report(store, "hello-2-0", "Running", ready=True, ready_time=iso(clock.now() - skew))
    res = ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert res is not None and res.requeue_after == pytest.approx(10.0)
    clock.advance(res.requeue_after)  # type: ignore[arg-type]
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-2"


def test_progress_deadline_covers_build_and_release_command_timeouts(
    ctl: RolloutController,
    store: Store,
    clock: FakeClock,
    live_v1: App,
    make_deployment: Callable[..., Deployment],
) -> None:
    """build.timeout 5m: a 150 s build is still Building at 150 s (the old deadline was 120 s);
    the deadline is 120 s + the build's timeout + the release command's."""
    make_deployment(
        "hello", 2, manifest=manifest(build_timeout=300, release={"command": "migrate", "timeout": "60s"})
    )
    res = ctl.reconcile("hello")
    assert res is not None and res.requeue_after == pytest.approx(120 + 300 + 60)
    clock.advance(150)
    ctl.reconcile("hello")
    assert phase(store, "hello-2")[0] != "Failed"
    clock.advance(120 + 300 + 60 - 150)
    ctl.reconcile("hello")
    assert phase(store, "hello-2") == ("Failed", "ProgressDeadlineExceeded")
    assert "480s" in get(store, "Deployment", "hello-2").status.message
    assert all(i.spec.desired == "Stopped" for i in instances(store, "hello-2"))


@pytest.mark.parametrize("step", STEPS, ids=STEP_IDS)
def test_wall_clock_step_moves_no_unhealthy_window(
    store: Store,
    clock: FakeClock,
    config: Config,
    ctl: RolloutController,
    make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
    step: float,
) -> None:
    """A live release with no ready Instance is rolled back 10 s of real time after it went
    down, whatever the wall clock does meanwhile (+2 h: not at once; −4 h: not hours later)."""
    rb = RollbackController(store, clock, config)
    make_app("hello")
    for n in (1, 2):
        make_deployment("hello", n, manifest=True)
        ctl.reconcile("hello")
        serve_all(store, f"hello-{n}")
        ctl.reconcile("hello")
        clock.advance(10)
        ctl.reconcile("hello")
    rb.reconcile("hello")
    for inst in instances(store, "hello-2"):
        if inst.spec.desired == "Running":
            report(store, inst.metadata.name, "Running", ready=False, reason="HealthCheckFailed")
    rb.reconcile("hello")
    clock.step(step)
    clock.advance(9)
    rb.reconcile("hello")
    assert len(store.list("Deployment")[0]) == 2
    clock.advance(1)
    rb.reconcile("hello")
    assert [d.metadata.name for d in store.list("Deployment")[0]] == ["hello-1", "hello-2", "hello-3"]


def test_each_instance_waits_from_when_it_was_seen_ready(
    ctl: RolloutController, store: Store, clock: FakeClock, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
) -> None:
    """Two replicas ready 8 s apart, seen by a controller that has been watching: the release is
    promoted 10 s after the *second* one is ready, not 10 s after the controller first saw all of
    them ready plus the bounded first look of the first one."""
    make_app("hello", replicas=2)
    make_deployment("hello", 1, manifest=manifest())
    clock.advance(30)
    ctl.reconcile("hello")
    report(store, "hello-1-0", "Running", ready=True, ready_time=clock.now_iso())
    ctl.reconcile("hello")
    clock.advance(8)
    report(store, "hello-1-1", "Running", ready=True, ready_time=clock.now_iso())
    res = ctl.reconcile("hello")
    assert res is not None and res.requeue_after == pytest.approx(10.0)
    clock.advance(10)
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"


def running(store: Store, name: str) -> bool:
    return get(store, "Instance", name).spec.desired == "Running"


@pytest.mark.parametrize("step", [0.0, *STEPS], ids=["no-step", *STEP_IDS])
def test_a_superseded_release_drains_exactly_its_period(
    ctl: RolloutController,
    store: Store,
    clock: FakeClock,
    live_v1: App,
    make_deployment: Callable[..., Deployment],
    step: float,
) -> None:
    """The release a push supersedes keeps serving for ``drain_seconds`` (10 s) measured on the
    controller's Stopwatch: asked to stop at 10 s, not a moment before — whatever a step of the
    wall clock in between says (+2 h once cut the drain to nothing)."""
    make_deployment("hello", 2, manifest=True)
    ctl.reconcile("hello")
    serve_all(store, "hello-2")
    res = ctl.reconcile("hello")
    assert phase(store, "hello-1")[0] == "Superseded"
    assert res is not None and res.requeue_after == pytest.approx(10.0, abs=1e-3)
    clock.step(step)
    res = ctl.reconcile("hello")
    assert running(store, "hello-1-0")
    assert res is not None and res.requeue_after == pytest.approx(10.0, abs=1e-3)
    clock.advance(9.9)
    res = ctl.reconcile("hello")
    assert running(store, "hello-1-0")
    assert res is not None and res.requeue_after == pytest.approx(0.1, abs=1e-3)
    clock.advance(0.1)
    ctl.reconcile("hello")
    assert not running(store, "hello-1-0")


@pytest.mark.parametrize("step", [0.0, *STEPS], ids=["no-step", *STEP_IDS])
def test_a_scaled_down_instance_drains_exactly_its_period(
    ctl: RolloutController,
    store: Store,
    clock: FakeClock,
    make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
    step: float,
) -> None:
    """Scaling 2 → 1 takes the surplus Instance out of routing at once and stops it a drain
    (10 s) later on the Stopwatch, through any wall-clock step."""
    make_app("hello", replicas=2)
    make_deployment("hello", 1, manifest=True)
    ctl.reconcile("hello")
    serve_all(store, "hello-1")
    ctl.reconcile("hello")
    app = get(store, "App", "hello")
    app.spec.replicas = 1
    store.update(app)
    res = ctl.reconcile("hello")
    assert get(store, "Instance", "hello-1-1").spec.unrouted_time is not None
    assert res is not None and res.requeue_after == pytest.approx(10.0, abs=1e-3)
    clock.step(step)
    res = ctl.reconcile("hello")
    assert running(store, "hello-1-1") and res is not None
    assert res.requeue_after == pytest.approx(10.0, abs=1e-3)
    clock.advance(9.9)
    ctl.reconcile("hello")
    assert running(store, "hello-1-1")
    clock.advance(0.1)
    ctl.reconcile("hello")
    assert not running(store, "hello-1-1") and running(store, "hello-1-0")


@pytest.mark.parametrize("agent_stepped", [False, True], ids=["agent-clock-right", "agent-clock-stepped"])
@pytest.mark.parametrize("step", [600.0, 7200.0], ids=["plus-10m", "plus-2h"])
def test_step_in_a_new_leaders_first_seconds_cannot_cut_min_ready(
    store: Store, clock: FakeClock, config: Config, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment], step: float, agent_stepped: bool,
) -> None:
    """A leader just started (its Stopwatch has watched under 10 s) sees its wall clock step
    forward, then the Instance turn ready: the release still waits min_ready (10 s) of real
    time from when it was seen ready (sim seed 2 of clock-step promoted it at once)."""
    ctl = RolloutController(store, clock, config)
    make_app("hello")
    make_deployment("hello", 1, manifest=manifest())
    ctl.reconcile("hello")
    clock.advance(3)
    clock.step(step)
    clock.advance(1)
    ready_at = clock.now() if agent_stepped else clock.now() - step
    report(store, "hello-1-0", "Running", ready=True, ready_time=iso(ready_at))
    res = ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment is None
    assert res is not None and res.requeue_after == pytest.approx(10.0)
    clock.advance(9.9)
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment is None
    clock.advance(0.1)
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"


def test_a_new_leader_waits_min_ready_from_its_own_first_look(
    store: Store, clock: FakeClock, config: Config, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
) -> None:
    """Leadership changes while a release waits out min_ready: the new leader cannot tell a
    readyTime an hour old by its wall clock from a stepped one, so it counts min_ready from its
    own first look (longer by what the old leader had waited, never shorter)."""
    old = RolloutController(store, clock, config)
    make_app("hello")
    make_deployment("hello", 1, manifest=manifest())
    old.reconcile("hello")
    report(store, "hello-1-0", "Running", ready=True, ready_time=iso(clock.now() - 3600))
    clock.advance(6)
    old.reconcile("hello")
    new = RolloutController(store, clock, config)  # the old leader's process is gone
    res = new.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment is None
    assert res is not None and res.requeue_after == pytest.approx(10.0)
    clock.advance(10)
    new.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-1"


def test_step_before_a_new_leaders_first_look_cannot_fail_a_release_at_once(
    store: Store, clock: FakeClock, config: Config, live_v1: App,
    make_deployment: Callable[..., Deployment],
) -> None:
    """The old leader stops; the wall clock steps +2 h; a new leader's first look at a release
    created seconds ago reads it hours old: it still has half its deadline (sim seed 133 failed a
    healthy release ProgressDeadlineExceeded at the takeover), and goes live when ready."""
    make_deployment("hello", 2, manifest=manifest())
    clock.advance(3)
    clock.step(7200)
    new = RolloutController(store, clock, config)
    res = new.reconcile("hello")
    assert phase(store, "hello-2")[0] != "Failed"
    assert res is not None and res.requeue_after == pytest.approx((120 + 600) / 2)
    report(store, "hello-2-0", "Running", ready=True, ready_time=clock.now_iso())
    new.reconcile("hello")
    clock.advance(10)
    new.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment == "hello-2"
