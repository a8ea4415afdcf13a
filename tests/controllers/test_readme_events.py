"""Every Event the README's Events table promises, made to happen with the real controllers
(rollout, rollback, scheduler) over a real store and a fake clock, the agent played through
Instance status. A reason added to the README without a scenario here fails the first test."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.cron import CronController, run_name
from forge.controllers.rollback import RollbackController
from forge.controllers.rollout import RolloutController
from forge.controllers.scheduler import SchedulerController
from forge.controllers.source import SourceController
from forge.models import App, Deployment, Event, Trigger
from forge.store.base import Store
from tests.controllers.conftest import DEFAULT_MANIFEST, GiB, manifest_with
from tests.controllers.release_helpers import get, instances, report, serve_all

README = Path(__file__).resolve().parents[2] / "README.md"


def promised() -> list[tuple[str, str]]:
    """(reason, type) for every row of the README's Events table."""
    text = README.read_text()
    table = text[text.index("## Events"):text.index("## forge.yaml")]
    out = []
    for row in table.splitlines():
        cells = [c.strip() for c in row.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        reasons = re.findall(r"`([A-Za-z]+)`", cells[0])
        types = [t.strip() for t in cells[1].split("/")]
        for i, r in enumerate(reasons):
            out.append((r, types[min(i, len(types) - 1)]))
    return out


class World:
    def __init__(self, store: Store, clock: FakeClock, config: Config, make_app: Callable[..., App],
                 make_deployment: Callable[..., Deployment], make_node: Callable[..., Any], tmp: Path) -> None:
        self.store, self.clock, self.tmp = store, clock, tmp
        self.source = SourceController(store, clock, config)
        self.rollout = RolloutController(store, clock, config)
        self.rollback = RollbackController(store, clock, config)
        self.sched = SchedulerController(store, clock, config)
        self.make_app, self.make_deployment, self.make_node = make_app, make_deployment, make_node
        self.config = config

    def tick(self) -> None:
        self.rollback.reconcile("hello")
        self.rollout.reconcile("hello")
        self.rollback.reconcile("hello")

    def push(self, n: int, min_ready: float = 0, **extra: Any) -> None:
        health = {"path": "/health", "interval": "10s", "timeout": "3s", "retries": 3, "min_ready": f"{min_ready}s"}
        manifest = manifest_with(health=health, **extra)
        self.make_deployment("hello", n, manifest=manifest)
        self.tick()

    def live(self, n: int, **extra: Any) -> None:
        self.push(n, **extra)
        serve_all(self.store, f"hello-{n}")
        self.tick()
        self.clock.advance(11)
        self.tick()
        assert get(self.store, "App", "hello").status.live_deployment == f"hello-{n}"

    def events(self, reason: str) -> list[Event]:
        return [e for e in self.store.list("Event")[0] if e.spec.reason == reason]  # type: ignore[misc]


@pytest.fixture
def w(store: Store, clock: FakeClock, config: Config, make_app: Callable[..., App],
      make_deployment: Callable[..., Deployment], make_node: Callable[..., Any], tmp_path: Path) -> World:
    world = World(store, clock, config, make_app, make_deployment, make_node, tmp_path)
    make_app("hello")
    return world


def fail_new_release(reason: str, phase: str) -> Callable[[World], None]:
    def scenario(w: World) -> None:
        w.live(1)
        w.push(2)
        report(w.store, "hello-2-0", phase, reason=reason, message="it broke")
        w.tick()
    return scenario


def unhealthy(w: World) -> None:
    w.live(1)
    w.live(2)
    w.tick()  # judged healthy first: the Event must come from a *change* to unhealthy
    report(w.store, "hello-2-0", "Running", ready=False, reason="HealthCheckFailed")
    w.tick()


def recovered(w: World) -> None:
    unhealthy(w)
    serve_all(w.store, "hello-2")
    w.tick()
    w.clock.advance(30)  # ready for the stable period (30 s) without another failure
    w.tick()


def rolling_back(w: World) -> None:
    unhealthy(w)
    w.clock.advance(10)
    w.tick()


def rolled_back(w: World) -> None:
    rolling_back(w)
    v3 = get(w.store, "Deployment", "hello-3")
    v3.status.manifest = DEFAULT_MANIFEST.model_copy(deep=True)
    w.store.update_status(v3)
    w.tick()
    serve_all(w.store, "hello-3")
    w.tick()


def restarted_before_live(w: World) -> None:
    w.live(1)
    w.push(2, min_ready=10)
    serve_all(w.store, "hello-2")
    w.tick()
    report(w.store, "hello-2-0", "Running", ready=True, restarts=1)
    w.tick()


def cancelled(w: World) -> None:
    w.live(1)
    w.push(2)
    w.push(3)


def scaled_down(w: World) -> None:
    w.live(1)
    app = get(w.store, "App", "hello")
    app.spec.replicas = 2
    w.store.update(app)
    w.tick()
    serve_all(w.store, "hello-1")
    app = get(w.store, "App", "hello")
    app.spec.replicas = 1
    w.store.update(app)
    w.tick()


def already_live(w: World) -> None:
    """The webhook (no controller) records it: a push of the live commit and config."""
    from prometheus_client import CollectorRegistry

    from forge.api.webhook import GithubWebhookResource
    from forge.webhook import Push

    w.live(1)
    live = get(w.store, "Deployment", "hello-1")
    hook = GithubWebhookResource(w.store, w.config, w.clock, CollectorRegistry())
    app = get(w.store, "App", "hello")
    name, created = hook._deploy(app, Push(app.spec.repo, "refs/heads/main", live.spec.commit, False), "d-replay")
    assert (name, created) == ("hello-1", False)


def deadline(w: World) -> None:
    w.live(1)
    w.push(2)
    w.clock.advance(120 + 600 + 1)  # the progress allowance and the build's own timeout (10m default)
    w.tick()


def scheduled(w: World) -> None:
    w.make_node("n1")
    w.push(1)
    for inst in instances(w.store, "hello-1"):
        w.sched.reconcile(inst.metadata.name)


def unschedulable(w: World) -> None:
    w.make_node("tiny", memory=GiB // 64)
    w.push(1)
    for inst in instances(w.store, "hello-1"):
        w.sched.reconcile(inst.metadata.name)


def stale_push(w: World) -> None:
    from tests.controllers.test_source import GOOD, push_commit

    old = push_commit(w.tmp, "acme/hello", {"forge.yaml": GOOD})
    push_commit(w.tmp, "acme/hello", {"forge.yaml": GOOD + "# newer\n"})
    dep = w.make_deployment("hello", 1, old)
    dep.spec.trigger, dep.spec.ref = Trigger(type="webhook", delivery_id="replayed"), "refs/heads/main"
    w.store.update(dep)
    w.source.reconcile("hello-1")


RELEASE = {"release": {"command": "python manage.py migrate", "timeout": "60s"}}
CRON = {"cron": [{"name": "tick", "schedule": "* * * * *", "command": "true"}]}
T0 = FakeClock().now()  # a minute boundary: the first due time after going live is T0 + 60


def release_started(w: World) -> None:
    w.push(1, **RELEASE)


def release_ended(phase: str, reason: str = "") -> Callable[[World], None]:
    def scenario(w: World) -> None:
        w.push(1, **RELEASE)
        report(w.store, "hello-1-release", phase, reason=reason, exit_code=0 if phase == "Succeeded" else 3)
        w.tick()
    return scenario


def cron_started(w: World) -> None:
    w.live(1, **CRON)
    w.clock.advance(T0 + 60 - w.clock.now())
    CronController(w.store, w.clock, w.config).reconcile("hello")


def cron_skipped(w: World) -> None:
    cron_started(w)  # its run never ends
    w.clock.advance(60)
    CronController(w.store, w.clock, w.config).reconcile("hello")


def storage_pinned(w: World) -> None:
    w.make_node("n1")
    w.push(1, storage={"size": 64 * 2**20})
    for inst in instances(w.store, "hello-1"):
        w.sched.reconcile(inst.metadata.name)


SCENARIOS: dict[str, tuple[Callable[[World], None], str]] = {
    "ReleaseCommandStarted": (release_started, "hello-1"),
    "ReleaseCommandSucceeded": (release_ended("Succeeded"), "hello-1"),
    "ReleaseCommandFailed": (release_ended("Failed", "Error"), "hello-1"),
    "ReleaseCommandTimeout": (release_ended("Failed", "Timeout"), "hello-1"),
    "CronStarted": (cron_started, run_name("hello", "tick", T0 + 60)),
    "CronSkipped": (cron_skipped, run_name("hello", "tick", T0 + 120)),
    "StoragePinned": (storage_pinned, "hello"),
    "StalePush": (stale_push, "hello-1"),
    "Live": (lambda w: w.live(1), "hello-1"),
    "Superseded": (lambda w: (w.live(1), w.live(2)), "hello-1"),
    "Cancelled": (cancelled, "hello-2"),
    "ScaledDown": (scaled_down, "hello-1-1"),
    "AlreadyLive": (already_live, "hello"),
    "ProgressDeadlineExceeded": (deadline, "hello-2"),
    "BuildFailed": (fail_new_release("BuildFailed", "Failed"), "hello-2"),
    "HealthCheckFailed": (fail_new_release("HealthCheckFailed", "Starting"), "hello-2"),
    "OOMKilled": (fail_new_release("OOMKilled", "Starting"), "hello-2"),
    "CrashLoopBackOff": (restarted_before_live, "hello-2"),
    "Unhealthy": (unhealthy, "hello-2"),
    "Recovered": (recovered, "hello-2"),
    "RollingBack": (rolling_back, "hello-2"),
    "RolledBack": (rolled_back, "hello-2"),
    "Scheduled": (scheduled, "hello-1-0"),
    "Unschedulable": (unschedulable, "hello-1-0"),
}


def test_every_promised_event_has_a_scenario() -> None:
    """The README's table and this file name the same Events."""
    assert {r for r, _ in promised()} == set(SCENARIOS)


@pytest.mark.parametrize(("reason", "type_"), promised(), ids=[r for r, _ in promised()])
def test_promised_event_is_recorded(w: World, reason: str, type_: str) -> None:
    """The situation the README describes records exactly this Event, once, on that record."""
    scenario, subject = SCENARIOS[reason]
    scenario(w)
    found = w.events(reason)
    assert [(e.spec.involved_object.name, e.spec.type) for e in found] == [(subject, type_)], \
        [(e.spec.involved_object.name, e.spec.type, e.spec.message) for e in w.store.list("Event")[0]]  # type: ignore[attr-defined]
    assert found[0].spec.count == 1
