"""Cron: one-shot runs of the live release's schedules, and the upkeep of finished one-shots.

Key = app name. For each ``cron:`` job of the live release's manifest the decision
(``plan_job``, pure) looks at the latest due time ``due`` (at or before now) and the job's runs
(Instances labelled ``forge.dev/process=cron`` and ``forge.dev/cron=JOB``):

- a run for ``due`` exists already (by name: ``APP-cron-HASH`` of job and due time, so two
  controllers, or one restarted, never create two) → nothing;
- ``due`` is older than the job itself (the release that brought it went live later) → nothing;
- a previous run is still going → a record for ``due`` that never runs (``spec.oneshot.skipped``
  says why; it reads as phase ``Skipped``), like Kubernetes' ``concurrencyPolicy: Forbid``;
- otherwise → a run for ``due``. Only the latest due time is ever considered, so after downtime
  there is at most one catch-up run, never a burst (``startingDeadlineSeconds`` in spirit).

The key wakes again at the next due time (``requeue_after``). Finished one-shots (cron runs and
``forge run``) are asked to stop so their node forgets them (their records keep phase and exit
code); each job keeps its newest ``KEEP_RUNS`` records, one-off runs their newest
``KEEP_ONE_OFF``, older ones are deleted with the resourceVersion read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from forge.clock import iso, parse_iso
from forge.controllers import deploystate as ds
from forge.controllers.base import DONE, AppKeyedController, Result
from forge.cron import last_due, next_after
from forge.errors import AlreadyExists, Conflict, NotFound
from forge.models import (
    LABEL_APP,
    LABEL_CRON,
    LABEL_PROCESS,
    App,
    CronJobSpec,
    Deployment,
    Instance,
    Manifest,
    OneShot,
    Secret,
)

KEEP_RUNS = 10
KEEP_ONE_OFF = 20
ENDED = frozenset({"Succeeded", "Failed", "Stopped", "Lost", "Skipped"})


def schedules_of(manifest: Manifest | None) -> list[CronJobSpec]:
    return list(manifest.cron) if manifest is not None else []


def run_name(app: str, job: str, due: float) -> str:
    digest = hashlib.sha256(f"{job}@{iso(due)}".encode()).hexdigest()[:10]
    return f"{app}-cron-{digest}"


def scheduled(inst: Instance) -> float:
    return (
        parse_iso(inst.spec.oneshot.scheduled_time)
        if inst.spec.oneshot and inst.spec.oneshot.scheduled_time
        else 0.0
    )


@dataclass
class JobPlan:
    create: str | None = None  # the due time to run, as ISO
    skip: str | None = None  # the due time to record as Skipped
    wake: float = 0.0  # seconds until the next due time


def plan_job(job: CronJobSpec, runs: list[Instance], now: float, active_since: float) -> JobPlan:
    """What to do for one schedule now (pure; ``runs`` are this job's records)."""
    due = last_due(job.schedule, job.timezone, now)
    plan = JobPlan(wake=max(0.0, next_after(job.schedule, job.timezone, now) - now))
    if due < active_since or any(scheduled(r) >= due for r in runs):
        return plan
    busy = [r for r in runs if r.status.phase not in ENDED and r.spec.desired == "Running"]
    if busy:
        plan.skip = iso(due)
    else:
        plan.create = iso(due)
    return plan


@dataclass
class Upkeep:
    stop: list[Instance] = field(default_factory=list)
    delete: list[Instance] = field(default_factory=list)


def plan_upkeep(oneshots: list[Instance]) -> Upkeep:
    """Finished cron and one-off runs stop (their node forgets them); old ones go."""
    out = Upkeep()
    groups: dict[str, list[Instance]] = {}
    for inst in oneshots:
        if inst.spec.oneshot is None or inst.spec.oneshot.type == "release":
            continue
        if inst.spec.desired == "Running" and inst.status.phase in ("Succeeded", "Failed"):
            out.stop.append(inst)
        key = f"cron/{inst.spec.oneshot.schedule}" if inst.spec.oneshot.type == "cron" else "run"
        groups.setdefault(key, []).append(inst)
    for key, items in groups.items():
        keep = KEEP_RUNS if key.startswith("cron/") else KEEP_ONE_OFF
        done = [
            i
            for i in items
            if i.status.phase in ENDED and (i.spec.desired == "Stopped" or i.status.phase == "Skipped")
        ]
        done.sort(
            key=lambda i: scheduled(i) or (parse_iso(i.metadata.created_at) if i.metadata.created_at else 0.0)
        )
        excess = len(items) - keep
        out.delete += done[: max(0, excess)]
    return out


class CronController(AppKeyedController):
    name: ClassVar[str] = "cron"
    watches: ClassVar[tuple[str, ...]] = ("App", "Deployment", "Instance")

    def reconcile(self, key: str) -> Result | None:
        insts = [
            i
            for i in self.store.list(Instance, {LABEL_APP: key})[0]
            if isinstance(i, Instance) and i.spec.app == key and i.spec.oneshot is not None
        ]
        self._upkeep(insts)
        try:
            app: App = self.store.get(App, key)
        except NotFound:
            return DONE
        deps = [d for d in self.store.list(Deployment, {LABEL_APP: key})[0] if isinstance(d, Deployment)]
        live = ds.live_deployment(app, deps)
        if live is None or live.status.manifest is None:
            return DONE
        jobs = schedules_of(live.status.manifest)
        if not jobs:
            return DONE
        now = self.clock.now()
        wakes: list[float] = []
        for job in jobs:
            runs = [i for i in insts if i.metadata.labels.get(LABEL_CRON) == job.name]
            since = self._active_since(job.name, deps)
            plan = plan_job(job, runs, now, since)
            wakes.append(plan.wake)
            if plan.create or plan.skip:
                self._record(
                    app,
                    live,
                    job,
                    plan.create or plan.skip or "",
                    skipped=plan.skip is not None,
                    busy=[r for r in runs if r.status.phase not in ENDED],
                )
        return Result(requeue_after=max(0.5, min(wakes))) if wakes else DONE

    @staticmethod
    def _active_since(job: str, deps: list[Deployment]) -> float:
        """When the job first went live: the earliest live time of a release whose manifest has it."""
        times = [
            parse_iso(d.status.live_time)
            for d in deps
            if d.status.live_time and any(j.name == job for j in schedules_of(d.status.manifest))
        ]
        return min(times) if times else float("inf")

    def _record(
        self, app: App, live: Deployment, job: CronJobSpec, due: str, skipped: bool, busy: list[Instance]
    ) -> None:
        try:
            secret: Secret | None = self.store.get(Secret, app.metadata.name)
        except NotFound:
            secret = None
        cfg = ds.effective_config(app, live, secret)
        oneshot = OneShot(
            type="cron",
            command=job.command,
            timeout_seconds=job.timeout_seconds,
            schedule=job.name,
            scheduled_time=due,
        )
        inst = ds.oneshot_instance(
            app,
            live,
            cfg,
            secret,
            run_name(app.metadata.name, job.name, parse_iso(due)),
            oneshot,
            labels={LABEL_CRON: job.name},
        )
        why = f"{busy[0].metadata.name} was still running" if busy else "a run was still going"
        if skipped:
            # Our verdict goes into the record we make (it never runs, so no agent reports on
            # it): it reads as phase Skipped (``forge.models.apply_instance_verdicts``).
            inst.spec.desired = "Stopped"
            if inst.spec.oneshot is not None:
                inst.spec.oneshot.skipped = why
        try:
            created: Instance = self.store.create(inst)
        except AlreadyExists:
            return
        if skipped:
            self.recorder.record(
                created,
                "Warning",
                "CronSkipped",
                f"{job.name} due {due} skipped: {why}",
            )
        else:
            self.recorder.record(
                created, "Normal", "CronStarted", f"{job.name} due {due}: {job.command[:200]}"
            )

    def _upkeep(self, oneshots: list[Instance]) -> None:
        plan = plan_upkeep(oneshots)
        try:
            ds.stop_instances(self.store, plan.stop)
        except (Conflict, NotFound):
            pass  # changed meanwhile: the change wakes this key again
        for inst in plan.delete:
            try:
                self.store.delete(Instance, inst.metadata.name, inst.metadata.resource_version)
            except (Conflict, NotFound):
                continue

    def keys_for(self, event: Any) -> Iterable[str]:
        obj = event.object
        if obj.kind == "Instance" and obj.metadata.labels.get(LABEL_PROCESS) not in ("cron", "run"):
            return ()
        return super().keys_for(event)
