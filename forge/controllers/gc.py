"""Garbage collector: bounded history, finished Instances, old Events and shipped logs.

Per App (key = app name): keep the newest ``history_limit`` finished Deployments
(Superseded / Failed / Cancelled — never the live one, never one still in flight) and delete
older ones together with their Instances; delete Instances that are Stopped / Failed / Lost,
meant to stay stopped, untouched for ``instance_min_age`` and whose Deployment is finished or
gone. Key ``__events__``: Events last seen more than ``event_ttl`` ago and shipped log lines
older than ``log_ttl``. An App that no longer exists keeps no history, and no log drains (nor
does a new App of its name inherit them: a drain belongs to its App's uid).

Release directories on nodes are the node agent's business: it removes those of Instances that
no longer exist or are no longer assigned to it. The decisions are pure functions of
(records, now); reconcile only deletes what they name, each delete carrying the
resourceVersion read so a record that changed meanwhile survives this round.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar

from forge.clock import Clock, parse_iso
from forge.config import Config
from forge.controllers.base import DONE, Controller, Result
from forge.controllers.cache import read_only
from forge.errors import Conflict, NotFound
from forge.events import EventRecorder
from forge.models import (
    DEPLOYMENT_TERMINAL,
    INSTANCE_TERMINAL,
    LABEL_APP,
    App,
    Deployment,
    Event,
    Instance,
    LogDrain,
    deployment_number,
)
from forge.store.base import Store

log = logging.getLogger(__name__)

EVENTS_KEY = "__events__"


@dataclass(frozen=True)
class GcSettings:
    history_limit: int = 10
    instance_min_age: float = 60.0
    event_ttl: float = 3600.0
    log_ttl: float = 24 * 3600.0


def _age(updated_at: str | None, now: float) -> float:
    return now - parse_iso(updated_at) if updated_at else float("inf")


def deployments_to_delete(deployments: list[Deployment], live: str | None, keep: int) -> list[Deployment]:
    """Finished Deployments beyond the newest ``keep`` (the live one is never a candidate)."""
    done = [d for d in deployments if d.status.phase in DEPLOYMENT_TERMINAL and d.metadata.name != live]
    done.sort(key=lambda d: deployment_number(d.metadata.name), reverse=True)
    return done[keep:]


def is_finished_instance(inst: Instance) -> bool:
    return inst.status.phase in INSTANCE_TERMINAL and inst.spec.desired == "Stopped"


def instances_to_delete(
    instances: list[Instance], deployments: dict[str, Deployment], now: float, min_age: float
) -> list[Instance]:
    """Finished, stopped-on-purpose Instances of finished or vanished Deployments, old enough."""
    out = []
    for inst in instances:
        if (
            inst.spec.oneshot is not None
            and inst.spec.oneshot.type != "release"
            and inst.spec.deployment in deployments
        ):
            continue  # cron and one-off runs: their history is the cron controller's (KEEP_RUNS)
        dep = deployments.get(inst.spec.deployment)
        if dep is not None and dep.status.phase not in DEPLOYMENT_TERMINAL:
            continue
        if is_finished_instance(inst) and _age(inst.metadata.updated_at, now) >= min_age:
            out.append(inst)
    return out


def orphan_drains(drains: list[LogDrain], key: str, app: App | None) -> list[LogDrain]:
    """Drains of an App that is gone — or was deleted and created again (another uid): a new
    App of the same name never inherits the old one's drains."""
    out = []
    for d in drains:
        if d.spec.app != key:
            continue
        owner = d.metadata.owner_ref.uid if d.metadata.owner_ref is not None else ""
        if app is None or (owner and owner != app.metadata.uid):
            out.append(d)
    return out


def events_to_delete(events: list[Event], now: float, ttl: float) -> list[Event]:
    return [e for e in events if _age(e.spec.last_time or e.metadata.updated_at, now) >= ttl]


class GcController(Controller):
    name: ClassVar[str] = "gc"
    watches: ClassVar[tuple[str, ...]] = ()  # resync-driven: nothing here is urgent
    resync_seconds: ClassVar[float] = 300.0  # nothing here is urgent; a pass reads every App

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        recorder: EventRecorder | None = None,
        settings: GcSettings | None = None,
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self.settings = settings or GcSettings()

    def all_keys(self) -> Iterable[str]:
        apps = {a.metadata.name for a in read_only(self.store, App)}
        apps |= {d.spec.app for d in read_only(self.store, Deployment)}
        apps |= {d.spec.app for d in read_only(self.store, LogDrain)}
        return sorted(apps) + [EVENTS_KEY]

    def reconcile(self, key: str) -> Result | None:
        if key == EVENTS_KEY:
            self._collect_events()
            return DONE
        try:
            app: App | None = self.store.get(App, key)
        except NotFound:
            app = None
        deployments: list[Deployment] = [
            d for d in self.store.list(Deployment, {LABEL_APP: key})[0] if d.spec.app == key
        ]
        instances: list[Instance] = [
            i for i in self.store.list(Instance, {LABEL_APP: key})[0] if i.spec.app == key
        ]
        live = app.status.live_deployment if app is not None else None
        keep = self.settings.history_limit if app is not None else 0
        by_name = {d.metadata.name: d for d in deployments}
        doomed = deployments_to_delete(deployments, live, keep)
        doomed_names = {d.metadata.name for d in doomed}
        now = self.clock.now()
        gone_instances = instances_to_delete(instances, by_name, now, self.settings.instance_min_age)
        # the Instances of a doomed Deployment go with it once none is still running
        busy = {
            i.spec.deployment
            for i in instances
            if i.spec.deployment in doomed_names
            and not (i.status.phase in INSTANCE_TERMINAL or i.status.phase == "")
        }
        extra = [i for i in instances if i.spec.deployment in doomed_names - busy and i not in gone_instances]
        for inst in gone_instances + extra:
            self._delete("Instance", inst.metadata.name, inst.metadata.resource_version)
        for dep in doomed:
            if dep.metadata.name not in busy:
                self._delete("Deployment", dep.metadata.name, dep.metadata.resource_version)
        for drain in orphan_drains(self.store.list(LogDrain, {LABEL_APP: key})[0], key, app):
            self._delete("LogDrain", drain.metadata.name, drain.metadata.resource_version)
        return DONE

    def _collect_events(self) -> None:
        now = self.clock.now()
        events: list[Event] = self.store.list(Event)[0]
        for ev in events_to_delete(events, now, self.settings.event_ttl):
            self._delete("Event", ev.metadata.name, ev.metadata.resource_version)
        prune = getattr(self.store, "prune_logs", None)
        if prune is not None:
            removed = prune(now - self.settings.log_ttl)
            if removed:
                log.info("gc: pruned %d log lines older than %.0fh", removed, self.settings.log_ttl / 3600)

    def _delete(self, kind: str, name: str, rv: int) -> None:
        try:
            self.store.delete(kind, name, resource_version=rv)
            log.info("gc: deleted %s %s", kind, name)
        except (NotFound, Conflict):
            pass  # already gone, or changed since we looked: the next round decides again
