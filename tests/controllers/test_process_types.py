"""Process types against a real SQLite store and a fake clock: the release phase (once, across
controller restarts), promotion with workers, and cron timing (due, skipped, no burst)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from forge.clock import FakeClock, iso
from forge.config import Config
from forge.controllers import cron as cronmod
from forge.controllers.cron import CronController, plan_job
from forge.controllers.rollout import RolloutController
from forge.models import App, Deployment, Instance, InstanceSpec, ObjectMeta, OneShot
from forge.proxy.routing import live_dials
from forge.store.base import Store
from tests.controllers.conftest import events_for, manifest_with
from tests.controllers.release_helpers import get, instances, report

WITH_RELEASE = manifest_with(release={"command": "python manage.py migrate", "timeout": "60s"})
WITH_WORKER = manifest_with(processes={"worker": {"command": "python worker.py", "replicas": 2, "min_running": "10s"}})


def names(store: Store, dep: str) -> list[str]:
    return [i.metadata.name for i in instances(store, dep)]


def test_release_command_runs_once_before_any_instance_even_across_restarts(
    store: Store, clock: FakeClock, config: Config, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
) -> None:
    make_app("hello")
    make_deployment("hello", 1, manifest=WITH_RELEASE)
    RolloutController(store, clock, config).reconcile("hello")
    assert names(store, "hello-1") == ["hello-1-release"]  # nothing else starts first
    rel = get(store, "Instance", "hello-1-release")
    assert rel.spec.oneshot.type == "release" and rel.spec.oneshot.command == "python manage.py migrate"
    assert get(store, "Deployment", "hello-1").status.release_phase.phase == "Running"
    for _ in range(3):  # controllers restart: a new controller object, the same records
        RolloutController(store, clock, config).reconcile("hello")
    assert names(store, "hello-1") == ["hello-1-release"]
    report(store, "hello-1-release", "Succeeded", exit_code=0)
    ctl = RolloutController(store, clock, config)
    ctl.reconcile("hello")
    dep = get(store, "Deployment", "hello-1")
    assert dep.status.release_phase.phase == "Succeeded" and dep.status.release_phase.exit_code == 0
    assert names(store, "hello-1") == ["hello-1-0", "hello-1-release"]
    assert get(store, "Instance", "hello-1-release").spec.desired == "Stopped"  # its node forgets it
    report(store, "hello-1-0", "Running", ready=True)
    ctl.reconcile("hello")
    assert get(store, "Deployment", "hello-1").status.phase == "Live"
    store.delete("Instance", "hello-1-release")  # even with its record gone, it never runs again
    RolloutController(store, clock, config).reconcile("hello")
    assert "hello-1-release" not in names(store, "hello-1")
    assert events_for(store, "hello-1", "ReleaseCommandSucceeded")


@pytest.mark.parametrize(("reason", "want"), [("Error", "ReleaseCommandFailed"), ("Timeout", "ReleaseCommandTimeout")])
def test_failing_release_command_fails_the_release_and_keeps_the_live_one(
    store: Store, clock: FakeClock, config: Config, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment], reason: str, want: str,
) -> None:
    make_app("hello")
    make_deployment("hello", 1, manifest=True)
    ctl = RolloutController(store, clock, config)
    ctl.reconcile("hello")
    report(store, "hello-1-0", "Running", ready=True)
    ctl.reconcile("hello")
    make_deployment("hello", 2, manifest=WITH_RELEASE)
    ctl.reconcile("hello")
    report(store, "hello-2-release", "Failed", reason=reason, message="exited with code 3", exit_code=3)
    ctl.reconcile("hello")
    dep = get(store, "Deployment", "hello-2")
    assert (dep.status.phase, dep.status.reason) == ("Failed", want)
    assert dep.status.release_phase.exit_code == 3
    assert "forge logs --deployment hello-2 --release" in dep.status.message
    assert get(store, "App", "hello").status.live_deployment == "hello-1"
    assert names(store, "hello-2") == ["hello-2-release"]  # no Instance of the failed release ever started


def test_rollback_runs_no_release_command(
    store: Store, clock: FakeClock, config: Config, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
) -> None:
    make_app("hello")
    make_deployment("hello", 1, manifest=WITH_RELEASE, trigger={"type": "rollback"})
    RolloutController(store, clock, config).reconcile("hello")
    assert names(store, "hello-1") == ["hello-1-0"]


def test_promotion_waits_for_workers_to_run_min_time_and_only_web_is_routed(
    store: Store, clock: FakeClock, config: Config, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
) -> None:
    make_app("hello", processes={"worker": 3})
    make_deployment("hello", 1, manifest=WITH_WORKER)
    ctl = RolloutController(store, clock, config)
    ctl.reconcile("hello")
    assert names(store, "hello-1") == ["hello-1-0", "hello-1-worker-0", "hello-1-worker-1", "hello-1-worker-2"]
    w = get(store, "Instance", "hello-1-worker-1")
    assert (w.spec.process, w.spec.index, w.metadata.labels["forge.dev/process"]) == ("worker", 1, "worker")
    report(store, "hello-1-0", "Running", ready=True, port=20000)
    for n in range(3):
        report(store, f"hello-1-worker-{n}", "Starting")  # agents: not yet min_running
    ctl.reconcile("hello")
    assert get(store, "App", "hello").status.live_deployment is None
    for n in range(3):
        report(store, f"hello-1-worker-{n}", "Running", ready=True, port=21000 + n)
    ctl.reconcile("hello")
    app = get(store, "App", "hello")
    assert app.status.live_deployment == "hello-1"
    insts: list[Instance] = store.list("Instance")[0]  # type: ignore[assignment]
    node = make_node_record(store)
    for i in insts:
        i.spec.node = node
        store.update(i)
    insts = store.list("Instance")[0]  # type: ignore[assignment]
    dials = live_dials([app], insts, store.list("Node")[0])  # type: ignore[arg-type]
    assert dials == {"hello": ["127.0.0.1:20000"]}  # workers take no traffic
    # scaling a process type changes the live release in place: no new release; the surplus
    # workers leave (they take no traffic) after the drain, worker-0 stays untouched
    app.spec.processes = {"worker": 1}
    store.update(app)
    ctl.reconcile("hello")
    assert [d.metadata.name for d in store.list("Deployment")[0]] == ["hello-1"]
    clock.advance(11)
    ctl.reconcile("hello")
    running = [i.metadata.name for i in store.list("Instance")[0] if i.spec.desired == "Running"]
    assert sorted(running) == ["hello-1-0", "hello-1-worker-0"]


def make_node_record(store: Store) -> str:
    from forge.models import Node, NodeSpec

    store.create(Node(metadata=ObjectMeta(name="n1"), spec=NodeSpec(address="127.0.0.1")))
    return "n1"


def _cron_run(job: str, due: float, phase: str = "Succeeded", desired: str = "Stopped") -> Instance:
    inst = Instance(
        metadata=ObjectMeta(name=f"x-{int(due)}"),
        spec=InstanceSpec(app="hello", deployment="hello-1", repo="acme/hello", commit="a" * 40, desired=desired,
                          process="cron", oneshot=OneShot(type="cron", command="true", schedule=job,
                                                          scheduled_time=iso(due))),
    )
    inst.status.phase = phase  # type: ignore[assignment]
    return inst


T0 = dt.datetime(2026, 11, 30, 10, 0, 0, tzinfo=dt.UTC).timestamp()
EVERY_MINUTE = {"name": "tick", "schedule": "* * * * *", "command": "true"}


@pytest.mark.parametrize(("now", "runs", "want"), [
    (T0 + 30, [], ("create", T0)),  # due at T0, nothing ran: run it
    (T0 + 30, [_cron_run("tick", T0)], (None, None)),  # already ran
    (T0 + 90, [_cron_run("tick", T0, "Running", "Running")], ("skip", T0 + 60)),  # still going: Skipped
    (T0 + 3600 * 5, [_cron_run("tick", T0)], ("create", T0 + 3600 * 5)),  # 5 h down: one catch-up, the latest
    (T0 - 1, [], (None, None)),  # before the job went live
])
def test_cron_decisions(now: float, runs: list[Instance], want: tuple[str | None, float | None]) -> None:
    plan = plan_job(manifest_with(cron=[EVERY_MINUTE]).cron[0], runs, now, active_since=T0 - 0.5)
    got = ("create", plan.create) if plan.create else ("skip", plan.skip) if plan.skip else (None, None)
    assert got == (want[0], iso(want[1]) if want[1] is not None else None)
    assert 0 < plan.wake <= 60


def test_cron_timezone() -> None:
    job = {"name": "n", "schedule": "0 3 * * *", "command": "true", "timezone": "Europe/Paris"}
    plan = plan_job(manifest_with(cron=[job]).cron[0], [], T0, active_since=0)  # 10:00 UTC = 11:00 Paris: due today 03:00 Paris = 02:00 UTC
    assert plan.create == iso(T0 - 8 * 3600)


def test_cron_controller_runs_each_due_time_once_and_never_bursts(
    store: Store, clock: FakeClock, config: Config, make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
) -> None:
    manifest = manifest_with(cron=[dict(EVERY_MINUTE)])
    def at(t: float) -> None:
        clock.advance(t - clock.now())

    at(T0 + 10)
    make_app("hello")
    make_deployment("hello", 1, manifest=manifest, phase="Live", live_time=iso(T0 - 120))
    app = get(store, "App", "hello")
    app.status.live_deployment = "hello-1"
    store.update_status(app)
    ctl = CronController(store, clock, config)

    def runs() -> list[Instance]:
        return sorted((i for i in store.list("Instance")[0] if i.spec.process == "cron"),  # type: ignore[union-attr]
                      key=lambda i: i.spec.oneshot.scheduled_time)  # type: ignore[union-attr]

    res = ctl.reconcile("hello")
    assert [r.spec.oneshot.scheduled_time for r in runs()] == [iso(T0)]
    assert res is not None and res.requeue_after == pytest.approx(50)
    CronController(store, clock, config).reconcile("hello")  # a restarted controller: no second run
    assert len(runs()) == 1
    at(T0 + 70)  # the first still runs at the next due time: Skipped
    ctl.reconcile("hello")
    assert [(r.spec.oneshot.scheduled_time, r.status.phase) for r in runs()] == [(iso(T0), ""), (iso(T0 + 60), "Skipped")]
    first = runs()[0]
    report(store, first.metadata.name, "Succeeded", exit_code=0)
    ctl.reconcile("hello")
    assert get(store, "Instance", first.metadata.name).spec.desired == "Stopped"  # finished: its node forgets it
    at(T0 + 7200)  # two hours of downtime: one catch-up run, not 119
    ctl.reconcile("hello")
    assert [r.spec.oneshot.scheduled_time for r in runs()][-1] == iso(T0 + 7200) and len(runs()) == 3
    assert cronmod.KEEP_RUNS >= 3
