"""Nodes controller: a node whose heartbeat Lease lapses is NotReady and its Instances Lost.

Liveness is judged by *this process's* clock: for each Lease ``node.NAME`` we remember its
resourceVersion and the local monotonic time we first saw that version. A node is alive while
that observation is younger than the grace period (default 15 s = 3 missed renewals of 5 s),
whatever ``renewTime`` the node wrote (its clock may be off). On start every Lease counts as
renewed "now", so a restarted control plane never evicts on stale data.

When a node lapses: ``Ready False / NodeLost`` with one Warning Event, and each non-terminal
Instance bound to it goes ``Lost`` (status only), so the rollout controller replaces it
elsewhere. If every node lapses at once the fault is more likely ours (partition, paused
process, store trouble): freeze, evict nothing, say so once. A returning node (its Lease moves
again) is Ready again; its agent itself stops processes whose Instances are no longer its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import ClassVar, Final

from forge.clock import Clock
from forge.config import Config
from forge.controllers.base import DONE, Controller, Result
from forge.errors import NotFound
from forge.events import EventRecorder
from forge.models import INSTANCE_TERMINAL, LABEL_NODE, Instance, Lease, Node, set_condition
from forge.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

READY: Final[str] = "Ready"
REASON_NODE_LOST: Final[str] = "NodeLost"
REASON_LEASE_RENEWED: Final[str] = "LeaseRenewed"
REASON_FROZEN: Final[str] = "AllNodesLapsed"
LEASE_PREFIX = "node."
DEFAULT_GRACE = 15.0


class NodesController(Controller):
    name: ClassVar[str] = "nodes"
    watches: ClassVar[tuple[str, ...]] = ("Node", "Lease")
    resync_seconds: ClassVar[float] = 30.0

    def __init__(self, store: Store, clock: Clock, config: Config, recorder: EventRecorder | None = None,
                 grace_seconds: float = DEFAULT_GRACE) -> None:
        super().__init__(store, clock, config, recorder)
        self.grace = grace_seconds
        self._seen: dict[str, tuple[int, float]] = {}  # lease name → (resourceVersion, local mono)
        self._lock = threading.Lock()
        self._frozen = False

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        name = event.object.metadata.name
        if event.object.kind == "Lease":
            return (name[len(LEASE_PREFIX):],) if name.startswith(LEASE_PREFIX) else ()
        return (name,)

    def all_keys(self) -> Iterable[str]:
        return [n.metadata.name for n in self.store.list("Node")[0]]

    # ------------------------------------------------------------------ liveness

    def _observe(self, node: str, lease: Lease | None) -> float:
        """Local monotonic time of the last observed renewal of ``node``'s Lease."""
        now = self.clock.monotonic()
        key = LEASE_PREFIX + node
        rv = lease.metadata.resource_version if lease is not None else 0
        with self._lock:
            seen = self._seen.get(key)
            if seen is None or seen[0] != rv:
                seen = (rv, now)
                self._seen[key] = seen
            return seen[1]

    def _grace_for(self, lease: Lease | None) -> float:
        return max(self.grace, lease.spec.duration_seconds if lease is not None else 0.0)

    def _expiry(self, node: str, leases: dict[str, Lease]) -> float:
        lease = leases.get(LEASE_PREFIX + node)
        return self._observe(node, lease) + self._grace_for(lease)

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, key: str) -> Result | None:
        try:
            node: Node = self.store.get("Node", key)  # type: ignore[assignment]
        except NotFound:
            with self._lock:
                self._seen.pop(LEASE_PREFIX + key, None)
            return DONE
        leases = {lease.metadata.name: lease for lease in self.store.list("Lease")[0]}  # type: ignore[misc]
        now = self.clock.monotonic()
        expiry = self._expiry(key, leases)  # type: ignore[arg-type]
        if now < expiry:
            self._frozen = False
            self._mark_alive(node)
            return Result(requeue_after=expiry - now)
        nodes = self.store.list("Node")[0]
        if all(self._expiry(n.metadata.name, leases) <= now for n in nodes):  # type: ignore[arg-type]
            if not self._frozen:
                self._frozen = True
                msg = (f"all {len(nodes)} nodes missed their heartbeats at once; suspecting the control "
                       "plane itself, so nothing is evicted until a node renews")
                log.warning(msg)
                self.recorder.record(node, "Warning", REASON_FROZEN, msg)
            return DONE
        self._mark_lost(node)
        return DONE

    def _mark_alive(self, node: Node) -> None:
        cond = node.status.condition(READY)
        if cond is None or cond.status == "True" or cond.reason != REASON_NODE_LOST:
            return  # the agent owns readiness otherwise; we only undo our own verdict
        msg = f"lease {LEASE_PREFIX}{node.metadata.name} renewed"
        set_condition(node.status, READY, "True", REASON_LEASE_RENEWED, msg, self.clock.now_iso())
        node.status.phase = "Ready"
        node = self.store.update_status(node)  # type: ignore[assignment]
        self.recorder.record(node, "Normal", REASON_LEASE_RENEWED, f"node is back: {msg}")

    def _mark_lost(self, node: Node) -> None:
        name = node.metadata.name
        msg = f"lease {LEASE_PREFIX}{name} not renewed within {self.grace:g}s"
        cond = node.status.condition(READY)
        if cond is None or cond.status != "False" or cond.reason != REASON_NODE_LOST:
            set_condition(node.status, READY, "False", REASON_NODE_LOST, msg, self.clock.now_iso())
            node.status.phase = "NotReady"
            node = self.store.update_status(node)  # type: ignore[assignment]
            self.recorder.record(node, "Warning", REASON_NODE_LOST, msg)
        instances: list[Instance] = self.store.list("Instance", {LABEL_NODE: name})[0]  # type: ignore[assignment]
        for inst in instances:
            if inst.spec.node != name or inst.status.phase in INSTANCE_TERMINAL:
                continue
            inst.status.phase, inst.status.reason = "Lost", REASON_NODE_LOST
            inst.status.message = f"node {name} stopped renewing its lease"
            inst.status.ready = False
            set_condition(inst.status, READY, "False", REASON_NODE_LOST, inst.status.message, self.clock.now_iso())
            inst = self.store.update_status(inst)  # type: ignore[assignment]
            self.recorder.record(inst, "Warning", REASON_NODE_LOST, inst.status.message)
