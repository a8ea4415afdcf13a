"""A hollow node agent: the real agent's contract without processes.

It registers its Node and renews its Lease, lists its Instances through the API (as the real
agent relists), builds (taking the commit's build time, failing when the commit's build fails),
starts, probes, reports status with the agent's own ``compute_instance_status``/``StatusWriter``,
restarts crashed processes with the agent's back-off, stops, and re-adopts what is still running
after its own restart. Every request goes through the real API in process (node token, WSGI).

What the "processes" do is the commit's ``behavior`` (ground truth the invariants compare with):
``build_seconds``, ``build_fails``, ``release_fails``, ``start_seconds``, ``crash`` (None,
``"start"``, ``"after"`` with ``crash_after``, ``"flap"``), ``probe_fails``. What survives an agent
crash is ``NodeDisk`` (the state file and the running processes); a lost node loses it all.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forge import errors
from forge.client import ForgeClient
from forge.clock import Clock
from forge.models import LABEL_NODE, Instance, Isolation
from forge.nodeagent import node as nodeinfo
from forge.nodeagent.spec import RunSpec
from forge.nodeagent.state import InstanceState
from forge.nodeagent.status import StatusWriter
from forge.nodeagent.supervisor import backoff_delay
from forge.workqueue import WorkQueue

if TYPE_CHECKING:
    from tests.sim.world import World

HEARTBEAT = "~heartbeat"
HEARTBEAT_SECONDS = 5.0  # the real agent's --heartbeat-seconds; its lease lasts three of them
LEASE_SECONDS = 15.0
HEARTBEAT_PHASE = 0.35  # node i's first renewal comes i * this after its start
STABLE_SECONDS = 60.0


@dataclass
class Proc:
    """One running (hollow) process and what the agent's state file says of it."""

    st: InstanceState
    started_mono: float = 0.0
    exit_mono: float | None = None  # when the app itself exits (its behavior)
    ready_mono: float | None = None  # when its probe first answers


@dataclass
class NodeDisk:
    """What outlives the agent: its state file, the builds, the running processes."""

    procs: dict[str, Proc] = field(default_factory=dict)
    built: dict[str, bool] = field(default_factory=dict)  # deployment → build succeeded
    building: dict[str, float] = field(default_factory=dict)  # deployment → mono when done
    kills: dict[str, int] = field(default_factory=dict)  # instance → platform stops/restarts
    next_pid: int = 100


class HollowAgent:
    def __init__(self, world: World, name: str, index: int, disk: NodeDisk, clock: Clock) -> None:
        self.world, self.name, self.index, self.disk, self.clock = world, name, index, disk, clock
        self.address = f"10.9.{index}.1"
        self.queue = WorkQueue(world.clock)
        self.cache: dict[str, Instance] = {}
        self.seen_rev = -1
        self.client: ForgeClient | None = None
        self.status: StatusWriter | None = None
        self.synced = False
        self.lease: dict[str, Any] | None = None
        self.trackers: dict[str, int] = {}  # instance → consecutive probe failures (in memory only)
        self.registered = False

    # ------------------------------------------------------------------ lifecycle

    def connect(self, token: str) -> None:
        self.client = ForgeClient("http://api.sim", token, transport=self.world.transport(self))
        self.status = StatusWriter(self.client, self.clock, lambda _obj: None)

    def start(self) -> None:
        """Register, adopt what still runs (no restart, no crash counted), start heartbeats."""
        assert self.client is not None
        nodeinfo.register(self.client, self.name, self.address, Isolation(), None, self.clock, subnet=None)
        self.registered = True
        for name, p in sorted(self.disk.procs.items()):
            self.world.trace(f"agent {self.name}: re-adopted {name} pid {p.st.pid}")
            if self.world.planted == "agent-adoption-crash":
                p.st.restarts += 1  # planted: an adoption counted as a restart
                p.st.reason, p.st.message = "CrashLoopBackOff", "process exited"
        # Real agents start at different moments, so their renewals (and lease expiries) are
        # spread over the period, not in lockstep: nodes cut off together lapse HEARTBEAT_PHASE
        # apart, which a rule judging the first expiry alone gets wrong.
        self.queue.add_after(HEARTBEAT, HEARTBEAT_PHASE * self.index)
        self.relist()

    def next_due(self) -> float | None:
        return self.queue.fire_due()

    def has_work(self) -> bool:
        self.queue.fire_due()
        return self.queue.depth() > 0

    def wants_relist(self) -> bool:
        return self.world.node_rev.get(self.name, 0) > self.seen_rev

    # ------------------------------------------------------------------ steps

    def relist(self) -> None:
        assert self.client is not None
        rev = self.world.node_rev.get(self.name, 0)
        items, _ = self.client.list("instances", {LABEL_NODE: self.name})
        self.seen_rev = rev
        fresh = {i["metadata"]["name"]: Instance.model_validate(i) for i in items}
        changed = [
            n
            for n in sorted(set(fresh) | set(self.cache))
            if n not in fresh
            or n not in self.cache
            or fresh[n].metadata.resource_version != self.cache[n].metadata.resource_version
        ]
        self.cache = fresh
        self.synced = True
        for n in changed:
            self.queue.add(n)
        for n in sorted(self.disk.procs):
            if n not in fresh:
                self.queue.add(n)

    def step(self) -> str | None:
        key = self.queue.get(timeout=0)
        if key is None:
            return None
        after: float | None
        try:
            after = self.heartbeat() if key == HEARTBEAT else self.reconcile(key)
        except errors.Unavailable:
            after = 2.0
        except errors.ForgeError:
            after = 5.0
        finally:
            self.queue.done(key)
        if after is not None:
            self.queue.add_after(key, max(after, 0.001))
        return key

    def heartbeat(self) -> float:
        assert self.client is not None
        try:
            self.lease = nodeinfo.renew_lease(self.client, self.name, LEASE_SECONDS, self.clock, self.lease)
        except errors.Conflict:
            self.lease = None
            return 0.2
        return HEARTBEAT_SECONDS

    # ------------------------------------------------------------------ the local reconcile

    def reconcile(self, name: str) -> float | None:
        assert self.status is not None
        inst = self.cache.get(name)
        p = self.disk.procs.get(name)
        if (
            inst is None
            or inst.spec.desired == "Stopped"
            or inst.spec.node not in (None, self.name)
            or inst.status.phase == "Lost"
        ):
            return self._stop(name, p, inst)
        if inst.status.phase == "Failed" and inst.status.reason in ("BuildFailed", "FetchFailed"):
            return None
        if inst.spec.oneshot is not None and inst.status.phase in ("Succeeded", "Failed"):
            return None
        run = RunSpec.for_instance(inst.spec)
        behavior = self.world.behavior(inst.spec.commit)
        mono = self.clock.monotonic()
        if p is None:
            st = InstanceState(
                name=name,
                app=inst.spec.app,
                deployment=inst.spec.deployment,
                cgroup=f"inst-{name}",
                release_dir=f"/sim/{inst.spec.deployment}",
                restarts=inst.status.restarts,
            )
            p = Proc(st)
            self.disk.procs[name] = p
        st = p.st
        dep = inst.spec.deployment
        built = self.disk.built.get(dep)
        if built is None:
            done = self.disk.building.get(dep)
            if done is None:
                self.disk.building[dep] = mono + float(behavior.get("build_seconds", 1.0))
                self._write(inst, st, "Building")
                return float(behavior.get("build_seconds", 1.0))
            if mono < done:
                self._write(inst, st, "Building")
                return done - mono
            built = not behavior.get("build_fails")
            self.disk.built[dep] = built
            self.disk.building.pop(dep, None)
        if not built:
            st.reason, st.message = "BuildFailed", "build command exited with code 1"
            self._write(inst, st, "Failed")
            return None
        if st.pid and p.exit_mono is not None and mono >= p.exit_mono:
            return self._exited(inst, p, run)
        if not st.pid:
            now = self.clock.now()
            if st.next_start and now < st.next_start:
                self._write(inst, st, "Starting")
                return st.next_start - now
            return self._start(inst, p, run, behavior)
        if run.kind == "oneshot":
            return (p.exit_mono - mono) if p.exit_mono is not None else None
        if run.kind == "worker":
            up = mono - p.started_mono
            if up < run.min_running:
                self._write(inst, st, "Starting")
                return min(run.min_running - up, self._until_exit(p, mono))
            self._mark_ready(st)
            self._write(inst, st, "Running")
            return self._until_exit(p, mono, STABLE_SECONDS)
        return self._probe(inst, p, run, behavior)

    def _until_exit(self, p: Proc, mono: float, default: float | None = None) -> float:
        if p.exit_mono is not None:
            return max(0.001, p.exit_mono - mono)
        return default if default is not None else 3600.0

    def _start(self, inst: Instance, p: Proc, run: RunSpec, behavior: dict[str, Any]) -> float | None:
        st = p.st
        mono = self.clock.monotonic()
        self.disk.next_pid += 1
        st.pid = self.disk.next_pid
        st.port = st.port or 20000 + self.disk.next_pid
        st.address = self.address
        st.started_time = self.clock.now()
        st.ready, st.next_start = False, None
        p.started_mono = mono
        start_s = float(behavior.get("start_seconds", 1.0))
        p.ready_mono = None if behavior.get("probe_fails") else mono + start_s
        crash = behavior.get("crash")
        p.exit_mono = None
        if run.kind == "oneshot":
            p.exit_mono = mono + float(behavior.get("release_seconds", 1.0))
        elif crash == "start":
            p.exit_mono = mono + start_s / 2
        elif crash == "after":
            p.exit_mono = mono + start_s + float(behavior.get("crash_after", 20.0))
        elif crash == "flap":
            p.exit_mono = mono + start_s + 12.0
        self.world.trace(f"agent {self.name}: start {st.name} pid {st.pid}")
        self._write(inst, st, "Starting")
        wait = run.min_running if run.kind == "worker" else min(0.05, run.health.interval_seconds)
        return min(wait, self._until_exit(p, mono))

    def _exited(self, inst: Instance, p: Proc, run: RunSpec) -> float | None:
        st = p.st
        if run.kind == "oneshot":
            behavior = self.world.behavior(inst.spec.commit)
            code = 1 if behavior.get("release_fails") else 0
            st.pid, st.ready, st.exit_code = None, False, code
            st.finished_time = self.clock.now()
            st.reason, st.message = (
                ("Error", f"exited with code {code}") if code else ("", "exited with code 0")
            )
            self._write(inst, st, "Succeeded" if code == 0 else "Failed")
            return None
        self.world.crashes[st.name] = self.world.crashes.get(st.name, 0) + 1
        st.reason, st.message, st.exit_code = "CrashLoopBackOff", "process exited with code 1", 1
        self._schedule_restart(st)
        self.world.trace(f"agent {self.name}: {st.name} exited (app crash)")
        self._write(inst, st, "Starting")
        return st.next_start - self.clock.now() if st.next_start else 0.0

    def _schedule_restart(self, st: InstanceState) -> None:
        st.pid, st.ready = None, False
        st.restarts += 1
        st.crash_streak += 1
        st.next_start = self.clock.now() + backoff_delay(st.crash_streak)
        self.trackers.pop(st.name, None)

    def _mark_ready(self, st: InstanceState) -> None:
        if not st.ready:
            st.ready, st.ever_ready, st.ready_time = True, True, self.clock.now_iso()
            st.reason, st.message = "", ""

    def _probe(self, inst: Instance, p: Proc, run: RunSpec, behavior: dict[str, Any]) -> float | None:
        st = p.st
        mono = self.clock.monotonic()
        ok = p.ready_mono is not None and mono >= p.ready_mono
        interval = run.health.interval_seconds
        if ok:
            self.trackers[st.name] = 0
            self._mark_ready(st)
            if st.crash_streak and mono - p.started_mono >= STABLE_SECONDS:
                st.crash_streak = 0
            self._write(inst, st, "Running", "200 OK")
            return min(interval, self._until_exit(p, mono))
        fails = self.trackers.get(st.name, 0) + (1 if mono - p.started_mono >= interval else 0)
        self.trackers[st.name] = fails
        if fails >= run.health.retries:
            self.disk.kills[st.name] = self.disk.kills.get(st.name, 0) + 1
            self.world.crashes[st.name] = self.world.crashes.get(st.name, 0) + 1  # its own failure
            st.reason = "HealthCheckFailed"
            st.message = f"{run.health.path} failed {fails} probes in a row"
            self._schedule_restart(st)
            self._write(inst, st, "Starting", "connection refused")
            return st.next_start - self.clock.now() if st.next_start else 0.0
        self._write(inst, st, "Starting", "connection refused")
        step = interval if st.ever_ready else min(interval, 0.5)
        if p.ready_mono is not None:
            step = min(step, max(0.001, p.ready_mono - mono))
        return min(step, self._until_exit(p, mono))

    def _stop(self, name: str, p: Proc | None, inst: Instance | None) -> float | None:
        if p is not None:
            if p.st.pid:
                self.world.trace(f"agent {self.name}: stop {name} pid {p.st.pid}")
                self.disk.kills[name] = self.disk.kills.get(name, 0) + 1
            p.st.pid, p.st.ready, p.st.reason, p.st.message = None, False, "", ""
        if inst is not None and inst.spec.desired == "Stopped":
            self._write(inst, p.st if p is not None else None, "Stopped")
        self.disk.procs.pop(name, None)
        self.trackers.pop(name, None)
        return None

    def _write(self, inst: Instance, st: InstanceState | None, phase: str, probe: str | None = None) -> None:
        assert self.status is not None
        written = self.status.write(inst, st, phase, None, probe_result=probe)
        if written.metadata.resource_version != inst.metadata.resource_version:
            self.cache[inst.metadata.name] = written

    # ------------------------------------------------------------------ ground truth

    def running(self) -> dict[str, Proc]:
        return {n: p for n, p in self.disk.procs.items() if p.st.pid}
