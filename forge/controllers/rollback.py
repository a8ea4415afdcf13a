"""Rollback: a broken release never takes traffic, and a live one that breaks is undone
(key = app name). Decisions in ``plan_rollback``; the controller applies them.

- **A release not yet live** any of whose current Instances reports BuildFailed (phase
  Failed), HealthCheckFailed, CrashLoopBackOff or OOMKilled is Failed with that reason and a
  message naming the Instance; its Instances are asked to stop; a Warning Event says why.
  ``App.status.liveDeployment`` is never touched here, so the live release keeps serving.
- **A release not yet live** whose Instance restarted (inside ``health.min_ready``, before
  promotion) fails the same way, with ``CrashLoopBackOff``, even if it came back ready.
- **The live release** carries a ``Healthy`` condition (False when no replica is ready while
  at least one fails at running it; Unknown while nothing runs or fails yet — replacements
  after a node loss, processes the platform restarted that are still starting, are not the
  release's fault) and ``status.failingSince``: set at the first failure (a restart the agent
  counted — it counts only the app's own — or a turn to Healthy False) with a Warning
  ``Unhealthy`` Event, and cleared only after ``stable_seconds`` (30 s, at least min_ready)
  ready without a failure — so a flapping release whose crashes are separated by brief
  recoveries stays one incident. A second failure in the incident (``failures_to_roll_back``),
  or no replica ready for ``unhealthy_window_seconds`` (10 s), with
  ``App.spec.rollbackOnFailure`` on → a new Deployment (trigger rollback,
  ``rollbackOf`` = the last release that went live and was superseded cleanly, its commit and
  config) goes through the rollout gate, and the bad release is marked ``reason: RolledBack``
  at once (rollout turns it Failed when the rollback is promoted). Idempotent: a rollback
  Deployment newer than the live release means this incident is handled; a rollback that
  fails itself is not retried. A release in flight (a newer push) is left to decide first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from forge.clock import Clock, Stopwatch, iso
from forge.config import Config
from forge.controllers import deploystate as ds
from forge.controllers.base import DONE, AppKeyedController, Result
from forge.errors import NotFound
from forge.events import EventRecorder
from forge.models import (
    DEPLOYMENT_TERMINAL,
    LABEL_APP,
    App,
    Deployment,
    DeploymentStatus,
    Instance,
    deployment_number,
    next_release_number,
    set_condition,
)
from forge.release import create_next_release, renumber, rollback_release
from forge.store.base import Store

REASON_CRASH_LOOP: Final[str] = "CrashLoopBackOff"


@dataclass(frozen=True)
class RollbackSettings:
    unhealthy_window_seconds: float = 10.0  # no instance ready this long: roll back
    failures_to_roll_back: int = 2  # this many failures in one incident roll back at once
    stable_seconds: float = 30.0  # ready this long (at least min_ready) without a failure ends it


@dataclass
class RollbackPlan:
    deployments: dict[str, DeploymentStatus] = field(default_factory=dict)
    notes: dict[str, list[tuple[Literal["Normal", "Warning"], str, str]]] = field(default_factory=dict)
    stop: list[str] = field(default_factory=list)
    new_deployment: Deployment | None = None
    requeue_after: float | None = None


def failing_instance(dep_name: str, instances: list[Instance]) -> Instance | None:
    current = sorted(ds.current_by_slot(dep_name, instances).values(), key=lambda i: i.metadata.name)
    return next((i for i in current if i.spec.desired == "Running" and ds.is_failing(i)), None)


def restarted_instance(dep_name: str, instances: list[Instance]) -> Instance | None:
    current = sorted(ds.current_by_slot(dep_name, instances).values(), key=lambda i: i.metadata.name)
    return next((i for i in current if i.spec.desired == "Running" and i.status.restarts > 0), None)


def rollback_deployment(
    app: App, bad: Deployment, target: Deployment, deployments: list[Deployment]
) -> Deployment:
    """The automatic rollback release: ``forge.release.rollback_release``, the one builder."""
    return rollback_release(app, next_release_number(deployments), target, owned=True)


def plan_rollback(
    app: App,
    deployments: list[Deployment],
    instances: list[Instance],
    now: float,
    settings: RollbackSettings,
    watch: Stopwatch | None = None,
) -> RollbackPlan:
    plan, now_iso = RollbackPlan(), iso(now)
    deps = ds.by_number(deployments)
    live = ds.live_deployment(app, deps)
    work = {d.metadata.name: d.status.model_copy(deep=True) for d in deps}
    serving = live.metadata.name if live is not None else "no release"

    for d in deps:
        name, st = d.metadata.name, work[d.metadata.name]
        if d is live or st.phase in DEPLOYMENT_TERMINAL or st.phase == "Live" or d.status.live_time:
            continue
        if ds.verdict(d) is not None:
            continue  # already decided (here or by source); rollout ends it
        bad = failing_instance(name, instances)
        restarted = restarted_instance(name, instances) if bad is None else None
        if bad is not None:
            reason = bad.status.reason
            message = f"instance {bad.metadata.name}: {bad.status.message or bad.status.reason}"
        elif restarted is not None:
            # A restart before promotion (inside min_ready) fails the release even when the
            # process came back ready: it would crash again once it took traffic.
            reason = REASON_CRASH_LOOP
            message = (
                f"instance {restarted.metadata.name} restarted {restarted.status.restarts} time(s) "
                f"before the release went live"
            )
        else:
            continue
        # The verdict, not the phase: rollout (the phase's one writer) ends the release on it.
        set_condition(st, ds.COND_FAILING, "True", reason, message, now_iso)
        plan.notes.setdefault(name, []).append(
            ("Warning", reason, f"{name} failed: {message}; {serving} keeps serving")
        )
        plan.stop += [
            i.metadata.name for i in ds.instances_of(name, instances) if i.spec.desired == "Running"
        ]

    if live is not None and work[live.metadata.name].phase == "Live":
        _judge_live(app, live, deps, instances, work[live.metadata.name], now, settings, plan, watch)

    for d in deps:
        if work[d.metadata.name].model_dump() != d.status.model_dump():
            plan.deployments[d.metadata.name] = work[d.metadata.name]
    return plan


def _judge_live(
    app: App,
    live: Deployment,
    deps: list[Deployment],
    instances: list[Instance],
    st: DeploymentStatus,
    now: float,
    settings: RollbackSettings,
    plan: RollbackPlan,
    watch: Stopwatch | None = None,
) -> None:
    name, now_iso, window = live.metadata.name, iso(now), settings.unhealthy_window_seconds
    health = ds.health_of(name, instances)
    reason, message = {
        "True": ("InstancesReady", f"{name} has ready instances"),
        "False": ("NoReadyInstances", f"no instance of {name} is ready"),
        "Unknown": ("NoRunningInstances", f"no instance of {name} is running yet"),
    }[health]
    before = st.condition("Healthy")
    was = before.status if before is not None else None
    set_condition(st, "Healthy", health, reason, message, now_iso)
    restarts, restarted = ds.restarts_of(name, instances), False
    if st.restarts_seen is None or restarts < st.restarts_seen:
        st.restarts_seen = restarts  # the baseline: what it had when it went live (or was replaced)
    elif restarts > st.restarts_seen:
        st.restarts_seen, restarted = restarts, True
    # One failure: the app's own restart (the agent counts only those) or a turn to failing.
    # A crash seen in one look is both; it counts once.
    failure = restarted or (health == "False" and was != "False")
    if failure:
        st.last_restart_time = now_iso  # the last failure of the incident
        if st.failing_since is None:
            st.failing_since, st.failing_restarts = now_iso, 1
            what = message if health == "False" else f"an instance of {name} restarted ({restarts} restarts)"
            plan.notes.setdefault(name, []).append(
                ("Warning", "Unhealthy", f"{what}; it still takes traffic")
            )
        else:
            st.failing_restarts += 1
    if st.failing_since is None:
        return
    stable = max(settings.stable_seconds, ds.min_ready_seconds(live))
    healthy = st.condition("Healthy")
    if health == "True" and healthy is not None:
        # Over only after a whole stable period ready without a failure: a release whose
        # crashes are separated by brief recoveries stays one incident (flapping is one).
        quiet_since = max(healthy.last_transition_time or now_iso, st.last_restart_time or now_iso)
        quiet = ds.waited(watch, f"quiet/{name}", quiet_since, now)
        if quiet >= stable:
            st.failing_since, st.failing_restarts = None, 0
            plan.notes.setdefault(name, []).append(
                ("Normal", "Recovered", f"{name} has been ready for {stable:g}s without a failure")
            )
            return
        plan.requeue_after = stable - quiet
    repeated = st.failing_restarts >= settings.failures_to_roll_back
    down = (
        ds.age(watch, f"down/{name}", healthy.last_transition_time, now)
        if (health == "False" and healthy is not None)
        else 0.0
    )
    if not repeated and down < window:
        if health == "False":
            plan.requeue_after = min(plan.requeue_after or window, window - down)
        return
    incident = ds.age(watch, f"incident/{name}", st.failing_since, now)
    why = (
        f"failed {st.failing_restarts} times in {incident:.0f}s (restarts or failing checks)"
        if repeated
        else f"failing for {window:g}s (no instance ready)"
    )
    rolled = st.condition(ds.COND_ROLLED_BACK)
    if not app.spec.rollback_on_failure or (rolled is not None and rolled.status == "True"):
        return
    n = deployment_number(name)
    newer = [d for d in deps if deployment_number(d.metadata.name) > n]
    handled = next((d for d in newer if ds.pins_config(d)), None)
    if handled is None and any(not ds.is_terminal(d) for d in newer):
        return  # a newer release is on its way; let it land or fail first
    if handled is None:
        target = ds.last_good_before(live, deps)
        if target is None:
            set_condition(
                st,
                "RollbackPossible",
                "False",
                "NoEarlierRelease",
                f"no earlier release of {app.metadata.name} went live cleanly",
                now_iso,
            )
            return
        handled = plan.new_deployment = rollback_deployment(app, live, target, deps)
        plan.notes.setdefault(name, []).append(
            (
                "Warning",
                "RollingBack",
                f"rolling back {name} to {target.metadata.name}: {why} (release {handled.metadata.name})",
            )
        )
    # The verdict: rollout (the phase's one writer) ends it Failed/RolledBack once replaced.
    set_condition(
        st,
        ds.COND_ROLLED_BACK,
        "True",
        "RolledBack",
        f"{why}; rolled back to {handled.spec.rollback_of or handled.spec.commit[:7]} ({handled.metadata.name})",
        now_iso,
    )


class RollbackController(AppKeyedController):
    name = "rollback"
    watches = ("App", "Deployment", "Instance")

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        recorder: EventRecorder | None = None,
        *,
        settings: RollbackSettings | None = None,
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self.settings = settings or RollbackSettings()
        self.watch = Stopwatch(clock)

    def reconcile(self, key: str) -> Result | None:
        try:
            app: App = self.store.get(App, key)
        except NotFound:
            return DONE  # rollout tears a deleted App's releases down
        deps = [d for d in self.store.list(Deployment, {LABEL_APP: key})[0] if d.spec.app == key]
        insts = [i for i in self.store.list(Instance, {LABEL_APP: key})[0] if i.spec.app == key]
        plan = plan_rollback(app, deps, insts, self.clock.now(), self.settings, self.watch)
        if plan.new_deployment is not None:  # before marking the bad one, so a crash cannot lose it
            planned = plan.new_deployment
            create_next_release(self.store, key, lambda n, _deps: (renumber(planned, n), True))
        by_name = {d.metadata.name: d for d in deps}
        for name, status in plan.deployments.items():
            obj = by_name[name].copy_deep()
            obj.status = status
            written = self.store.update_status(obj)
            for type_, reason, message in plan.notes.get(name, []):
                self.recorder.record(written, type_, reason, message)
        ds.stop_instances(self.store, [i for i in insts if i.metadata.name in set(plan.stop)])
        return Result(requeue_after=plan.requeue_after) if plan.requeue_after is not None else DONE
