"""Scheduler: binds each unassigned Instance to a Ready node with room for it.

Requests (``spec.resources`` cpu and memory) of the non-terminal Instances already bound to a
node are summed against its ``status.allocatable``. Memory is a hard limit (the cgroup OOM-kills
past it) and is never overcommitted; CPU is a CFS ceiling, not a reservation — an app that
idles leaves its share to the others — so CPU is overcommitted by ``CPU_OVERCOMMIT``, the way
Heroku/Render pack small dynos: a 2-core node runs sixteen ``cpu: 0.5`` apps, each capped at
half a core. Among the nodes that fit, replicas of one
Deployment spread (fewest Instances of that Deployment first), then the least allocated node
wins, then the name (deterministic). The decision is the pure ``choose_node``.

Binding is the one spec write a controller makes (as Kubernetes' binding): ``spec.node`` and
the ``forge.dev/node`` label in one ``update`` carrying the resourceVersion read, then status
Scheduled + ``Scheduled True``. When nothing fits: ``Scheduled False / Unschedulable``, one
Warning Event per distinct message (not one per retry), and a re-check after 10 s (Node
changes wake it sooner).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar, Final

from forge.controllers.base import DONE, Controller, Result
from forge.errors import NotFound
from forge.models import INSTANCE_TERMINAL, LABEL_NODE, App, Instance, Node, set_condition
from forge.store.base import WatchEvent

SCHEDULED: Final[str] = "Scheduled"
REASON_SCHEDULED: Final[str] = "Scheduled"
REASON_UNSCHEDULABLE: Final[str] = "Unschedulable"
RETRY_SECONDS = 10.0
CPU_OVERCOMMIT: Final[float] = 4.0


def is_node_ready(node: Node) -> bool:
    return node.status.is_true("Ready") and not node.spec.unschedulable and node.metadata.deletion_timestamp is None


def needs_binding(inst: Instance) -> bool:
    return (
        inst.spec.node is None
        and inst.spec.desired == "Running"
        and inst.status.phase not in INSTANCE_TERMINAL
        and inst.metadata.deletion_timestamp is None
    )


def needs_status(inst: Instance) -> bool:
    """Bound, but the Scheduled status did not get written (a crash between the two writes)."""
    return bool(inst.spec.node) and inst.status.phase in ("", "Pending") and not inst.status.is_true(SCHEDULED)


def _fmt_mem(n: float) -> str:
    return f"{n / 1024**2:.0f}Mi"


def choose_node(instance: Instance, nodes: list[Node], instances: list[Instance],
                pinned: str | None = None) -> tuple[Node | None, str]:
    """Pick a node for ``instance`` (pure). Returns (node, "") or (None, why nothing fits).
    ``pinned``: the only node it may go to (the one holding its app's persistent storage)."""
    if pinned is not None:
        node, why = choose_node(instance, [n for n in nodes if n.metadata.name == pinned], instances)
        return node, why and f"pinned to node {pinned}, which holds the app's storage: {why}"
    want = instance.spec.resources
    used: dict[str, tuple[float, int, int]] = {}  # node → (cpu, memory, replicas of this deployment)
    for other in instances:
        node = other.spec.node
        if not node or other.metadata.name == instance.metadata.name or other.status.phase in INSTANCE_TERMINAL:
            continue
        cpu, mem, same = used.get(node, (0.0, 0, 0))
        same += other.spec.deployment == instance.spec.deployment
        used[node] = (cpu + other.spec.resources.cpu, mem + other.spec.resources.memory, same)
    fits: list[tuple[int, float, str, Node]] = []
    not_ready = short_cpu = short_mem = 0
    for node in nodes:
        if not is_node_ready(node):
            not_ready += 1
            continue
        cpu, mem, same = used.get(node.metadata.name, (0.0, 0, 0))
        alloc = node.status.allocatable
        if cpu + want.cpu > alloc.cpu * CPU_OVERCOMMIT + 1e-9:
            short_cpu += 1
            continue
        if mem + want.memory > alloc.memory:
            short_mem += 1
            continue
        load = max(cpu / (alloc.cpu * CPU_OVERCOMMIT) if alloc.cpu else 1.0, mem / alloc.memory if alloc.memory else 1.0)
        fits.append((same, load, node.metadata.name, node))
    if fits:
        return min(fits, key=lambda f: f[:3])[3], ""
    if not nodes:
        return None, "no nodes are registered"
    parts = []
    if not_ready:
        parts.append(f"{not_ready} not ready or unschedulable")
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
        inst: Instance = event.object  # type: ignore[assignment]
        return (inst.metadata.name,) if needs_binding(inst) or needs_status(inst) else ()

    def all_keys(self) -> Iterable[str]:
        items: list[Instance] = self.store.list("Instance")[0]  # type: ignore[assignment]
        return [i.metadata.name for i in items if needs_binding(i) or needs_status(i)]

    def reconcile(self, key: str) -> Result | None:
        try:
            inst: Instance = self.store.get("Instance", key)  # type: ignore[assignment]
        except NotFound:
            return DONE
        if needs_status(inst):
            return self._mark_scheduled(inst, inst.spec.node or "")
        if not needs_binding(inst):
            return DONE
        nodes: list[Node] = self.store.list("Node")[0]  # type: ignore[assignment]
        instances: list[Instance] = self.store.list("Instance")[0]  # type: ignore[assignment]
        app = self._storage_app(inst)
        node, why = choose_node(inst, nodes, instances, app.status.storage_node if app is not None else None)
        now = self.clock.now_iso()
        if node is None:
            msg = f"{why}; retrying"
            if set_condition(inst.status, SCHEDULED, "False", REASON_UNSCHEDULABLE, msg, now):
                inst.status.phase = inst.status.phase or "Pending"
                inst = self.store.update_status(inst)  # type: ignore[assignment]
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
        inst = self.store.update(inst)  # type: ignore[assignment]
        return self._mark_scheduled(inst, name)

    def _storage_app(self, inst: Instance) -> App | None:
        """The App when this Instance mounts its persistent storage (then it is pinned)."""
        if not inst.spec.storage:
            return None
        try:
            return self.store.get("App", inst.spec.app)  # type: ignore[return-value]
        except NotFound:
            return None

    def _mark_scheduled(self, inst: Instance, name: str) -> Result:
        now = self.clock.now_iso()
        inst.status.phase = "Scheduled"
        inst.status.observed_generation = inst.metadata.generation
        set_condition(inst.status, SCHEDULED, "True", REASON_SCHEDULED, f"bound to {name}", now)
        inst = self.store.update_status(inst)  # type: ignore[assignment]
        self.recorder.record(inst, "Normal", REASON_SCHEDULED, f"bound to {name}")
        return DONE
