"""The whole control plane in one process, driven one step at a time by a seeded scheduler.

Pieces: the real SQLite store (a file under a temp dir), the real falcon API (``create_app``,
reached in process through ``httpx.WSGITransport``), the real controllers (``CONTROLLERS``) in a
``ControllerRuntime(threaded=False)`` behind the real ``LeaderElector`` and its fence, hollow
node agents (``tests.sim.agent``), and stand-ins for GitHub, Caddy and the service map.

One thread. Each step the scheduler lists the work that is ready — a controller's queued key, a
batch of watch events for a control plane's informer cache, a node agent's key or relist, a
timer (an action, a fault, a leader-election round, a resync) — and picks one with the seed's
``random.Random``. When nothing is ready the clock jumps to the next timer. Same seed, same trace.
"""

from __future__ import annotations

import functools
import heapq
import inspect
import json
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from forge.api.app import create_app
from forge.client import ForgeClient
from forge.config import Config
from forge.controllers.base import Controller
from forge.controllers.leader import LeaderElector
from forge.controllers.manager import CONTROLLERS
from forge.controllers.runtime import ControllerRuntime
from forge.controllers.source import SourceController
from forge.errors import ForgeError
from forge.models import LABEL_NODE, HolderProcess
from forge.proxy.reconcilers import ServiceMapReconciler
from forge.proxy.records import Records
from forge.store.base import WatchEvent
from forge.store.sqlite import SqliteStore
from tests.sim.agent import HollowAgent, NodeDisk
from tests.sim.fakes import (
    ControllerCrash,
    FakeCaddy,
    FakeGithub,
    FakeGitSource,
    FakeServiceMap,
    SimClock,
    SimStore,
    SkewedClock,
)

ADMIN_TOKEN = "sim-admin-token"
WEBHOOK_SECRET = "sim-webhook-secret"
LEASE_SECONDS = 15.0
STEP_SECONDS = 1e-6


class Unreachable(httpx.BaseTransport):
    """What a partitioned node sees: the API does not answer."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("simulated partition", request=request)


class SimTransport(httpx.BaseTransport):
    """The API in process for one client; a partition of its node makes every request fail."""

    def __init__(self, world: World, agent: HollowAgent | None) -> None:
        self.world, self.agent = world, agent

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.agent is not None and self.agent.name in self.world.partitioned:
            raise httpx.ConnectError("simulated partition", request=request)
        return self.world.wsgi.handle_request(request)


@dataclass(order=True)
class Timer:
    due: float
    seq: int
    label: str = field(compare=False)
    fn: Callable[[], None] = field(compare=False)


class SimProxy:
    """``forge proxy`` on one host: its record cache (``forge.proxy.records``) fed from the
    store's changes as its API watches deliver them, and the real ``ServiceMapReconciler`` over
    the simulator's service map, one key per step."""

    KINDS = ("App", "Instance", "Node")

    def __init__(self, world: World) -> None:
        self.world = world
        self.records = Records()
        self.rec = ServiceMapReconciler(self.records, world.services)  # type: ignore[arg-type]
        self.events: list[WatchEvent] = []
        self.due: dict[str, float] = {}  # key → when it is to be reconciled (monotonic)
        for key in self.rec.all_keys():
            self.due[key] = world.clock.monotonic()

    def feed(self, ev: WatchEvent) -> None:
        if ev.object.kind in self.KINDS:
            self.events.append(ev)

    def has_work(self) -> bool:
        now = self.world.clock.monotonic()
        return bool(self.events) or any(d <= now for d in self.due.values())

    def next_due(self) -> float | None:
        return min(self.due.values()) if self.due else None

    def step(self) -> str:
        now = self.world.clock.monotonic()
        if self.events:
            ev = self.events.pop(0)
            obj = ev.object
            if ev.type == "DELETED":
                old = self.records.delete(type(obj), obj.metadata.name)
                new = None
            else:
                old, stored = self.records.put(obj)
                new = obj if stored else None
                if not stored:
                    return f"watch {obj.kind}/{obj.metadata.name} (older)"
            for key in self.rec.keys_for(old, new if ev.type != "DELETED" else None):
                self.due[key] = min(self.due.get(key, now), now)
            return f"watch {obj.kind}/{obj.metadata.name}"
        key = min((k for k, d in self.due.items() if d <= now), key=lambda k: (self.due[k], k))
        del self.due[key]
        try:
            again = self.rec.reconcile(key)
        except ForgeError as exc:
            self.due[key] = now + 1.0
            return f"{key} failed: {exc}"
        if again is not None:
            self.due[key] = min(self.due.get(key, now + again), now + again)
        return key


class SimProcesses:
    """A simulated host's process table behind ``forge.processid.Processes``: each host is one
    machine with one boot; a control plane is a process (pid, start ticks) alive until killed.
    A paused (SIGSTOP-ed) process is alive."""

    PIDNS = "4026531836"

    def __init__(self, world: World, host: str, pid: int) -> None:
        self.world, self.host, self.pid = world, host, pid
        self.ticks = int(world.now() * 100)

    def me(self) -> HolderProcess:
        return HolderProcess(
            host=self.host,
            machine_id=f"machine-{self.host}",
            boot_id=f"boot-{self.host}",
            pid_namespace=self.PIDNS,
            pid=self.pid,
            start_ticks=self.ticks,
        )

    def alive(self, pid: int, start_ticks: int | None) -> bool:
        return any(
            cp.alive and cp.pid == pid and (start_ticks is None or cp.procs.ticks == start_ticks)
            for cp in self.world.cps
            if cp.host == self.host
        )


class ControlPlane:
    """One ``forge controllers`` process: its own store connection (fenced), runtime, elector."""

    def __init__(self, world: World, ident: str, host: str, pid: int) -> None:
        self.world, self.ident, self.host, self.pid = world, ident, host, pid
        self.procs = SimProcesses(world, host, pid)
        self.alive, self.paused = True, False
        self.store = SimStore(SqliteStore(str(world.db_path), clock=world.cp_clock), ident)
        self.store.full = world.disk_is_full
        self.store.on_write = world.on_write
        registry = CollectorRegistry()
        self.controllers: list[Controller] = []
        for cls in CONTROLLERS:
            kwargs: dict[str, Any] = {}
            if "registry" in inspect.signature(cls).parameters:
                kwargs["registry"] = registry
            if cls is SourceController:
                kwargs["git"] = FakeGitSource(world.github)
            self.controllers.append(cls(self.store, world.cp_clock, world.config, **kwargs))
        world.plant_controllers(self)
        self.runtime = ControllerRuntime(
            self.store,
            world.cp_clock,
            self.controllers,
            registry,
            rng=random.Random(world.rng.random()),
            threaded=False,
        )
        self.elector = LeaderElector(
            self.store,
            world.cp_clock,
            ident,
            self._started,
            self._stopped,
            duration_seconds=LEASE_SECONDS,
            fence_store=self.store,
            processes=self.procs,
        )
        self.fetched = world.store_revision()
        self.pending: dict[str, list[tuple[float, WatchEvent]]] = {}
        self.kinds = sorted({k for c in self.controllers for k in c.watches})

    def _started(self) -> None:
        self.world.trace(f"{self.ident}: started leading")
        self.runtime.start()
        self.fetched = max(self.fetched, max(self.runtime._delivered.values(), default=0))
        self.pending = {}
        for c in self.controllers:
            if c.resync_seconds:
                self.world.every(c.resync_seconds, f"resync {c.name}@{self.ident}", self._resync(c))

    def _resync(self, c: Controller) -> Callable[[], bool]:
        def run() -> bool:
            if not self.alive or not self.runtime.running:
                return False
            if not self.paused:
                self.runtime.resync(c)
            return True

        return run

    def _stopped(self) -> None:
        self.world.trace(f"{self.ident}: stopped leading")
        self.runtime.stop()

    @property
    def active(self) -> bool:
        return self.alive and not self.paused

    def fetch(self) -> None:
        """Read what the store logged since the last fetch into the per-kind delivery lines."""
        if not self.runtime.running or self.world.store_revision() <= self.fetched:
            return
        events = self.store.inner.watch(None, since=self.fetched, timeout=0)
        for ev in events:
            self.fetched = max(self.fetched, ev.revision)
            if ev.object.kind not in self.kinds:
                continue
            delay = self.world.watch_delay(self)
            line = self.pending.setdefault(ev.object.kind, [])
            due = self.world.clock.monotonic() + delay
            if line and line[-1][0] > due:
                due = line[-1][0]  # a watch stream stays in order
            line.append((due, ev))

    def ready_kinds(self) -> list[str]:
        now = self.world.clock.monotonic()
        return [k for k in sorted(self.pending) if self.pending[k] and self.pending[k][0][0] <= now]

    def deliver(self, kind: str) -> None:
        now = self.world.clock.monotonic()
        line = self.pending[kind]
        batch = []
        while line and line[0][0] <= now:
            batch.append(line.pop(0)[1])
        mode = self.world.watch_mode(self)
        if mode == "coalesce":  # intermediate versions of one record are never seen
            newest: dict[str, WatchEvent] = {}
            for ev in batch:
                newest[ev.object.metadata.name] = ev
            batch = sorted(newest.values(), key=lambda e: e.revision)
        elif mode == "duplicate":
            batch = batch + batch
        self.runtime.deliver(kind, batch)

    def ready_controllers(self) -> list[Controller]:
        if not self.runtime.running:
            return []
        out = []
        for c in self.controllers:
            q = self.runtime.queues.get(c.name)
            if q is not None:
                q.fire_due()
                if q.depth():
                    out.append(c)
        return out

    def next_due(self) -> float | None:
        due: list[float] = []
        if self.runtime.running:
            now = self.world.clock.monotonic()
            for q in self.runtime.queues.values():
                left = q.fire_due()
                if left is not None:
                    due.append(now + left)
            for line in self.pending.values():
                if line:
                    due.append(line[0][0])
        return min(due) if due else None

    def kill(self, release: bool) -> None:
        """The process ends: gracefully (the lease handed back) or by kill -9 (nothing more)."""
        if not self.alive:
            return
        if release and self.elector.leading:
            try:
                self.elector.stop(release=True)
            except ForgeError:
                pass
        self.alive = False
        self.runtime.stop()
        self.store.inner.close()


class World:
    def __init__(self, seed: int, planted: str | None = None, tmp: Path | None = None) -> None:
        self.seed, self.planted = seed, planted
        self.rng = random.Random(seed)
        self._tmp = tempfile.TemporaryDirectory(prefix="forge-sim-", dir=_tmp_root()) if tmp is None else None
        self.root = Path(self._tmp.name) if self._tmp is not None else tmp  # type: ignore[assignment]
        self.db_path = self.root / "forge.db"
        self.clock = SimClock()
        self.start_mono = self.clock.monotonic()
        self.cp_clock = SkewedClock(self.clock)
        self.config = Config(
            data_dir=self.root / "data",
            git_url_template="sim://{full_name}.git",
            secret_key=bytes(range(32)),
            admin_token=ADMIN_TOKEN,
            webhook_secret=WEBHOOK_SECRET,
            domain="sim.test",
        )
        self.github = FakeGithub()
        self.caddy = FakeCaddy()
        self.services = FakeServiceMap()
        self.proxy = SimProxy(self)
        self.lines: list[str] = []
        self.timers: list[Timer] = []
        self._seq = 0
        self.steps = 0
        self.disk_full_until = -1.0
        self.partitioned: set[str] = set()
        self.cuts: list[tuple[frozenset[str], float, float]] = []  # (nodes cut at once, from, until)
        self.watch_faults: dict[str, tuple[str, float, float]] = {}  # cp ident → (mode, until, delay)
        self.api_store = SimStore(SqliteStore(str(self.db_path), clock=self.cp_clock), "api")
        self.api_store.full = self.disk_is_full
        self.api_store.on_write = self.on_write
        self.observer = SqliteStore(str(self.db_path), clock=self.cp_clock)
        self.node_rev: dict[str, int] = {}  # node → revision of the last change its agent must see
        self._revision = 0
        self._unseen: list[WatchEvent] = []
        self.dirty = True  # something was written since the last look at the store
        self.make_api()
        self.cps: list[ControlPlane] = []
        self.agents: dict[str, HollowAgent] = {}
        self.disks: dict[str, NodeDisk] = {}
        self.node_clocks: dict[str, SkewedClock] = {}
        self.node_tokens: dict[str, str] = {}
        self.commit_behavior: dict[str, dict[str, Any]] = {}
        self.write_hooks: list[Callable[[SimStore, str, Any, Any], None]] = []
        self.apply_hooks: list[Callable[[FakeServiceMap], None]] = []
        self.services.on_apply = self._applied
        self.cp_count = 0
        self.faults: list[tuple[str, float, float]] = []  # (kind, from, until) of every fault and action
        self.last_op: dict[str, str] = {}  # app → push | config | rollback: what it asked for last
        self.deleted_apps: set[str] = set()
        self.lost_nodes: set[str] = set()
        self.cordoned: set[str] = set()
        self.rollback_at: dict[str, float] = {}  # app → when a person last asked for a rollback
        self.config_at: dict[str, float] = {}  # app → when its config last changed
        self.crashes: dict[str, int] = {}  # instance → times its app really exited (ground truth)
        self.settle_for = 0.0
        self.restarts: list[tuple[str, float]] = []  # (host, when) a control plane started again
        self.families: set[str] = set()  # the known-bug families this run has on

    # ------------------------------------------------------------------ plumbing

    def make_api(self) -> None:
        import forge.api.app as api_app

        if not isinstance(api_app.build_openapi, functools._lru_cache_wrapper):
            # the same document every time (pure): built once per process, not once per world
            api_app.build_openapi = functools.lru_cache(maxsize=4)(api_app.build_openapi)  # type: ignore[assignment]
        self.api = create_app(self.config, self.api_store, self.cp_clock)  # type: ignore[arg-type]
        self.wsgi = httpx.WSGITransport(app=self.api)
        self.admin = ForgeClient("http://api.sim", ADMIN_TOKEN, transport=SimTransport(self, None))

    def transport(self, agent: HollowAgent) -> httpx.BaseTransport:
        return SimTransport(self, agent)

    def close(self) -> None:
        for cp in self.cps:
            if cp.alive:
                cp.alive = False
                cp.runtime.stop()
                cp.store.inner.close()
        self.api_store.inner.close()
        self.observer.close()
        if self._tmp is not None:
            self._tmp.cleanup()

    def now(self) -> float:
        return self.clock.monotonic() - self.start_mono

    def trace(self, line: str) -> None:
        self.lines.append(f"{self.now():9.3f} {line}")

    def store_revision(self) -> int:
        return self._revision

    def disk_is_full(self) -> bool:
        return self.now() < self.disk_full_until

    def on_write(self, store: SimStore, method: str, before: Any, after: Any) -> None:
        self.dirty = True
        for hook in self.write_hooks:
            hook(store, method, before, after)

    def _applied(self, services: FakeServiceMap) -> None:
        for hook in self.apply_hooks:
            hook(services)

    def behavior(self, commit: str) -> dict[str, Any]:
        return self.commit_behavior.get(commit, {})

    def watch_delay(self, cp: ControlPlane) -> float:
        mode, until, delay = self.watch_faults.get(cp.ident, ("", -1.0, 0.0))
        return delay if mode == "delay" and self.now() < until else 0.0

    def max_watch_delay(self) -> float:
        """The longest watch delay any control plane has now (or had until a moment ago)."""
        return max(
            (
                d
                for mode, until, d in self.watch_faults.values()
                if mode == "delay" and self.now() < until + d
            ),
            default=0.0,
        )

    def watch_mode(self, cp: ControlPlane) -> str:
        mode, until, _ = self.watch_faults.get(cp.ident, ("", -1.0, 0.0))
        return mode if self.now() < until else ""

    def plant_controllers(self, cp: ControlPlane) -> None:
        from tests.sim.planted import plant_controllers

        plant_controllers(self, cp)

    def is_healthy(self, commit: str) -> bool:
        b = self.commit_behavior.get(commit)
        return b is not None and b.get("name") == "healthy"

    def fault_overlapped(self, since: float, kinds: tuple[str, ...]) -> bool:
        return any(k in kinds and until >= since for k, _start, until in self.faults)

    def dials(self) -> dict[str, Any]:
        """``address:port`` → the hollow process listening there (ground truth of the data plane)."""
        out: dict[str, Any] = {}
        for name in sorted(self.disks):
            if name in self.lost_nodes:
                continue
            for p in self.disks[name].procs.values():
                if p.st.pid and p.st.port:
                    out[f"{p.st.address}:{p.st.port}"] = p
        return out

    def leader(self) -> ControlPlane | None:
        return next((c for c in self.cps if c.alive and c.elector.leading), None)

    def settled(self, checker: Any) -> bool:
        """Every release ended (Live, Superseded, Failed, Cancelled): time to judge."""
        from tests.sim.invariants import FINAL

        return all(d.status.phase in FINAL for d in checker.deps.values())

    # ------------------------------------------------------------------ timers

    def at(self, when: float, label: str, fn: Callable[[], None]) -> None:
        self._seq += 1
        heapq.heappush(self.timers, Timer(self.start_mono + when, self._seq, label, fn))

    def after(self, delay: float, label: str, fn: Callable[[], None]) -> None:
        self.at(self.now() + delay, label, fn)

    def every(self, period: float, label: str, fn: Callable[[], bool]) -> None:
        """``fn`` every ``period`` seconds while it returns True."""

        def tick() -> None:
            if fn():
                self.after(period, label, tick)

        self.after(period, label, tick)

    # ------------------------------------------------------------------ pieces

    def start_control_plane(self, host: str = "cp0") -> ControlPlane:
        dead = [c for c in self.cps if c.host == host and not c.alive]
        if dead:
            self.restarts.append((host, self.now()))
        self.cp_count += 1
        cp = ControlPlane(self, f"{host}-pid{self.cp_count}", host, self.cp_count)
        self.cps.append(cp)
        self.trace(f"{cp.ident}: up")

        def elect() -> bool:
            if not cp.alive:
                return False
            if not cp.paused:
                try:
                    cp.elector.step()
                except ControllerCrash as exc:
                    self.crashed(cp, exc)
                    return False
            return True

        elect()
        self.every(cp.elector.renew_interval, f"elect {cp.ident}", elect)
        return cp

    def crashed(self, cp: ControlPlane, exc: BaseException) -> None:
        self.trace(f"{cp.ident}: CRASH {exc}")
        cp.kill(release=False)
        self.after(1.0, f"restart {cp.host}", lambda: self.start_control_plane(cp.host) and None)

    def add_node(self, name: str, skew: float = 0.0) -> None:
        self.disks.setdefault(name, NodeDisk())
        self.node_clocks[name] = SkewedClock(self.clock, skew)
        if name not in self.node_tokens:
            self.node_tokens[name] = self.admin.request("POST", f"/api/v1/nodes/{name}/token")["token"]
        self.start_agent(name)

    def start_agent(self, name: str) -> None:
        index = sorted(self.node_clocks).index(name)
        agent = HollowAgent(self, name, index, self.disks[name], self.node_clocks[name])
        agent.connect(self.node_tokens[name])
        self.agents[name] = agent
        try:
            agent.start()
        except (ForgeError, httpx.HTTPError) as exc:
            self.trace(f"agent {name}: start failed ({type(exc).__name__}); retrying")
            del self.agents[name]
            self.after(1.0, f"agent-start {name}", lambda: self.start_agent(name))

    # ------------------------------------------------------------------ the loop

    def ready(self) -> list[tuple[str, Any, Any]]:
        out: list[tuple[str, Any, Any]] = []
        for cp in self.cps:
            if not cp.active:
                continue
            cp.fetch()
            out += [("watch", cp, k) for k in cp.ready_kinds()]
            out += [("ctl", cp, c) for c in cp.ready_controllers()]
        for name in sorted(self.agents):
            a = self.agents[name]
            if name in self.partitioned:
                continue
            if a.has_work():
                out.append(("agent", a, None))
            if a.wants_relist():
                out.append(("relist", a, None))
        if self.proxy.has_work():
            out.append(("proxy", self.proxy, None))
        if self.timers and self.timers[0].due <= self.clock.monotonic():
            out.append(("timer", None, None))
        return out

    def next_due(self) -> float | None:
        due = [self.timers[0].due] if self.timers else []
        proxy_due = self.proxy.next_due()
        if proxy_due is not None:
            due.append(proxy_due)
        for cp in self.cps:
            if cp.active:
                d = cp.next_due()
                if d is not None:
                    due.append(d)
        for name, a in sorted(self.agents.items()):
            if name in self.partitioned:
                continue
            left = a.next_due()
            if left is not None:
                due.append(self.clock.monotonic() + left)
        return min(due) if due else None

    def observe_pending(self) -> None:
        """Read what was written since the last look (keeps the store's revision current before
        the control planes fetch against it); ``observe`` hands it to the invariants."""
        if not self.dirty:
            return
        self.dirty = False
        events = self.observer.watch(None, since=self._revision, timeout=0)
        for ev in events:
            self._revision = max(self._revision, ev.revision)
            obj = ev.object
            if obj.kind == "Instance":
                # a node's agent watches its own Instances (label forge.dev/node): wake only it,
                # and not for the version it wrote itself
                node = obj.metadata.labels.get(LABEL_NODE) or obj.spec.node
                agent = self.agents.get(node or "")
                if agent is not None:
                    mine = agent.cache.get(obj.metadata.name)
                    if (
                        ev.type == "DELETED"
                        or mine is None
                        or (mine.metadata.resource_version != obj.metadata.resource_version)
                    ):
                        self.node_rev[agent.name] = ev.revision
                for name in self.agents:  # moved away from a node: that node's watch sees it go
                    if name != node and obj.metadata.name in self.agents[name].cache:
                        self.node_rev[name] = ev.revision
        for ev in events:
            self.proxy.feed(ev)
        self._unseen += events

    def observe(self) -> list[WatchEvent]:
        """What the store logged since the last look (the invariants' own, undelayed view)."""
        self.observe_pending()
        out, self._unseen = self._unseen, []
        return out

    def step(self) -> bool:
        """Run one ready piece of work, or move the clock to the next; False when nothing is left."""
        self.observe_pending()
        work = self.ready()
        if not work:
            due = self.next_due()
            if due is None:
                return False
            self.clock.advance(max(0.0, due - self.clock.monotonic()))
            return True
        kind, who, what = work[self.rng.randrange(len(work))]
        self.steps += 1
        # Work takes time: a microsecond a step (4 ulps of the wall clock). Without it a reconcile
        # that asks to run again "in 2.4e-07 s" (a deadline a rounding error away) spins forever
        # at one frozen instant, which no real clock allows.
        self.clock.advance(STEP_SECONDS)
        if kind == "timer":
            t = heapq.heappop(self.timers)
            self.trace(t.label)
            t.fn()
        elif kind == "watch":
            self.trace(f"watch {what}@{who.ident}")
            who.deliver(what)
        elif kind == "ctl":
            who.store.actor = what.name
            try:
                key = who.runtime.process_one(what)
                self.trace(f"{what.name}@{who.ident} {key}")
            except ControllerCrash as exc:
                self.crashed(who, exc)
            finally:
                who.store.actor = ""
        elif kind == "proxy":
            self.trace(f"proxy {who.step()}")
        elif kind == "agent":
            key = who.step()
            self.trace(f"agent {who.name} {key}")
        elif kind == "relist":
            try:
                who.relist()
                self.trace(f"agent {who.name} relist")
            except (ForgeError, httpx.HTTPError) as exc:
                who.seen_rev = self.node_rev.get(who.name, 0)
                self.trace(f"agent {who.name} relist failed: {type(exc).__name__}")
        return True

    def post_webhook(self, repo: str, ref: str, sha: str, delivery: str) -> int:
        import hashlib
        import hmac

        body = json.dumps(
            {"ref": ref, "after": sha, "repository": {"full_name": repo}}, separators=(",", ":")
        ).encode()
        sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
        req = httpx.Request(
            "POST",
            "http://api.sim/api/v1/webhook/github",
            content=body,
            headers={
                "X-GitHub-Event": "push",
                "X-GitHub-Delivery": delivery,
                "X-Hub-Signature-256": sig,
                "Content-Type": "application/json",
            },
        )
        resp = self.wsgi.handle_request(req)
        resp.read()
        return resp.status_code


def _tmp_root() -> str | None:
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None
