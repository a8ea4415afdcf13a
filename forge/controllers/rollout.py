"""Rollout: blue-green releases of one App (key = app name).

Decisions live in ``plan_rollout`` / ``plan_teardown`` (pure functions of the App's records
and ``now``); ``RolloutController.reconcile`` reads the world, asks for a plan and applies it.

- The **wanted** release is the newest Deployment that is neither live nor finished.
  Once it has a manifest it runs the build ``status.build`` names (the first release of the
  same commit and build inputs that went live, so config releases and rollbacks need no build)
  and gets ``replicas`` Instances ``APP-N-I`` beside the live ones;
  when every replica is ready *and has stayed ready for* ``health.min_ready`` (default 10 s;
  not for a rollback, whose release proved itself before) it is promoted:
  ``App.status.liveDeployment`` is written first
  (that is the traffic switch the router follows), then the Deployment becomes Live and the
  one before Superseded. Superseded Instances drain for ``drain_seconds`` (default 10 s) and
  are then asked to stop. ``replicas: 0`` promotes at once with no Instances (scaled to zero).
- A newer Deployment Cancels every older one not yet live, whatever the newer one's fate —
  once it is known to be newer: a push counts only after the source controller ordered it by
  history (it has a manifest, or ended for a reason other than ``StalePush``), so a late or
  replayed older push never cancels a newer release.
- The **progress deadline** (default 120 s, plus the release's own ``build.timeout`` and
  release-command timeout once its manifest is known) runs from ``status.createdTime`` — set by
  the API on create, else by this controller the first time it sees the Deployment — so source
  fetch, build and start all count. Past it the release is Failed (ProgressDeadlineExceeded)
  and its Instances stop; the live release is untouched. It and ``min_ready`` are measured by
  a ``Stopwatch``: monotonic from this process's first look, so a wall-clock step moves neither.
  ``min_ready`` counts from that first look alone (``Stopwatch.observed``): a step, a skewed
  node, or a leader change can lengthen it (a new leader waits it out again), never shorten it. The
  drains (superseded, moved off a draining node, scaled down) are timed on it too.
  The deadline's first reading counts at most half of it as spent: a step in a new leader's
  first seconds cannot fail a release at once (sim seed 133).
- Lost Instances (and Failed ones of the live release) are replaced: ``APP-N-I-rK``.
- **Config changes roll out like code**: when the App's env/domains/nodeSelector or its Secret's
  version differ from what the newest release applied (and nothing is in flight), a new
  Deployment with the live commit and ``trigger.type: config`` goes through the same gate.
  A rollback pins its older config until the App is edited again (``status.appGeneration``).
- **Scale in place**: replica counts (web and each process type) are applied to the live
  release itself — missing slots get Instances, the ones that stay are untouched, and a
  surplus Instance first leaves routing (``spec.unroutedTime``) and is stopped a drain later.
- **App deleted**: every Instance is asked to stop; Instances that have stopped (or never ran,
  or sit on a node that is gone or not Ready, so no agent can confirm) are deleted, then
  Deployments without Instances, then the App's shipped log lines. gc need not know about it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from forge.clock import Clock, Stopwatch, iso
from forge.config import Config
from forge.controllers import deploystate as ds
from forge.controllers.base import DONE, AppKeyedController, Result
from forge.controllers.cache import read_only
from forge.errors import AlreadyExists, NotFound
from forge.events import EventRecorder
from forge.models import (
    DEPLOYMENT_TERMINAL,
    INSTANCE_TERMINAL,
    LABEL_APP,
    LABEL_NODE,
    App,
    AppStatus,
    Deployment,
    DeploymentConfig,
    DeploymentPhase,
    DeploymentStatus,
    Instance,
    Manifest,
    Node,
    OneShot,
    ReleaseCommandSpec,
    ReleasePhase,
    Secret,
    Trigger,
    next_release_number,
    set_condition,
)
from forge.release import create_next_release, new_release, renumber
from forge.store.base import Store, WatchEvent

REASON_MOVING: Final[str] = "Moving"
REASON_SCALED_DOWN: Final[str] = "ScaledDown"
REASON_STALE_PUSH: Final[str] = "StalePush"  # the source controller's verdict on a late push
BUILD_FAILURES: Final[frozenset[str]] = frozenset({"BuildFailed", "FetchFailed"})
MAX_REPLACEMENTS = 10  # per replica slot, so a machine-killing release cannot spawn forever
PHASE_ORDER = {"": 0, "Pending": 1, "Building": 2, "Starting": 3, "Live": 4}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutSettings:
    drain_seconds: float = 10.0
    progress_deadline_seconds: float = 120.0


@dataclass(frozen=True)
class Note:
    """An Event to record once the status write it describes has succeeded."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def iso_now(plan: RolloutPlan) -> str:
    return plan.now_iso


@dataclass
class RolloutPlan:
    app_status: AppStatus | None = None
    deployments: dict[str, DeploymentStatus] = field(default_factory=dict)
    notes: dict[str, list[Note]] = field(default_factory=dict)
    create: list[Instance] = field(default_factory=list)
    stop: list[str] = field(default_factory=list)
    unroute: list[str] = field(
        default_factory=list
    )  # routing toggled: out (surplus) or back in (wanted again)
    new_deployment: Deployment | None = None
    requeue_after: float | None = None
    now_iso: str = ""


def reusable_build(
    dep: Deployment, manifest: Manifest, deps: list[Deployment], work: dict[str, DeploymentStatus]
) -> str:
    """The build ``dep`` runs: the first earlier release of the same commit and build inputs whose
    build did not fail (a config release, a rollback, a replayed push reuse it on every node that
    still has it, and rebuild it under that name where it is gone); ``forge deploy --force``
    builds its own."""
    if dep.spec.trigger.force:
        return dep.metadata.name
    key = ds.build_inputs(manifest)
    for d in deps:
        st = work[d.metadata.name]
        if d is dep:
            break
        if (
            d.spec.commit == dep.spec.commit
            and st.manifest is not None
            and ds.build_inputs(st.manifest) == key
            and st.reason not in BUILD_FAILURES
            and (st.live_time or st.phase == "Live")
        ):
            return st.build or d.metadata.name
    return dep.metadata.name


def is_ordered(dep: Deployment) -> bool:
    """Whether ``dep`` may cancel older releases: anything but a push the source controller has
    not yet ordered by history (no manifest, no verdict, not ended), and never a push it found
    stale (``SourceReady`` False with ``StalePush``, whichever of its writes is seen)."""
    src = dep.status.condition(ds.COND_SOURCE)
    if dep.status.reason == REASON_STALE_PUSH or (
        src is not None and src.status == "False" and src.reason == REASON_STALE_PUSH
    ):
        return False
    if dep.spec.trigger.type != "webhook":
        return True
    return (
        dep.status.manifest is not None
        or dep.status.phase in DEPLOYMENT_TERMINAL
        or ds.verdict(dep) is not None
    )


def rollout_phase(current: DeploymentPhase, slots: dict[ds.Slot, Instance], replicas: int) -> DeploymentPhase:
    """Building while any replica is not yet a process, then Starting; never moves back."""
    building = len(slots) < replicas or any(i.status.phase in ds.BUILDING_PHASES for i in slots.values())
    computed: DeploymentPhase = "Building" if building else "Starting"
    return computed if PHASE_ORDER[computed] > PHASE_ORDER.get(current, 0) else current


def is_moving_off(inst: Instance, app: App, draining: frozenset[str]) -> bool:
    """Running on a node being drained, and free to move (its app's storage lives elsewhere)."""
    node = inst.spec.node
    return (
        node is not None
        and node in draining
        and inst.spec.desired == "Running"
        and inst.status.phase not in INSTANCE_TERMINAL
        and app.status.storage_node != node
    )


def ensure_slots(
    app: App,
    dep: Deployment,
    instances: list[Instance],
    secret: Secret | None,
    live: bool,
    draining: frozenset[str] = frozenset(),
    cfg: DeploymentConfig | None = None,
) -> tuple[list[Instance], list[str]]:
    """Instances to create (missing or replacement) and to stop (replaced; out of range, except
    for the live release, whose surplus ``scale_down`` takes out of routing first).

    An Instance on a draining node gets a replacement too, but is not stopped here: ``_stops``
    keeps a ready older incarnation serving until the slot's new one is ready."""
    cfg = cfg or ds.effective_config(app, dep, secret)
    create, stop = [], []
    cur = ds.current_by_slot(dep.metadata.name, instances)
    wanted = ds.wanted_slots(cfg, dep.status.manifest)
    for proc, idx in wanted:
        inst = cur.get((proc, idx))
        if inst is None:
            create.append(ds.new_instance(app, dep, cfg, secret, idx, process=proc))
        elif ds.needs_replacement(inst, live) and ds.replacement_of(inst) < MAX_REPLACEMENTS:
            create.append(
                ds.new_instance(app, dep, cfg, secret, idx, ds.replacement_of(inst) + 1, process=proc)
            )
            stop.append(inst.metadata.name)
        elif is_moving_off(inst, app, draining) and ds.replacement_of(inst) < MAX_REPLACEMENTS:
            create.append(
                ds.new_instance(app, dep, cfg, secret, idx, ds.replacement_of(inst) + 1, process=proc)
            )
    keep = set(wanted)
    if not live:
        stop += [
            i.metadata.name for slot, i in cur.items() if slot not in keep and i.spec.desired == "Running"
        ]
    return create, stop


def scale_down(
    dep: Deployment,
    cfg: DeploymentConfig,
    instances: list[Instance],
    now: float,
    drain_seconds: float,
    wakes: list[float],
    watch: Stopwatch | None = None,
) -> tuple[list[str], list[str]]:
    """The live release's Instances beyond its counts: (to toggle routing for, to stop) — out
    of routing when surplus, back in when a scale up wants the slot again before it stopped.

    Scaling in place never replaces what stays; a surplus Instance first leaves routing
    (``spec.unroutedTime``; the router skips it) and is stopped ``drain_seconds`` later, so no
    request is sent to a process that is shutting down."""
    keep = set(ds.wanted_slots(cfg, dep.status.manifest))
    unroute, stop = [], []
    for slot, inst in sorted(ds.current_by_slot(dep.metadata.name, instances).items()):
        if inst.spec.desired != "Running":
            continue
        if slot in keep:
            if inst.spec.unrouted_time is not None:
                unroute.append(inst.metadata.name)  # scaled back up before it stopped: route it again
            continue
        if inst.spec.unrouted_time is None:
            unroute.append(inst.metadata.name)
            # The drain starts now (the time written is this plan's): the Stopwatch marks it
            # now, so a wall-clock step before the next look cannot eat it.
            ds.age(watch, f"unrouted/{inst.metadata.name}", iso(now), now)
            wakes.append(drain_seconds)
            continue
        left = drain_seconds - ds.age(watch, f"unrouted/{inst.metadata.name}", inst.spec.unrouted_time, now)
        if left <= 0:
            stop.append(inst.metadata.name)
        else:
            wakes.append(left)
    return unroute, stop


def release_command(dep: Deployment) -> ReleaseCommandSpec | None:
    """The manifest's ``release`` section, when this release runs one (a rollback does not: it
    goes back to code whose schema changes already ran)."""
    m = dep.status.manifest
    if m is None or m.release is None or not m.release.command or dep.spec.trigger.type == "rollback":
        return None
    return m.release


def release_gate(
    app: App,
    dep: Deployment,
    st: DeploymentStatus,
    instances: list[Instance],
    secret: Secret | None,
    plan: RolloutPlan,
    note: Any,
) -> bool:
    """Run the release command once before any Instance of ``dep`` starts; True once it succeeded.
    Its end is recorded in ``status.releasePhase`` (this controller's field), so it runs at most
    once per Deployment whatever restarts: the one-shot Instance has a fixed name."""
    rel = release_command(dep)
    if rel is None:
        return True
    name = f"{dep.metadata.name}-release"
    if st.release_phase is not None and st.release_phase.phase == "Succeeded":
        return True
    if st.release_phase is not None and st.release_phase.phase == "Failed":
        return False
    inst = next((i for i in instances if i.metadata.name == name), None)
    if st.release_phase is None:
        st.release_phase = ReleasePhase(instance=name)
        note(
            dep.metadata.name,
            "Normal",
            "ReleaseCommandStarted",
            f"{dep.metadata.name}: running {rel.command!r}",
        )
    if inst is None:
        cfg = ds.effective_config(app, dep, secret)
        plan.create.append(
            ds.oneshot_instance(
                app,
                dep,
                cfg,
                secret,
                name,
                OneShot(
                    type="release",
                    command=rel.command,
                    timeout_seconds=rel.timeout_seconds,
                ),
            )
        )
        return False
    rp = st.release_phase
    if inst.status.phase == "Succeeded":
        rp.phase, rp.exit_code, rp.reason, rp.message = (
            "Succeeded",
            inst.status.exit_code,
            "",
            "exited with code 0",
        )
        note(
            dep.metadata.name,
            "Normal",
            "ReleaseCommandSucceeded",
            f"{dep.metadata.name}: release command succeeded",
        )
        return True
    if inst.status.phase in ("Failed", "Lost") or (
        inst.spec.desired == "Stopped" and inst.status.phase == "Stopped"
    ):
        timeout = inst.status.reason == "Timeout"
        rp.phase, rp.exit_code = "Failed", inst.status.exit_code
        rp.reason = "ReleaseCommandTimeout" if timeout else "ReleaseCommandFailed"
        rp.message = (inst.status.message or inst.status.reason or inst.status.phase)[:300]
        st.phase, st.reason, st.finished_time = "Failed", rp.reason, iso_now(plan)
        st.message = (
            f"release command {'timed out' if timeout else 'failed'}: {rp.message} "
            f"(forge logs --deployment {dep.metadata.name} --release)"
        )
        note(dep.metadata.name, "Warning", rp.reason, f"{dep.metadata.name} failed: {st.message}")
    return False


def plan_rollout(
    app: App,
    deployments: list[Deployment],
    instances: list[Instance],
    secret: Secret | None,
    now: float,
    settings: RolloutSettings,
    url: str,
    draining: frozenset[str] = frozenset(),
    watch: Stopwatch | None = None,
) -> RolloutPlan:
    """``watch`` measures the waits (progress deadline, min_ready) where they are observed;
    without one they are read off the wall clock."""
    plan, now_iso = RolloutPlan(), iso(now)
    deps = ds.by_number(deployments)
    work = {d.metadata.name: d.status.model_copy(deep=True) for d in deps}
    wakes: list[float] = []

    def note(dep: str, type_: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        plan.notes.setdefault(dep, []).append(Note(type_, reason, message))

    for d in deps:
        st = work[d.metadata.name]
        if st.phase not in DEPLOYMENT_TERMINAL:
            st.created_time = st.created_time or now_iso
            st.app_generation = st.app_generation or app.metadata.generation
            ended = ds.verdict(d)
            if ended is not None and st.phase != "Live":
                # Another controller's verdict (source: cannot deploy; rollback: fails before
                # going live): this controller alone writes the phase, and ends it here.
                st.phase, st.reason, st.message = ended
                st.finished_time = st.finished_time or now_iso
    live = ds.live_deployment(app, deps)
    # A newer release wins over every older one not yet live — once it is known to be newer: a
    # push counts only after the source controller has ordered it by history (it has a
    # manifest, or ended for a reason of its own); a late or replayed older push never cancels.
    winner: Deployment | None = None
    for d in reversed(deps):
        st = work[d.metadata.name]
        if (
            winner is not None
            and st.phase not in DEPLOYMENT_TERMINAL
            and st.phase != "Live"
            and d is not live
        ):
            st.phase, st.reason, st.finished_time = "Cancelled", "NewerRelease", now_iso
            st.message = f"{winner.metadata.name} was released before it went live"
            note(d.metadata.name, "Normal", "Cancelled", f"{d.metadata.name} cancelled: {st.message}")
        elif winner is None and is_ordered(d):
            winner = d

    in_flight = [
        d for d in deps if d is not live and work[d.metadata.name].phase not in DEPLOYMENT_TERMINAL | {"Live"}
    ]
    wanted = in_flight[-1] if in_flight else None
    plan.now_iso = now_iso
    if wanted is not None:
        name, st = wanted.metadata.name, work[wanted.metadata.name]
        rel = release_command(wanted)
        # The deadline covers the time the release may take by its own manifest (its build's
        # timeout, its release command's) on top of the progress allowance for fetch and start.
        allowed = (
            settings.progress_deadline_seconds
            + ds.build_timeout_seconds(wanted.model_copy(update={"status": st}))
            + (rel.timeout_seconds if rel is not None else 0.0)
        )
        # A leader's first look reads the age off the wall clocks (a restart loop must not reset
        # the deadline for good), but a step in its first seconds could put it hours past: at
        # most half the deadline counts as spent then, so a step cannot fail a release at once.
        age = ds.age(watch, f"created/{name}", st.created_time, now, at_most=allowed / 2)
        deadline = now + allowed - age
        cfg = ds.effective_config(app, wanted, secret)
        n_slots = len(ds.wanted_slots(cfg, st.manifest))
        all_ready = (
            st.manifest is not None
            and ds.count_ready(name, instances) >= n_slots
            and (rel is None or (st.release_phase is not None and st.release_phase.phase == "Succeeded"))
        )
        # Ready is not enough: every Instance must *stay* ready for health.min_ready first, so a
        # release that passes one probe and then dies never takes a request.
        # Asked on every look, not only once all are ready: the Stopwatch starts each
        # Instance's wait when it is first seen ready (a later first look is bounded, slower).
        waited = ds.min_ready_wait(wanted, instances, now, watch)
        settle = waited if all_ready else 0.0
        if all_ready and settle <= 0:
            live = wanted  # promote: everything below follows the new live release
            st.applied_config = cfg
        elif now >= deadline:
            st.phase, st.reason, st.finished_time = "Failed", "ProgressDeadlineExceeded", now_iso
            st.message = ds.deadline_message(name, allowed, st.manifest, instances)
            note(name, "Warning", "ProgressDeadlineExceeded", f"{name} failed: {st.message}")
        elif st.manifest is not None:
            st.applied_config = cfg
            st.build = st.build or reusable_build(wanted, st.manifest, deps, work)
            view = wanted.model_copy(update={"status": st})  # its Instances run st.build
            if release_gate(app, view, st, instances, secret, plan, note):
                create, stop = ensure_slots(app, view, instances, secret, live=False, draining=draining)
                plan.create += create
                plan.stop += stop
                slots = ds.current_by_slot(name, instances + create)
                st.phase = rollout_phase(st.phase, slots, n_slots)
            elif st.phase != "Failed":
                st.phase = rollout_phase(st.phase, {}, 1)  # Building: the release command runs first
            if st.phase != "Failed":
                wakes.append(deadline - now)
            if settle > 0:
                wakes.append(settle)
        else:
            st.phase = st.phase or "Pending"
            wakes.append(deadline - now)

    for d in deps:  # phases follow App.status.liveDeployment
        name, st = d.metadata.name, work[d.metadata.name]
        if d is live and st.phase != "Live":
            st.phase, st.reason, st.message = "Live", "", ""
            st.live_time = st.live_time or now_iso
            note(name, "Normal", "Live", f"{name} is live (commit {d.spec.commit[:7]})")
        elif d is not live and st.phase == "Live":
            successor = live.metadata.name if live else "nothing"
            if ds.is_rolled_back(d):
                cond = d.status.condition(ds.COND_ROLLED_BACK)
                st.phase, st.finished_time, st.reason = "Failed", now_iso, "RolledBack"
                st.message = cond.message if cond is not None else ""
                note(name, "Warning", "RolledBack", f"{name} rolled back: {successor} is live")
            else:
                st.phase, st.reason, st.superseded_time = "Superseded", "Superseded", now_iso
                st.message = f"replaced by {successor}"
                note(name, "Normal", "Superseded", f"{name} superseded by {successor}; draining")

    if live is not None and live is not wanted and live.status.manifest is not None:
        cfg = ds.effective_config(app, live, secret)
        if not config_pinned(app, deps, work):
            cfg = ds.with_counts(cfg, app)  # a scale applies to the live release in place
        create, stop = ensure_slots(app, live, instances, secret, live=True, draining=draining, cfg=cfg)
        unroute, surplus = scale_down(live, cfg, instances, now, settings.drain_seconds, wakes, watch)
        plan.create += create
        plan.stop += stop + surplus
        plan.unroute += unroute
        work[live.metadata.name].applied_config = cfg
    plan.stop += _stops(work, instances, now, settings, wakes, watch)

    for d in deps:
        st = work[d.metadata.name]
        st.observed_generation = d.metadata.generation
        if st.model_dump() != d.status.model_dump():
            plan.deployments[d.metadata.name] = st
    plan.app_status = _app_status(app, deps, work, instances + plan.create, live, wanted, url, now_iso)
    plan.new_deployment = _config_release(app, deps, work, live, secret)
    plan.requeue_after = max(0.0, min(wakes)) if wakes else None
    plan.stop = sorted(set(plan.stop))
    return plan


def _stops(
    work: dict[str, DeploymentStatus],
    instances: list[Instance],
    now: float,
    settings: RolloutSettings,
    wakes: list[float],
    watch: Stopwatch | None = None,
) -> list[str]:
    """Instances to ask to stop now; a drain still running adds its remaining time to ``wakes``.
    Drains are measured by ``watch`` (monotonic where observed), so a wall-clock step neither
    cuts one short nor stretches it."""
    stop: list[str] = []
    slots = {n: ds.current_by_slot(n, instances) for n in {i.spec.deployment for i in instances}}
    for inst in instances:
        if inst.spec.desired != "Running":
            continue
        dep_name = inst.spec.deployment
        st = work.get(dep_name)
        if inst.spec.oneshot is not None:
            if inst.spec.oneshot.type != "release":
                continue  # cron and one-off runs belong to their own owners
            if (
                inst.status.phase in ("Succeeded", "Failed")
                or st is None
                or st.phase in ("Failed", "Cancelled")
            ):
                stop.append(inst.metadata.name)  # ended (its record stays) or its release is gone
            continue
        current = slots[dep_name].get(ds.slot_of(inst))
        if (
            st is not None
            and st.phase not in ("Failed", "Cancelled", "Superseded")
            and current is not None
            and current is not inst
            and ds.is_ready(inst)
            and current.spec.desired == "Running"
            and current.status.phase not in INSTANCE_TERMINAL
        ):
            # Moving (a drain): the old one serves until its replacement is ready, then drains
            # like a superseded release before it is asked to stop.
            if not ds.is_ready(current):
                continue
            since = ds.ready_since(current)
            left = settings.drain_seconds - ds.age(watch, f"ready/{current.metadata.name}", since, now)
            if left > 0:
                wakes.append(left)
                continue
        if st is None or st.phase in ("Failed", "Cancelled") or current is not inst:
            stop.append(inst.metadata.name)
        elif st.phase == "Superseded":
            left = settings.drain_seconds - ds.age(watch, f"superseded/{dep_name}", st.superseded_time, now)
            if left <= 0:
                stop.append(inst.metadata.name)
            else:
                wakes.append(left)
    return stop


def _app_status(
    app: App,
    deps: list[Deployment],
    work: dict[str, DeploymentStatus],
    instances: list[Instance],
    live: Deployment | None,
    wanted: Deployment | None,
    url: str,
    now_iso: str,
) -> AppStatus | None:
    new = app.status.model_copy(deep=True)
    new.observed_generation = app.metadata.generation
    if deps:
        new.latest_deployment = deps[-1].metadata.name
    if live is not None:
        new.url = url
        new.live_deployment = live.metadata.name  # Available follows from it (health's field)
    newest = deps[-1] if deps else None
    if wanted is not None and work[wanted.metadata.name].phase not in DEPLOYMENT_TERMINAL | {"Live"}:
        wn = wanted.metadata.name
        set_condition(new, "Progressing", "True", "ReleaseProgressing", f"{wn} is {work[wn].phase}", now_iso)
    elif newest is not None and work[newest.metadata.name].phase == "Failed":
        st = work[newest.metadata.name]
        msg = f"{newest.metadata.name} failed: {st.message or st.reason}"
        set_condition(new, "Progressing", "False", st.reason or "ReleaseFailed", msg, now_iso)
    elif live is not None:
        set_condition(
            new, "Progressing", "True", "ReleaseAvailable", f"{live.metadata.name} is live", now_iso
        )
    return new if new.model_dump() != app.status.model_dump() else None


def config_basis(deps: list[Deployment], work: dict[str, DeploymentStatus]) -> Deployment | None:
    """The newest release that counts for config: a push found stale never ran anything."""
    counted = [d for d in deps if work[d.metadata.name].reason != REASON_STALE_PUSH]
    return counted[-1] if counted else None


def config_pinned(app: App, deps: list[Deployment], work: dict[str, DeploymentStatus]) -> bool:
    """A rollback restored an older config (counts too) and the App has not been edited since."""
    basis = config_basis(deps, work)
    return (
        basis is not None
        and ds.pins_config(basis)
        and app.metadata.generation <= work[basis.metadata.name].app_generation
    )


def _config_release(
    app: App,
    deps: list[Deployment],
    work: dict[str, DeploymentStatus],
    live: Deployment | None,
    secret: Secret | None,
) -> Deployment | None:
    """A new release of the live commit when the App's config moved past the newest release.

    Replica counts are not config a release is made for: they change in place."""
    newest = config_basis(deps, work)
    if live is None or live.status.manifest is None or newest is None:
        return None
    st = work[newest.metadata.name]
    if newest is not live and st.phase != "Failed":
        return None  # something is in flight; it decides first
    if config_pinned(app, deps, work):
        return None
    have = st.applied_config or ds.effective_config(app, newest, secret)
    want = ds.app_config(app, secret)
    if ds.same_config(want, have, counts=False):
        return None
    return new_release(
        app,
        next_release_number(deps),
        commit=live.spec.commit,
        ref=live.spec.ref,
        repo=live.spec.repo,
        trigger=Trigger(type="config"),
        config=want,
        owned=True,
    )


def plan_teardown(
    deployments: list[Deployment], instances: list[Instance], unreachable: frozenset[str] = frozenset()
) -> tuple[list[str], list[str], list[str]]:
    """App gone: (instances to stop, instances to delete, deployments to delete).

    An Instance is deleted once it stopped — or once it is asked to and its node is
    ``unreachable`` (gone, or not Ready by the nodes controller's verdict, Unknown included): no
    agent there can confirm the stop, and the App is gone, so nothing waits for it. The node's
    agent stops the process itself when it is back and finds the Instance gone."""
    stop = [i.metadata.name for i in instances if i.spec.desired == "Running"]
    gone = [
        i.metadata.name
        for i in instances
        if i.spec.desired == "Stopped"
        and (
            i.status.phase in INSTANCE_TERMINAL
            or (i.status.phase in ("", "Pending") and not i.spec.node)
            or (i.spec.node is not None and i.spec.node in unreachable)
        )
    ]
    left = {i.spec.deployment for i in instances if i.metadata.name not in gone}
    return stop, gone, [d.metadata.name for d in deployments if d.metadata.name not in left]


class RolloutController(AppKeyedController):
    name = "rollout"
    watches = ("App", "Deployment", "Instance", "Secret", "Node")

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        recorder: EventRecorder | None = None,
        *,
        settings: RolloutSettings | None = None,
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self.settings = settings or RolloutSettings()
        self.watch = Stopwatch(clock)

    def all_keys(self) -> Iterable[str]:
        """Every App, plus apps that are gone but still have releases to tear down."""
        apps = {a.metadata.name for a in read_only(self.store, App)}
        return sorted(apps | {d.spec.app for d in read_only(self.store, Deployment)})

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        obj = event.object
        if obj.kind != "Node":
            return super().keys_for(event)
        insts = read_only(self.store, Instance, {LABEL_NODE: obj.metadata.name})
        if event.type == "DELETED" or not obj.status.is_true("Ready"):
            # a node gone or unreachable: a deleted App's teardown may stop waiting for it
            return sorted({i.spec.app for i in insts if i.spec.desired == "Stopped"})
        if not obj.spec.drain:
            return ()
        return sorted({i.spec.app for i in insts if i.spec.desired == "Running"})

    def _draining(self, insts: list[Instance]) -> frozenset[str]:
        """The nodes among this app's Instances' that are being drained."""
        out = set()
        for name in sorted({i.spec.node for i in insts if i.spec.node and i.spec.desired == "Running"}):
            try:
                node: Node = self.store.get(Node, name)
            except NotFound:
                continue
            if node.spec.drain:
                out.add(name)
        return frozenset(out)

    def _read(self, key: str) -> tuple[list[Deployment], list[Instance]]:
        deps = [d for d in self.store.list(Deployment, {LABEL_APP: key})[0] if d.spec.app == key]
        insts = [i for i in self.store.list(Instance, {LABEL_APP: key})[0] if i.spec.app == key]
        return deps, insts

    def reconcile(self, key: str) -> Result | None:
        try:
            app: App = self.store.get(App, key)
        except NotFound:
            return self._teardown(key)
        deps, insts = self._read(key)
        try:
            secret: Secret | None = self.store.get(Secret, key)
        except NotFound:
            secret = None
        if secret is not None and secret.spec.app != key:
            secret = None
        url = ds.app_url(key, self.config.domain, self.config.tls, self.config.http_listen)
        plan = plan_rollout(
            app, deps, insts, secret, self.clock.now(), self.settings, url, self._draining(insts), self.watch
        )
        self._apply(app, deps, insts, plan)
        return Result(requeue_after=plan.requeue_after) if plan.requeue_after is not None else DONE

    def _apply(self, app: App, deps: list[Deployment], insts: list[Instance], plan: RolloutPlan) -> None:
        if plan.app_status is not None:  # first: the traffic switch is what everything follows
            obj = app.copy_deep()
            obj.status = plan.app_status
            self.store.update_status(obj)
        by_name = {d.metadata.name: d for d in deps}
        # the newly Live release before the one it supersedes (see deploystate.live_deployment)
        for name, status in sorted(plan.deployments.items(), key=lambda kv: kv[1].phase != "Live"):
            obj = by_name[name].copy_deep()
            obj.status = status
            written = self.store.update_status(obj)
            for n in plan.notes.get(name, []):
                self.recorder.record(written, n.type, n.reason, n.message)
        for inst in plan.create:
            try:
                self.store.create(inst)
            except AlreadyExists:
                continue  # created by an earlier run we did not see finish
        ds.stop_instances(self.store, [i for i in insts if i.metadata.name in plan.stop])
        for inst in plan.create:
            moved = next(
                (
                    i
                    for i in insts
                    if i.spec.deployment == inst.spec.deployment
                    and ds.slot_of(i) == ds.slot_of(inst)
                    and i.spec.node
                    and i.metadata.name not in plan.stop
                    and i.status.phase not in INSTANCE_TERMINAL
                    and i.spec.desired == "Running"
                ),
                None,
            )
            if moved is not None:
                self.recorder.record(
                    moved,
                    "Normal",
                    REASON_MOVING,
                    f"node {moved.spec.node} is draining: {inst.metadata.name} replaces it elsewhere",
                )
        for inst in insts:
            if inst.metadata.name not in plan.unroute:
                continue
            obj = inst.copy_deep()  # toggles: out of routing, or back in when scaled up again
            obj.spec.unrouted_time = plan.now_iso if inst.spec.unrouted_time is None else None
            self.store.update(obj)
            if obj.spec.unrouted_time is not None:
                self.recorder.record(
                    obj,
                    "Normal",
                    REASON_SCALED_DOWN,
                    f"{obj.metadata.name} left routing; it stops after draining",
                )
        if plan.new_deployment is not None:
            planned = plan.new_deployment
            created, _ = create_next_release(
                self.store, app.metadata.name, lambda n, _deps: (renumber(planned, n), True)
            )
            self.recorder.record(
                app,
                "Normal",
                "ConfigChanged",
                f"config changed: releasing {created.metadata.name} (commit {created.spec.commit[:7]})",
            )

    def _unreachable(self, insts: list[Instance]) -> frozenset[str]:
        """The nodes among these Instances' that are gone or not Ready (False or Unknown)."""
        out = set()
        for name in sorted({i.spec.node for i in insts if i.spec.node}):
            try:
                node: Node = self.store.get(Node, name)
            except NotFound:
                out.add(name)
                continue
            ready = node.status.condition("Ready")
            if ready is not None and ready.status != "True":
                out.add(name)
        return frozenset(out)

    def _teardown(self, key: str) -> Result:
        deps, insts = self._read(key)
        stop, gone, dead = plan_teardown(deps, insts, self._unreachable(insts))
        ds.stop_instances(self.store, [i for i in insts if i.metadata.name in stop])
        for name in gone:
            try:
                self.store.delete(Instance, name)
            except NotFound:
                continue
        if len(gone) == len(insts) and len(dead) == len(deps):
            # Nothing of the App is left to ship lines (its Instances are gone, the API refuses
            # theirs): its shipped logs go with it — before its last Deployments, which keep the
            # name taken (the API refuses a new App of it), so a new App starts with none.
            removed = self.store.delete_app_logs(key)
            self.store.delete_app_series(key)
            if removed:
                log.info("rollout: deleted %d log lines of deleted app %s", removed, key)
        for name in dead:
            try:
                self.store.delete(Deployment, name)
            except NotFound:
                continue
        return DONE
