"""Instance status as the agent observes it: one pure function and a writer that skips no-ops.

``compute_instance_status`` derives the status from the local record; ``StatusWriter`` PUTs it
only when something other than the probe timestamp changed, with the resourceVersion it read,
re-reading and retrying on Conflict.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from forge import errors
from forge.client import ForgeClient
from forge.clock import Clock, iso
from forge.models import Instance, InstancePhase, InstanceStatus, set_condition
from forge.nodeagent.prober import ProbeTracker
from forge.nodeagent.state import InstanceState

log = logging.getLogger(__name__)
CONFLICT_RETRIES = 4


def compute_instance_status(
    current: InstanceStatus,
    st: InstanceState | None,
    phase: InstancePhase,
    generation: int,
    now_iso: str,
    probe_result: str | None = None,
) -> InstanceStatus:
    s = current.model_copy(deep=True)
    s.observed_generation = generation
    s.phase = phase
    running = phase in ("Starting", "Running")
    if st is not None:
        s.port = st.port if running else None
        s.address = st.address if running else None
        s.pid = st.pid if running else None
        s.ready = bool(st.ready and phase == "Running")
        s.restarts = st.restarts
        s.exit_code = st.exit_code
        s.reason, s.message = st.reason, st.message
        s.started_time = iso(st.started_time) if st.started_time and running else s.started_time
        s.ready_time = st.ready_time
        s.oom_kills = st.oom_kills
    else:
        s.pid, s.ready = None, False
        if not running:
            s.port = s.address = None
    if st is not None and st.finished_time and phase in ("Succeeded", "Failed"):
        s.finished_time = iso(st.finished_time)
    if phase == "Stopped":
        s.reason, s.message = "", ""
    if probe_result is not None:
        s.last_probe_result, s.last_probe_time = probe_result, now_iso
    if s.ready:
        set_condition(s, "Ready", "True", "Ready", f"{probe_result or 'probe ok'}", now_iso)
    else:
        set_condition(s, "Ready", "False", s.reason or phase or "NotReady", s.message[:500], now_iso)
    return s


def _comparable(s: InstanceStatus) -> dict[str, Any]:
    d = s.dump()
    d.pop("lastProbeTime", None)
    d.pop("lastProbeResult", None)
    for c in d.get("conditions", []):
        if c.get("type") == "Ready" and c.get("status") == "True":
            c.pop("message", None)
    return d


class StatusWriter:
    def __init__(
        self, client: ForgeClient, clock: Clock, on_written: Callable[[dict[str, Any]], None]
    ) -> None:
        self.client, self.clock, self.on_written = client, clock, on_written

    def write(
        self,
        inst: Instance,
        st: InstanceState | None,
        phase: InstancePhase,
        tracker: ProbeTracker | None,
        probe_result: str | None = None,
    ) -> Instance:
        for _ in range(CONFLICT_RETRIES):
            new = compute_instance_status(
                inst.status, st, phase, inst.metadata.generation, self.clock.now_iso(), probe_result
            )
            if _comparable(new) == _comparable(inst.status):
                return inst
            body = inst.dump()
            body["status"] = new.dump()
            try:
                written = self.client.replace_status("instances", inst.name, body)
            except errors.Conflict:
                try:
                    inst = Instance.model_validate(self.client.get("instances", inst.name))
                except errors.NotFound:
                    return inst
                if inst.status.phase == "Lost":
                    return inst  # the control plane's verdict stands; the agent stops it next
                continue
            except errors.NotFound:
                return inst
            self.on_written(written)
            return Instance.model_validate(written)
        raise errors.Conflict(f"instance {inst.name}: status kept changing under us")
