"""What must hold in every run, checked as the store changes and once the run has settled.

Each check raises ``Violation(name, detail)``; the run stops at the first. The checker follows
the store through its own undelayed watch (``World.observe``), so it sees every intermediate
version the controllers may miss, and judges traffic against the hollow agents' ground truth
(which processes run and answer), not against what the store claims.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from forge.clock import parse_iso
from forge.instancespec import app_config
from forge.models import App, Deployment, DeploymentConfig, Event, Instance, Lease, Node, Secret
from forge.store.base import WatchEvent
from tests.controllers.ownership import Table, changed_paths, derived_paths, parse_table, row_for

if TYPE_CHECKING:
    from tests.sim.fakes import FakeServiceMap, SimStore
    from tests.sim.world import World

LEADER_ROUND = 5.0  # the elector's renew interval (15 s lease / 3)
ROUTE_GRACE = 3.0  # seconds a switch may stay half-done while a leader acts
ROUTE_LAG = 0.5  # seconds traffic may follow the store late, beyond the watch delay in effect
FINAL = ("Live", "Superseded", "Failed", "Cancelled")
EXCUSING_FAULTS = ("node-loss", "partition", "disk-full", "git-down", "cut-nodes")
BLAMING_REASONS = ("RolledBack", "CrashLoopBackOff", "HealthCheckFailed", "Unhealthy", "OOMKilled")


class Violation(Exception):
    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name, self.detail = name, detail


def number(dep_name: str) -> int:
    tail = dep_name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


COUNTS = ("replicas", "processes")  # changed in place by a scale: not release config


def comparable(
    cfg: DeploymentConfig | None, secrets: bool = True, counts: bool = True
) -> dict[str, Any] | None:
    if cfg is None:
        return None
    d = cfg.model_dump()
    d["processes"] = d.get("processes") or None
    d["node_selector"] = d.get("node_selector") or None
    if not secrets:
        d.pop("secrets_version", None)
    if not counts:
        for k in COUNTS:
            d.pop(k, None)
    return d


MIN_READY_TOLERANCE = 0.01  # rounding: promotion may not come earlier than min_ready at all


@dataclass
class Checker:
    world: World
    enabled: frozenset[str] = frozenset()
    apps: dict[str, App] = field(default_factory=dict)
    secrets: dict[str, Secret] = field(default_factory=dict)
    deps: dict[str, Deployment] = field(default_factory=dict)
    insts: dict[str, Instance] = field(default_factory=dict)
    deliveries: dict[str, str] = field(default_factory=dict)
    last_number: dict[str, int] = field(default_factory=dict)
    rollback_events: dict[str, float] = field(default_factory=dict)  # app → when recorded
    bad_since: dict[str, float] = field(default_factory=dict)
    born: dict[str, float] = field(default_factory=dict)
    owners: Table = field(default_factory=dict)
    writers: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    failed: Violation | None = None  # raised in a write (a controller's runtime swallows it)

    def __post_init__(self) -> None:
        self.owners = parse_table()
        self.world.write_hooks.append(self.on_write)
        self.world.apply_hooks.append(lambda s: self.check_routes(s, at_apply=True))

    def on(self, name: str) -> bool:
        return not self.enabled or name in self.enabled

    # ------------------------------------------------------------------ as the store changes

    def observe(self, events: list[WatchEvent]) -> None:
        if self.failed is not None:
            raise self.failed
        for ev in events:
            obj = ev.object
            name = obj.metadata.name
            if isinstance(obj, App):
                self._app(ev, obj)
            elif isinstance(obj, Secret):
                if ev.type == "DELETED":
                    self.secrets.pop(obj.spec.app, None)
                else:
                    self.secrets[obj.spec.app] = obj
            elif isinstance(obj, Deployment):
                if ev.type == "ADDED":
                    self._new_release(obj)
                if ev.type == "DELETED":
                    self.deps.pop(name, None)
                else:
                    self._release_change(self.deps.get(name), obj)
                    self.deps[name] = obj
            elif isinstance(obj, Instance):
                if ev.type == "DELETED":
                    self.insts.pop(name, None)
                else:
                    self._instance(obj)
                    self.insts[name] = obj
            elif isinstance(obj, Event) and (
                re.search(r"roll", obj.spec.reason, re.I)
                and obj.spec.involved_object.kind in ("App", "Deployment")
            ):
                app = obj.spec.involved_object.name
                if obj.spec.involved_object.kind == "Deployment":
                    app = app.rsplit("-", 1)[0]
                self.rollback_events[app] = self.world.now()
        if self.on("one-live"):
            self.check_one_live()
        self.check_routes(self.world.services, at_apply=False)
        self.check_leadership()

    def check_one_live(self) -> None:
        """At most one Live release per App. Two writes make a switch (the new one Live, the old
        one Superseded), so a controller that dies between them leaves two until a leader acts
        again: allowed for ROUTE_GRACE seconds of an active leader, never longer."""
        live: dict[str, list[str]] = {}
        for d in self.deps.values():
            if d.status.phase == "Live":
                live.setdefault(d.spec.app, []).append(d.metadata.name)
        now = self.world.now()
        leader = self.world.leader()
        for app, names in sorted(live.items()):
            key = f"one-live/{app}"
            if len(names) <= 1:
                self.bad_since.pop(key, None)
                continue
            if leader is None or leader.paused:
                self.bad_since[key] = now
                continue
            first = self.bad_since.setdefault(key, now)
            if now - first >= ROUTE_GRACE:
                raise Violation(
                    "one-live",
                    f"{app} has {len(names)} Live releases: {sorted(names)} for {now - first:.1f}s with a leader",
                )
        for key in [k for k in self.bad_since if k.startswith("one-live/")]:
            if key[len("one-live/") :] not in live or len(live[key[len("one-live/") :]]) <= 1:
                del self.bad_since[key]

    def check_leadership(self) -> None:
        """A control plane restarted on the same host leads within one election round (plus a
        second): it must not wait out the lease of its own dead predecessor."""
        w = self.world
        if not w.restarts or not self.on("leader-after-restart"):
            return
        host, since = w.restarts[-1]
        if w.leader() is not None:
            w.restarts.clear()
            return
        since = max(since, w.disk_full_until)  # a full store takes no Lease: judged once writable
        if w.now() - since > LEADER_ROUND + 1.0:
            raise Violation(
                "leader-after-restart",
                f"the control plane restarted on {host} at {since:.1f}s has not led for "
                f"{w.now() - since:.1f}s: it waits out its dead predecessor's lease",
            )

    def _app(self, ev: WatchEvent, app: App) -> None:
        name = app.metadata.name
        old = self.apps.get(name)
        if ev.type == "DELETED":
            self.apps.pop(name, None)
            return
        self.apps[name] = app
        was = old.status.live_deployment if old is not None else None
        now = app.status.live_deployment
        if was and now and was != now and self.on("live-changes"):
            target = self.deps.get(now)
            if number(now) < number(was) and name not in self.rollback_events:
                raise Violation(
                    "live-changes", f"{name}: live went back from {was} to {now} with no rollback recorded"
                )
            if target is not None and target.status.phase in ("Failed", "Cancelled"):
                raise Violation(
                    "live-changes", f"{name}: live moved to {now}, which is {target.status.phase}"
                )
        if now and now != was and self.on("min-ready"):
            self._promoted(name, now)

    def _promoted(self, app: str, dep_name: str) -> None:
        """Every ready web Instance of a promoted release answered for min_ready (ground truth)."""
        dep = self.deps.get(dep_name)
        if dep is None or dep.spec.trigger.type == "rollback" or dep.status.manifest is None:
            return
        need = dep.status.manifest.health.min_ready_seconds
        mono = self.world.clock.monotonic()
        for disk in self.world.disks.values():
            for p in disk.procs.values():
                if p.st.deployment != dep_name or not p.st.pid or p.st.name.endswith("-release"):
                    continue
                inst = self.insts.get(p.st.name)
                if inst is None or inst.spec.process != "web" or not inst.status.ready:
                    continue
                # min_ready counts from the leader's first look at the Instance ready (the
                # Stopwatch's ``observed``): no step, skew or leader change may shorten it at all
                if p.ready_mono is None or mono - p.ready_mono < need - MIN_READY_TOLERANCE:
                    ready_for = 0.0 if p.ready_mono is None else mono - p.ready_mono
                    raise Violation(
                        "min-ready",
                        f"{dep_name} promoted while {p.st.name} had answered for {ready_for:.1f}s "
                        f"(min_ready {need:.0f}s)",
                    )

    def _new_release(self, dep: Deployment) -> None:
        app, name = dep.spec.app, dep.metadata.name
        self.born[name] = self.world.now()
        if self.on("numbers"):
            n = number(name)
            if n <= self.last_number.get(app, 0):
                raise Violation(
                    "numbers", f"{name} created after {app}-{self.last_number[app]}: numbers must increase"
                )
            self.last_number[app] = n
        trig = dep.spec.trigger
        if trig.delivery_id and self.on("one-per-push"):
            seen = self.deliveries.get(trig.delivery_id)
            if seen is not None:
                raise Violation("one-per-push", f"delivery {trig.delivery_id} made {seen} and {name}")
            self.deliveries[trig.delivery_id] = name
        current = self.apps.get(app)
        if trig.type == "rollback":
            target = self.deps.get(dep.spec.rollback_of or "")
            if target is None or not self.on("rollback-config"):
                return
            want = [
                comparable(c, secrets=False, counts=False)
                for c in (target.status.applied_config, target.spec.config)
            ]
            got = comparable(dep.spec.config, secrets=False, counts=False)
            if got is not None and got not in want:
                raise Violation(
                    "rollback-config",
                    f"{name} rolls back to {target.metadata.name} with config {got}, not {want[0]}",
                )
            if got is None and any(w is not None for w in want):
                raise Violation(
                    "rollback-config", f"{name} rolls back to {target.metadata.name} without its config"
                )
            # ... and with the App's replica counts as they are now: a scale is in place, and a
            # rollback (a person's or the rollback controller's) must not undo it (seed 887)
            if current is not None and dep.spec.config is not None and self.on("rollback-counts"):
                want_n = comparable(app_config(current, None))
                got_n = comparable(dep.spec.config)
                assert want_n is not None and got_n is not None
                for k in COUNTS:
                    if got_n.get(k) != want_n.get(k):
                        raise Violation(
                            "rollback-counts",
                            f"{name} ({'automatic' if dep.metadata.owner_ref else 'asked for'}) rolls "
                            f"back to {target.metadata.name} with {k}={got_n.get(k)!r}, the App says "
                            f"{want_n.get(k)!r}",
                        )
            return
        if current is None or dep.spec.config is None or not self.on("release-config"):
            return
        want_cfg = comparable(app_config(current, self.secrets.get(app)))
        got_cfg = comparable(dep.spec.config)
        if want_cfg != got_cfg:
            diff = {
                k: (got_cfg.get(k) if got_cfg else None, v)
                for k, v in (want_cfg or {}).items()
                if (got_cfg or {}).get(k) != v
            }
            raise Violation(
                "release-config",
                f"{name} ({trig.type}) carries a config other than {app}'s at that time: "
                + ", ".join(f"{k}={g!r} (App: {w!r})" for k, (g, w) in sorted(diff.items())),
            )

    def _release_change(self, old: Deployment | None, dep: Deployment) -> None:
        was = old.status.phase if old is not None else ""
        if dep.status.phase == was or dep.status.phase != "Failed" or not self.on("healthy-not-failed"):
            return
        if not self.world.is_healthy(dep.spec.commit):
            return
        name = dep.metadata.name
        crashed = sum(n for i, n in self.world.crashes.items() if i.startswith(name + "-"))
        if crashed:
            return
        # A release the platform could not place (nodes lost, cordoned, drained; a full disk;
        # GitHub down) may fail; one failed *as the app's fault* only when its processes were lost.
        blamed = dep.status.reason in BLAMING_REASONS
        excuses = ("node-loss", "partition", "cut-nodes") if blamed else (*EXCUSING_FAULTS, "cordon", "drain")
        excused = self.world.fault_overlapped(self.born.get(name, 0.0), excuses)
        if excused:
            return
        raise Violation(
            "healthy-not-failed",
            f"{name} (healthy commit, no crash of its processes) ended Failed: "
            f"{dep.status.reason}: {dep.status.message[:160]}",
        )

    def _instance(self, inst: Instance) -> None:
        if not self.on("no-phantom-restarts"):
            return
        name = inst.metadata.name
        real = self.world.crashes.get(name, 0)
        if inst.status.restarts > real:
            raise Violation(
                "no-phantom-restarts",
                f"{name} reports {inst.status.restarts} restarts, its app exited {real} times "
                f"({inst.status.reason or 'no reason'})",
            )

    def on_write(self, store: SimStore, method: str, before: Any, after: Any) -> None:
        """Judge a write as it commits. A Violation raised here lands inside the writer — a
        controller's reconcile, whose runtime catches every exception per item and retries — so
        it is also kept and raised again by the next ``observe``, after the step."""
        try:
            self._on_write(store, method, before, after)
        except Violation as v:
            if self.failed is None:
                self.failed = v
            raise

    def _on_write(self, store: SimStore, method: str, before: Any, after: Any) -> None:
        if store.name != "api" and self.on("deposed-leader"):
            try:
                lease = self.world.observer.get(Lease, "controllers-leader")
            except Exception:  # noqa: BLE001 - no lease yet: the first election writes it
                lease = None
            if lease is not None and lease.spec.holder != store.name and after.kind != "Lease":
                raise Violation(
                    "deposed-leader",
                    f"{store.name} wrote {after.kind} {after.metadata.name} while {lease.spec.holder!r} leads",
                )
        if method == "delete" and isinstance(after, Instance) and self.on("live-instance-kept"):
            app = self.apps.get(after.spec.app)
            live = app.status.live_deployment if app is not None else None
            if (
                live == after.spec.deployment
                and after.spec.desired == "Running"
                and after.status.ready
                and app is not None
                and app.metadata.deletion_timestamp is None
            ):
                raise Violation(
                    "live-instance-kept",
                    f"{store.actor or store.name} deleted {after.metadata.name}, a ready Instance of live {live}",
                )
        if method == "update_status" and isinstance(after, Node) and self.on("mass-cut-evicted"):
            self._node_verdict(before, after)
        if method == "update_status" and store.actor and self.on("owner"):
            # one writer per status field: main's table (docs/CONTRACTS.md), read by the same
            # parser as the controller suite's check (tests/controllers/ownership.py)
            old = before.status.dump() if before is not None else {}
            for path in sorted(changed_paths(old, after.status.dump()) - derived_paths(after)):
                row = row_for(self.owners, after.kind, path)
                if row is None:
                    raise Violation(
                        "owner", f"{store.actor} wrote {after.kind}.status.{path}, which has no owner"
                    )
                if store.actor != row.owner and store.actor not in row.also:
                    raise Violation(
                        "owner",
                        f"{store.actor} wrote {after.kind}.status.{path}; owned by {row.owner}"
                        + (f" (also {sorted(row.also)})" if row.also else ""),
                    )

    def _node_verdict(self, before: Node | None, after: Node) -> None:
        """Nodes cut off at one instant — all of them, or more than 55 % and more than one — look
        like a fault on the control plane's side: none of them may be written off (NodeLost),
        whichever lease happens to expire first (nodes controller, README "When a worker dies")."""
        cond = after.status.condition("Ready")
        if cond is None or cond.status != "False" or cond.reason != "NodeLost":
            return
        old = before.status.condition("Ready") if before is not None else None
        if old is not None and old.status == "False" and old.reason == "NodeLost":
            return
        w = self.world
        name, now, total = after.metadata.name, w.now(), len(w.node_clocks)
        for nodes, start, until in w.cuts:
            mass = len(nodes) == total or (len(nodes) > 1 and len(nodes) > 0.55 * total)
            # still all cut (a partition of one of them may have healed it earlier: then the
            # others lapse alone and are rightly written off)
            together = all(n in w.partitioned for n in nodes)
            if name in nodes and mass and together and start <= now <= until:
                raise Violation(
                    "mass-cut-evicted",
                    f"{name} written off {now - start:.1f}s into a cut of {len(nodes)} of {total} nodes "
                    f"at once ({', '.join(sorted(nodes))})",
                )

    # ------------------------------------------------------------------ traffic

    def check_routes(self, services: FakeServiceMap, at_apply: bool) -> None:
        if not self.on("routes"):
            return
        now = self.world.now()
        leader = self.world.leader()
        if leader is None or leader.paused:
            for key in [k for k in self.bad_since if not k.startswith("one-live/")]:
                del self.bad_since[key]  # nobody can act on what changed: the grace starts with a leader
            return
        by_dial = {
            f"{i.status.address}:{i.status.port}": i
            for i in self.insts.values()
            if i.status.port and i.status.address
        }
        seen: set[str] = set()
        for port, dials in sorted(services.backends.items()):
            for dial in dials:
                key = f"{port}/{dial}"
                seen.add(key)
                why = self._bad_dial(dial, by_dial)
                if why is None:
                    self.bad_since.pop(key, None)
                    continue
                first = self.bad_since.setdefault(key, now)
                if now - first >= ROUTE_LAG + self.world.max_watch_delay():
                    raise Violation(
                        "routes",
                        f"traffic for service port {port} goes to {dial}: {why} for {now - first:.1f}s",
                    )
        for key in list(self.bad_since):
            if key not in seen and not key.startswith("one-live/"):
                del self.bad_since[key]

    def _bad_dial(self, dial: str, by_dial: dict[str, Instance]) -> str | None:
        """Judged by what the store says (the control plane cannot know better): the Instance
        there is gone, not ready, not meant to run, or of a Failed release."""
        inst = by_dial.get(dial)
        if inst is None:
            return "no Instance is there"
        name = inst.metadata.name
        if not inst.status.ready or inst.status.phase != "Running":
            return f"{name} is not ready ({inst.status.phase})"
        if inst.spec.desired != "Running":
            return f"{name} is being stopped"
        dep = self.deps.get(inst.spec.deployment)
        if dep is not None and dep.status.phase == "Failed":
            return f"{name}'s release {dep.metadata.name} is Failed"
        return None

    # ------------------------------------------------------------------ once settled

    def final(self) -> None:
        w = self.world
        if self.on("releases-end"):
            for name, d in sorted(self.deps.items()):
                if d.status.phase not in FINAL:
                    raise Violation(
                        "releases-end",
                        f"{name} is still {d.status.phase or 'new'} ({d.status.reason}) {w.settle_for:.0f}s after the last fault",
                    )
        if self.on("deleted-clean"):
            for app in sorted(w.deleted_apps):
                left = [n for n, d in self.deps.items() if d.spec.app == app]
                left += [n for n, i in self.insts.items() if i.spec.app == app]
                left += [f"secret {app}"] if app in self.secrets else []
                left += [
                    n
                    for disk in w.disks.values()
                    for n, p in disk.procs.items()
                    if p.st.app == app and p.st.pid
                ]
                if app in self.apps:
                    left.append(f"App {app}")
                if left:
                    raise Violation("deleted-clean", f"{app} was deleted; still there: {sorted(left)[:6]}")
        usable = [n for n in w.node_clocks if n not in w.lost_nodes and n not in w.cordoned]
        for app_name, app in sorted(self.apps.items()):
            last = w.last_op.get(app_name)
            if last is None or not usable:  # no node left to run it: nothing can go live
                continue
            live = self.deps.get(app.status.live_deployment or "")
            head = w.github.heads.get((app.spec.repo, "refs/heads/main"))
            head_ok = live is not None and live.spec.commit == head
            head_ok = (
                head_ok
                or any(  # the infrastructure failed it (a lost node): redeploying is a person's call
                    d.spec.commit == head
                    and d.status.phase == "Failed"
                    and w.fault_overlapped(self.born.get(n, 0.0), EXCUSING_FAULTS)
                    for n, d in self.deps.items()
                )
            )
            if self.on("head-live") and last == "push" and head and w.is_healthy(head) and not head_ok:
                raise Violation(
                    "head-live",
                    f"{app_name}: the branch head {head[:8]} (healthy) is not live; live is "
                    f"{live.metadata.name + ' @' + live.spec.commit[:8] if live else 'nothing'}",
                )
            # A rollback pins its target's config until the App is edited again — a person's, and
            # the rollback controller's (recorded as an Event) — but never its counts (a scale is
            # in place): after one, only the counts must match the App.
            rolled_at = max(w.rollback_at.get(app_name, -1.0), self.rollback_events.get(app_name, -1.0))
            pinned = rolled_at > w.config_at.get(app_name, 0.0)
            # as for the head: a release of the new config that the infrastructure failed (its
            # release command on a node that was lost) is not retried — that is a person's call
            if any(
                d.spec.app == app_name
                and d.status.phase == "Failed"
                and self.born.get(n, 0.0) >= w.config_at.get(app_name, 0.0)
                and w.fault_overlapped(self.born.get(n, 0.0), EXCUSING_FAULTS)
                for n, d in self.deps.items()
            ):
                pinned = True
            if (
                self.on("config-live")
                and live is not None
                and last in ("push", "config")
                and w.is_healthy(live.spec.commit)
            ):
                cfg = live.status.applied_config or live.spec.config
                want = app_config(app, self.secrets.get(app_name))
                got_c, want_c = comparable(cfg, secrets=False) or {}, comparable(want, secrets=False) or {}
                for k in COUNTS if pinned else ("replicas", "processes", "env", "domains"):
                    if got_c.get(k) != want_c.get(k):
                        raise Violation(
                            "config-live",
                            f"{app_name}: live {live.metadata.name} runs {k}={got_c.get(k)!r}, the App says {want_c.get(k)!r}",
                        )
                running = sum(
                    1
                    for disk in w.disks.values()
                    for p in disk.procs.values()
                    if p.st.deployment == live.metadata.name
                    and p.st.pid
                    and p.st.ready
                    and (i := self.insts.get(p.st.name)) is not None
                    and i.spec.process == "web"
                )
                if running != app.spec.replicas:
                    raise Violation(
                        "config-live",
                        f"{app_name}: {running} ready web processes of {live.metadata.name}, the App wants {app.spec.replicas}",
                    )


def parse_time(text: str | None, default: float) -> float:
    return parse_iso(text) if text else default
