"""Pure facts about releases shared by the rollout, rollback and health controllers.

Everything here is a function of records already read (and ``now`` where time matters), except
``stop_instances``, the one write all three share. The three controllers meet only in the store, so they must agree on what
"live", "current instance", "ready" and "healthy" mean — this module is that agreement.

- The **live** release is ``App.status.liveDeployment`` (the rollout controller writes it
  first when promoting, so it is the truth); when it is unset or names a missing record, the
  newest Deployment in phase Live.
- A replica **slot** is ``(deployment, index)``; its Instances are ``APP-N-I`` and the
  replacements ``APP-N-I-rK``; the **current** one is the highest K.
- **Secret naming**: an App's Secret record is named like the App (``Secret/hello`` holds the
  env of App ``hello``); ``InstanceSpec.secret`` is that name, or None when there is none.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from forge.clock import Stopwatch, parse_iso
from forge.instancespec import (  # noqa: F401  (re-exported: the controllers' one vocabulary)
    DEFAULT_CPU,
    DEFAULT_MEMORY,
    app_config,
    build_inputs,
    effective_config,
    instance_spec,
    manifest_processes,
    oneshot_instance,
    same_config,
    secret_version,
    with_counts,
)
from forge.models import (
    DEPLOYMENT_TERMINAL,
    LABEL_APP,
    LABEL_DEPLOYMENT,
    LABEL_PROCESS,
    WEB,
    App,
    ConditionStatus,
    Deployment,
    DeploymentConfig,
    DeploymentPhase,
    Instance,
    Manifest,
    ObjectMeta,
    OwnerRef,
    Secret,
    deployment_number,
)
from forge.release import rollback_candidate
from forge.store.base import Store

# Reasons an agent reports that mean the release itself is broken (not the machine).
FAILING_REASONS: frozenset[str] = frozenset(
    {"BuildFailed", "HealthCheckFailed", "CrashLoopBackOff", "OOMKilled", "WrongPort"}
)
# Instance phases before the process exists: a slot in one of these is still building.
BUILDING_PHASES: frozenset[str] = frozenset({"", "Pending", "Scheduled", "Building"})
DEFAULT_MIN_READY = 10.0


# Verdicts other controllers hand the rollout controller (the one writer of a Deployment's
# phase, reason and message) as conditions they own; ``verdict`` turns them into a phase.
COND_SOURCE: Final[str] = "SourceReady"  # source: False = the commit cannot be deployed
COND_FAILING: Final[str] = "Failing"  # rollback: True = a release not yet live must fail
COND_ROLLED_BACK: Final[str] = "RolledBack"  # rollback: True = the live release is being undone
REASON_STALE_PUSH: Final[str] = "StalePush"  # a SourceReady reason that cancels, not fails


def verdict(dep: Deployment) -> tuple[DeploymentPhase, str, str] | None:
    """(phase, reason, message) the release must end in by another controller's verdict, or
    None: source said the commit cannot be deployed (Failed; Cancelled for a stale push), or
    rollback said a release not yet live fails. A pure function of the record."""
    src = dep.status.condition(COND_SOURCE)
    if src is not None and src.status == "False":
        return ("Cancelled" if src.reason == REASON_STALE_PUSH else "Failed"), src.reason, src.message
    failing = dep.status.condition(COND_FAILING)
    if failing is not None and failing.status == "True" and not dep.status.live_time:
        return "Failed", failing.reason, failing.message
    return None


def is_rolled_back(dep: Deployment) -> bool:
    cond = dep.status.condition(COND_ROLLED_BACK)
    return cond is not None and cond.status == "True"


def by_number(deployments: Iterable[Deployment]) -> list[Deployment]:
    return sorted(deployments, key=lambda d: (deployment_number(d.metadata.name), d.metadata.name))


def is_terminal(dep: Deployment) -> bool:
    return dep.status.phase in DEPLOYMENT_TERMINAL


def live_deployment(app: App | None, deployments: list[Deployment]) -> Deployment | None:
    named = app.status.live_deployment if app is not None else None
    for d in deployments:
        # A release failed in the instant it was promoted (rollback read the world just before
        # the switch) never counts as live: rollout then switches back to the one still Live.
        lost_race = d.status.phase in ("Failed", "Cancelled") and not d.status.live_time
        if named and d.metadata.name == named and not lost_race:
            return d
    lives = [d for d in by_number(deployments) if d.status.phase == "Live"]
    return lives[-1] if lives else None


def time_of(text: str | None, default: float) -> float:
    return parse_iso(text) if text else default


# --------------------------------------------------------------------------- config


def pins_config(dep: Deployment) -> bool:
    """A rollback restores an older config on purpose; only a later App edit overrides it."""
    return dep.spec.trigger.type == "rollback" or dep.spec.rollback_of is not None


# --------------------------------------------------------------------------- instances


Slot = tuple[str, int]  # (process type, replica index)


def instance_name(dep_name: str, index: int, replacement: int = 0, process: str = WEB) -> str:
    """``APP-N-I`` for web, ``APP-N-TYPE-I`` for another process type; ``-rK`` for replacements."""
    kind = "" if process == WEB else f"{process}-"
    return f"{dep_name}-{kind}{index}" + (f"-r{replacement}" if replacement else "")


def wanted_slots(cfg: DeploymentConfig, manifest: Manifest | None) -> list[Slot]:
    """Every replica slot a release runs: ``replicas`` web ones, then each process type's."""
    slots = [(WEB, i) for i in range(cfg.replicas)]
    for proc, spec in sorted(manifest_processes(manifest).items()):
        n = (cfg.processes or {}).get(proc, spec.replicas)
        slots += [(proc, i) for i in range(n)]
    return slots


def replacement_of(inst: Instance) -> int:
    """``hello-3-0-r2`` → 2; ``hello-3-0`` → 0."""
    head, _, tail = inst.metadata.name.rpartition("-r")
    return int(tail) if head and tail.isdigit() else 0


def instances_of(dep_name: str, instances: Iterable[Instance]) -> list[Instance]:
    return [i for i in instances if i.spec.deployment == dep_name]


def slot_of(inst: Instance) -> Slot:
    return (inst.spec.process, inst.spec.index)


def current_by_slot(dep_name: str, instances: Iterable[Instance]) -> dict[Slot, Instance]:
    """(process type, replica index) → the newest incarnation of that slot (one-shots have none)."""
    out: dict[Slot, Instance] = {}
    for inst in instances_of(dep_name, instances):
        if inst.spec.oneshot is not None:
            continue
        cur = out.get(slot_of(inst))
        if cur is None or replacement_of(inst) > replacement_of(cur):
            out[slot_of(inst)] = inst
    return out


def is_ready(inst: Instance) -> bool:
    return inst.spec.desired == "Running" and inst.status.phase == "Running" and inst.status.ready


def count_ready(dep_name: str, instances: Iterable[Instance]) -> int:
    return sum(1 for i in current_by_slot(dep_name, instances).values() if is_ready(i))


def min_ready_seconds(dep: Deployment) -> float:
    """``health.min_ready`` of the release's manifest (10 s, the default, before it is known)."""
    m = dep.status.manifest
    return m.health.min_ready_seconds if m is not None else DEFAULT_MIN_READY


def age(
    watch: Stopwatch | None, key: str, since: str | None, now: float, at_most: float | None = None
) -> float:
    """Seconds since ``since``: from the controller's Stopwatch (monotonic where it observes,
    so wall-clock steps cannot move it; ``at_most`` caps its first reading), or plainly from the
    wall clock (pure callers, tests)."""
    if watch is not None:
        return watch.elapsed(key, since, at_most)
    return max(0.0, now - time_of(since, now))


def waited(watch: Stopwatch | None, key: str, since: str | None, now: float) -> float:
    """Seconds ``since`` has held, for a minimum wait (min_ready, a stable period):
    from the Stopwatch's first look (``Stopwatch.observed``), so no wall-clock step — on this
    machine, another, or between two leaders — can shorten it; plainly from the wall clock
    without one (pure callers, tests)."""
    if watch is not None:
        return watch.observed(key, since)
    return max(0.0, now - time_of(since, now))


def ready_since(inst: Instance) -> str | None:
    cond = inst.status.condition("Ready")
    return inst.status.ready_time or (cond.last_transition_time if cond is not None else None)


def min_ready_wait(
    dep: Deployment, instances: Iterable[Instance], now: float, watch: Stopwatch | None = None
) -> float:
    """Seconds until every current ready Instance of ``dep`` has been ready for ``min_ready``
    (0: long enough). A rollback goes back to a release that already proved itself: no wait."""
    if dep.spec.trigger.type == "rollback":
        return 0.0
    need = min_ready_seconds(dep)
    wait = 0.0
    for slot, inst in current_by_slot(dep.metadata.name, instances).items():
        if is_ready(inst) and slot[0] == WEB:  # workers proved themselves by min_running already
            ready_for = waited(watch, f"ready/{inst.metadata.name}", ready_since(inst), now)
            wait = max(wait, need - ready_for)
    return wait


def build_timeout_seconds(dep: Deployment) -> float:
    """``build.timeout`` of the release's manifest (0 before the manifest is known)."""
    m = dep.status.manifest
    return m.build.timeout_seconds if m is not None else 0.0


def restarts_of(dep_name: str, instances: Iterable[Instance]) -> int:
    """Restarts of the release's current Instances, as their agents count them."""
    return sum(
        i.status.restarts
        for i in current_by_slot(dep_name, instances).values()
        if i.spec.desired == "Running"
    )


def is_failing(inst: Instance) -> bool:
    """The agent says the release cannot run (not that the machine went away)."""
    if inst.status.ready or inst.status.reason not in FAILING_REASONS:
        return False
    return inst.status.reason != "BuildFailed" or inst.status.phase == "Failed"


def needs_replacement(inst: Instance, live: bool) -> bool:
    """Lost to a node, or Failed for a reason that is not the release's own fault.

    For a release not yet live a failing reason fails the release instead (rollback's job).
    """
    if inst.spec.desired != "Running":
        return False
    if inst.status.phase == "Lost":
        return True
    return inst.status.phase == "Failed" and (live or inst.status.reason not in FAILING_REASONS)


def new_instance(
    app: App,
    dep: Deployment,
    cfg: DeploymentConfig,
    secret: Secret | None,
    index: int,
    replacement: int = 0,
    process: str = WEB,
) -> Instance:
    name = dep.metadata.name
    return Instance(
        metadata=ObjectMeta(
            name=instance_name(name, index, replacement, process),
            labels={
                LABEL_APP: app.metadata.name,
                LABEL_DEPLOYMENT: name,
                **({LABEL_PROCESS: process} if process != WEB else {}),
            },
            owner_ref=OwnerRef(kind="Deployment", name=name, uid=dep.metadata.uid),
        ),
        spec=instance_spec(app, dep, cfg, secret, index, process),
    )


# --------------------------------------------------------------------------- health


def is_failing_now(inst: Instance) -> bool:
    """Runs the release and fails at it: Failed, restarting after the app's own failure (a
    crash, failed checks, an OOM kill), or running but no longer ready. A process the platform
    (re)started that is not ready *yet* is starting, not failing: after a ``forge up`` restart
    or a replacement, readiness is judged by its probes, not by the wait for them."""
    if inst.status.ready and inst.status.phase == "Running":
        return False
    if inst.status.phase == "Failed":
        return True
    if inst.status.phase == "Running":
        return True  # it was up and its checks now fail (short of a restart so far)
    return inst.status.phase == "Starting" and inst.status.reason in FAILING_REASONS


def health_of(dep_name: str, instances: Iterable[Instance]) -> ConditionStatus:
    """``True`` some replica serves; ``False`` none does and at least one runs the release and
    fails (``is_failing_now``); ``Unknown`` nothing is running or failing yet (building,
    starting, replaced after a node loss or restarted by the platform)."""
    current = [i for i in current_by_slot(dep_name, instances).values() if i.spec.desired == "Running"]
    if any(is_ready(i) for i in current):
        return "True"
    if any(is_failing_now(i) for i in current):
        return "False"
    return "Unknown"


def app_available(
    app: App, deployments: list[Deployment], instances: list[Instance]
) -> tuple[ConditionStatus, str, str]:
    """(status, reason, message) of the App's Available condition."""
    live = live_deployment(app, deployments)
    if live is None:
        return "False", "NoLiveRelease", "no release is live yet"
    slots = [
        i for i in current_by_slot(live.metadata.name, instances).values() if i.spec.desired == "Running"
    ]
    ready = sum(1 for i in slots if is_ready(i))
    if ready:
        return (
            "True",
            "MinimumReplicasAvailable",
            f"{ready}/{len(slots)} instances of {live.metadata.name} ready",
        )
    if not slots:
        return "False", "NoInstances", f"{live.metadata.name} has no running instances"
    return "False", "NoReadyInstances", f"0/{len(slots)} instances of {live.metadata.name} ready"


def app_url(app_name: str, domain: str, tls: str, http_listen: str) -> str:
    """``http://hello.localhost:8000`` — the port only when it is not the scheme's default."""
    scheme = "http" if tls == "off" else "https"
    port = http_listen.rpartition(":")[2]
    show_port = port.isdigit() and port != ("80" if scheme == "http" else "443")
    return f"{scheme}://{app_name}.{domain}" + (f":{port}" if show_port else "")


def last_good_before(dep: Deployment, deployments: list[Deployment]) -> Deployment | None:
    """The release to roll ``dep`` back to: ``forge.release.rollback_candidate``, the one rule."""
    return rollback_candidate(dep, deployments)


def stop_instances(store: Store, instances: Iterable[Instance]) -> None:
    """Ask Instances to stop: a spec write with the resourceVersion read (Conflict retries)."""
    for inst in instances:
        if inst.spec.desired == "Stopped":
            continue
        obj = inst.copy_deep()
        obj.spec.desired = "Stopped"
        store.update(obj)


def deadline_message(
    dep_name: str, seconds: float, manifest: Manifest | None, instances: list[Instance]
) -> str:
    """Why a release missed its progress deadline, naming the build when it was still building."""
    base = f"not ready within {seconds:g}s of its creation"
    building = sorted(
        i.metadata.name for i in current_by_slot(dep_name, instances).values() if i.status.phase == "Building"
    )
    if not building:
        return base
    limit = manifest.build.timeout_seconds if manifest is not None else 600.0
    return (
        f"{base}: its build was still running (instance {building[0]}; build.timeout is {limit:g}s); "
        "make the build faster, or raise build.timeout in forge.yaml (build: {timeout: 20m}, up to 2h)"
    )
