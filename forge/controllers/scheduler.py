"""Scheduler: binds each unassigned Instance to a Ready node with room for it.

Requests (``spec.resources`` cpu and memory) of the non-terminal Instances already bound to a
node are summed against its ``status.allocatable``. Memory is a hard limit (the cgroup OOM-kills
past it) and is never overcommitted; CPU is a CFS ceiling, not a reservation — an app that
idles leaves its share to the others — so CPU is overcommitted by ``CPU_OVERCOMMIT``, the way
Heroku/Render pack small dynos: a 2-core node runs sixteen ``cpu: 0.5`` apps, each capped at
half a core. The decision is the pure ``choose_node``:

- **Filter**: Ready, not cordoned (``spec.unschedulable``) nor draining, carrying every label
  of the Instance's ``nodeSelector`` (the App's, copied by ``instance_spec``), with room.
- **Spread** replicas of one Deployment: first across topology domains — the node label
  ``topology.forge.dev/zone`` (nodes without it form one domain) — then across nodes: the
  domain, then the node, with the fewest replicas of that Deployment wins.
- **Bin-pack by memory** otherwise: the node that is *most* allocated once the Instance is
  placed wins (then the name, so the choice is deterministic). Packing keeps whole nodes free
  for large apps and lets an operator drain and retire the emptiest machines; spreading for
  availability is the job of the two rules above, so packing never piles up one app's
  replicas. CPU is not packed on: it is overcommitted and only a ceiling.

Binding is the one spec write a controller makes (as Kubernetes' binding): ``spec.node`` and
the ``forge.dev/node`` label in one ``update`` carrying the resourceVersion read, then status
Scheduled + ``Scheduled True``. When nothing fits: ``Scheduled False / Unschedulable``, one
Warning Event per distinct message (not one per retry), and a re-check after 10 s (Node
changes wake it sooner).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final, cast

from forge.controllers.base import DONE, Controller, Result
from forge.controllers.cache import read_only, read_only_field
from forge.errors import NotFound
from forge.models import INSTANCE_TERMINAL, LABEL_NODE, App, Instance, Node, set_condition
from forge.store.base import WatchEvent

SCHEDULED: Final[str] = "Scheduled"
REASON_SCHEDULED: Final[str] = "Scheduled"
REASON_UNSCHEDULABLE: Final[str] = "Unschedulable"
REASON_MOVED: Final[str] = "InstanceMoved"
RETRY_SECONDS = 10.0
CPU_OVERCOMMIT: Final[float] = 4.0
TOPOLOGY_ZONE: Final[str] = "topology.forge.dev/zone"


def is_node_ready(node: Node) -> bool:
    """Ready and open for new Instances (not cordoned, not draining, not being deleted)."""
    return (
        node.status.is_true("Ready")
        and not node.spec.unschedulable
        and not node.spec.drain
        and node.metadata.deletion_timestamp is None
    )


def needs_binding(inst: Instance) -> bool:
    return (
        inst.spec.node is None
        and inst.spec.desired == "Running"
        and inst.status.phase not in INSTANCE_TERMINAL
        and inst.metadata.deletion_timestamp is None
    )


def needs_status(inst: Instance) -> bool:
    """Bound, but the Scheduled status did not get written (a crash between the two writes)."""
    return (
        bool(inst.spec.node) and inst.status.phase in ("", "Pending") and not inst.status.is_true(SCHEDULED)
    )


def _fmt_mem(n: float) -> str:
    return f"{n / 1024**2:.0f}Mi"


def matches_selector(node: Node, selector: dict[str, str]) -> bool:
    labels = node.metadata.labels
    return all(labels.get(k) == v for k, v in selector.items())


@dataclass
class NodeUsage:
    """What the non-terminal Instances bound to one node ask for."""

    cpu: float = 0.0
    memory: int = 0
    instances: int = 0


def compute_usage(instances: Iterable[Instance], skip: str = "") -> dict[str, NodeUsage]:
    """node name → summed requests of its live Instances (``skip``: the one being placed)."""
    used: dict[str, NodeUsage] = {}
    for other in instances:
        node = other.spec.node
        if not node or other.metadata.name == skip or other.status.phase in INSTANCE_TERMINAL:
            continue
        u = used.setdefault(node, NodeUsage())
        u.cpu += other.spec.resources.cpu
        u.memory += other.spec.resources.memory
        u.instances += 1
    return used


def choose_node(
    instance: Instance,
    nodes: list[Node],
    instances: list[Instance],
    pinned: str | None = None,
    usage: dict[str, NodeUsage] | None = None,
) -> tuple[Node | None, str]:
    """Pick a node for ``instance`` (pure). Returns (node, "") or (None, why nothing fits).

    ``instances``: at least every Instance of the same Deployment (they decide the spread);
    ``usage``: every node's summed requests (computed from ``instances`` when not given).
    ``pinned``: the only node it may go to (the one holding its app's persistent storage)."""
    if pinned is not None:
        node, why = choose_node(
            instance, [n for n in nodes if n.metadata.name == pinned], instances, usage=usage
        )
        return node, why and f"pinned to node {pinned}, which holds the app's storage: {why}"
    want = instance.spec.resources
    me = instance.metadata.name
    used = usage if usage is not None else compute_usage(instances, skip=me)
    same_node: dict[str, int] = {}  # node → replicas of this Deployment already there
    for other in instances:
        if (
            other.spec.deployment == instance.spec.deployment
            and other.spec.node
            and other.metadata.name != me
            and other.status.phase not in INSTANCE_TERMINAL
            and other.spec.desired == "Running"
        ):
            same_node[other.spec.node] = same_node.get(other.spec.node, 0) + 1
    candidates: list[tuple[Node, float]] = []  # (node, memory fraction allocated once it is placed)
    cordoned = not_ready = unmatched = short_cpu = short_mem = 0
    for node in nodes:
        if node.metadata.deletion_timestamp is not None or not node.status.is_true("Ready"):
            not_ready += 1
            continue
        if node.spec.unschedulable or node.spec.drain:
            cordoned += 1
            continue
        if not matches_selector(node, instance.spec.node_selector):
            unmatched += 1
            continue
        u = used.get(node.metadata.name, NodeUsage())
        alloc = node.status.allocatable
        if u.cpu + want.cpu > alloc.cpu * CPU_OVERCOMMIT + 1e-9:
            short_cpu += 1
            continue
        if u.memory + want.memory > alloc.memory:
            short_mem += 1
            continue
        candidates.append((node, (u.memory + want.memory) / alloc.memory if alloc.memory else 1.0))
    if candidates:
        zones: dict[str, int] = {}  # topology domain → replicas of this Deployment in it
        zone_of = {n.metadata.name: n.metadata.labels.get(TOPOLOGY_ZONE, "") for n in nodes}
        for node_name, count in same_node.items():
            zone = zone_of.get(node_name, "")
            zones[zone] = zones.get(zone, 0) + count

        def score(c: tuple[Node, float]) -> tuple[int, int, float, str]:
            name = c[0].metadata.name
            # fewest replicas in its zone, then on the node, then the fullest node (bin-packing)
            return (zones.get(zone_of[name], 0), same_node.get(name, 0), -c[1], name)

        return min(candidates, key=score)[0], ""
    if not nodes:
        return None, "no nodes are registered"
    parts = []
    if not_ready:
        parts.append(f"{not_ready} not ready")
    if cordoned:
        parts.append(f"{cordoned} cordoned")
    if unmatched:
        sel = ",".join(f"{k}={v}" for k, v in sorted(instance.spec.node_selector.items()))
        parts.append(f"{unmatched} without the labels of nodeSelector {sel}")
    if short_cpu:
        parts.append(f"{short_cpu} without {want.cpu:g} CPU free")
    if short_mem:
        parts.append(f"{short_mem} without {_fmt_mem(want.memory)} memory free")
    return None, f"0/{len(nodes)} nodes can run it: " + ", ".join(parts)


class SchedulerController(Controller):
    name: ClassVar[str] = "scheduler"
    watches: ClassVar[tuple[str, ...]] = ("Instance", "Node")
    resync_seconds: ClassVar[float] = 30.0

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        if event.object.kind == "Node":
            return self.all_keys()
        if event.type == "DELETED":
            return ()
        inst = cast(Instance, event.object)  # the other kind watched, Node, returned above
        return (inst.metadata.name,) if needs_binding(inst) or needs_status(inst) else ()

    def all_keys(self) -> Iterable[str]:
        return [
            i.metadata.name for i in read_only(self.store, Instance) if needs_binding(i) or needs_status(i)
        ]

    def reconcile(self, key: str) -> Result | None:
        try:
            inst: Instance = self.store.get(Instance, key)
        except NotFound:
            return DONE
        if needs_status(inst):
            return self._mark_scheduled(inst, inst.spec.node or "")
        if not needs_binding(inst):
            return DONE
        nodes = read_only(self.store, Node)  # choose_node only reads: no copies of the whole cluster
        usage = compute_usage(read_only(self.store, Instance), skip=inst.metadata.name)
        siblings = read_only_field(self.store, Instance, "spec.app", inst.spec.app)  # they decide the spread
        app = self._storage_app(inst)
        node, why = choose_node(
            inst, nodes, siblings, app.status.storage_node if app is not None else None, usage=usage
        )
        now = self.clock.now_iso()
        if node is None:
            msg = f"{why}; retrying"
            if set_condition(inst.status, SCHEDULED, "False", REASON_UNSCHEDULABLE, msg, now):
                # Its own condition only: the phase is the agent's ("" reads as Pending).
                inst = self.store.update_status(inst)
                self.recorder.record(inst, "Warning", REASON_UNSCHEDULABLE, msg)
            return Result(requeue_after=RETRY_SECONDS)
        name = node.metadata.name
        if app is not None and app.status.storage_node is None:
            # The app's storage will live on this node from now on: recorded before the first
            # Instance is bound (Conflict retries), so two Instances never pick two nodes.
            app.status.storage_node = name
            self.store.update_status(app)
            self.recorder.record(app, "Normal", "StoragePinned", f"persistent storage lives on node {name}")
        inst.spec.node = name
        inst.metadata.labels = {**inst.metadata.labels, LABEL_NODE: name}
        inst = self.store.update(inst)
        self._record_move(inst, name)
        return self._mark_scheduled(inst, name)

    def _record_move(self, inst: Instance, name: str) -> None:
        """A replacement for an Instance of a lost or draining node: say on that node where it went."""
        head, sep, k = inst.metadata.name.rpartition("-r")
        if not sep or not k.isdigit():
            return
        before = head if int(k) <= 1 else f"{head}-r{int(k) - 1}"
        try:
            old: Instance = self.store.get(Instance, before)
            node: Node = self.store.get(Node, old.spec.node or "")
        except NotFound:
            return
        if node.metadata.name == name:
            return
        why = "lost" if old.status.phase == "Lost" else "draining" if node.spec.drain else ""
        if why:
            self.recorder.record(
                node,
                "Normal",
                REASON_MOVED,
                f"{before} ({why}) replaced by {inst.metadata.name} on node {name}",
            )

    def _storage_app(self, inst: Instance) -> App | None:
        """The App when this Instance mounts its persistent storage (then it is pinned)."""
        if not inst.spec.storage:
            return None
        try:
            return self.store.get(App, inst.spec.app)
        except NotFound:
            return None

    def _mark_scheduled(self, inst: Instance, name: str) -> Result:
        now = self.clock.now_iso()
        # Its own condition only: the phase is the agent's, reported once it has the Instance
        # ("" until then, shown as Pending; BUILDING_PHASES reads it as not yet a process).
        set_condition(inst.status, SCHEDULED, "True", REASON_SCHEDULED, f"bound to {name}", now)
        inst = self.store.update_status(inst)
        self.recorder.record(inst, "Normal", REASON_SCHEDULED, f"bound to {name}")
        return DONE
