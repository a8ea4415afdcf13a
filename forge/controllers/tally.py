"""Tally: turns what Deployments and Instances went through into the store's metric marks.

The API's ``/metrics`` serves ``forge_deployments_total{status}``, ``forge_tasks_total{status}``
and ``forge_deploy_duration_seconds`` from marks (``Store.mark``/``tally``/``observations``),
not from the records that exist right now: counters must never go down, and the gc deletes
old releases and finished Instances. A mark is "record uid reached label", idempotent and never
deleted, so a counter is "how many records ever reached this phase".

Key ``Kind/name``. For a Deployment: ``Pending`` once it exists, ``Live`` once
``status.liveTime`` is set, and its current phase (Building, Starting, Failed, Cancelled,
Superseded…); with both ``createdTime`` (else ``metadata.createdAt``) and ``liveTime`` it
observes push-to-live seconds. For an Instance: ``Pending`` once it exists and its current
phase. A phase held for less time than the watch takes to deliver it may go unseen; a phase
reached is never counted twice (same uid). The controller writes no record, only marks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Final, NamedTuple, cast

from forge.clock import parse_iso
from forge.controllers.base import DONE, Controller, Result
from forge.controllers.cache import read_only
from forge.errors import NotFound
from forge.marks import DEPLOYMENTS_METRIC, DURATION_LABEL, DURATION_METRIC, TASKS_METRIC
from forge.models import Deployment, Instance
from forge.store.base import WatchEvent

log = logging.getLogger(__name__)

KINDS: Final[tuple[str, ...]] = ("Deployment", "Instance")


class Mark(NamedTuple):
    metric: str
    label: str
    value: float | None = None


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return max(0.0, parse_iso(end) - parse_iso(start))
    except ValueError:
        return None


def deployment_marks(dep: Deployment) -> list[Mark]:
    """Every phase mark (and the push-to-live observation) a Deployment has earned so far."""
    st = dep.status
    labels = ["Pending"]
    if st.live_time:
        labels.append("Live")
    if st.phase and st.phase not in labels:
        labels.append(st.phase)
    out = [Mark(DEPLOYMENTS_METRIC, label) for label in labels]
    if st.live_time:
        seconds = _seconds_between(st.created_time or dep.metadata.created_at, st.live_time)
        if seconds is not None:
            out.append(Mark(DURATION_METRIC, DURATION_LABEL, seconds))
    return out


def instance_marks(inst: Instance) -> list[Mark]:
    """``Pending`` for every Instance, plus the phase it is in now."""
    labels = ["Pending"]
    if inst.status.phase and inst.status.phase != "Pending":
        labels.append(inst.status.phase)
    return [Mark(TASKS_METRIC, label) for label in labels]


def split_key(key: str) -> tuple[str, str]:
    kind, sep, name = key.partition("/")
    return (kind, name) if sep and kind in KINDS and name else ("", "")


class TallyController(Controller):
    name = "tally"
    watches = KINDS
    resync_seconds = 600.0  # two keys per release: the watch marks them as they change

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        return (f"{event.object.KIND}/{event.object.metadata.name}",)

    def all_keys(self) -> Iterable[str]:
        return [
            f"{cls.KIND}/{obj.metadata.name}"
            for cls in (Deployment, Instance)
            for obj in read_only(self.store, cls)
        ]

    def reconcile(self, key: str) -> Result | None:
        kind, name = split_key(key)
        if not kind:
            log.warning("tally: ignoring malformed key %r", key)
            return DONE
        try:
            obj = self.store.get(kind, name)
        except NotFound:
            return DONE
        uid = obj.metadata.uid
        if not uid:
            return DONE
        marks = deployment_marks(obj) if isinstance(obj, Deployment) else instance_marks(cast(Instance, obj))
        for m in marks:
            if self.store.mark(m.metric, uid, m.label, m.value):
                log.debug("tally: %s reached %s %s", key, m.metric, m.label)
        return DONE
