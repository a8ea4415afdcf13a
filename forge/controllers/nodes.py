"""Nodes controller: a node whose heartbeat Lease lapses is NotReady and its Instances Lost.

Liveness is judged by *this process's* clock: for each Lease ``node.NAME`` we remember its
resourceVersion and the local monotonic time we first saw that version. A node is alive while
that observation is younger than the grace period (default 15 s = 3 missed renewals of 5 s),
whatever ``renewTime`` the node wrote (its clock may be off). On start every Lease counts as
renewed "now", so a restarted control plane never evicts on stale data.

When a node lapses: our own condition ``NodeLost`` True on the Node (which then reads Ready
False, NotReady) with one Warning Event, and the same condition on each non-terminal Instance
bound to it (which then reads ``Lost``: ``forge.models.apply_instance_verdicts``), so the rollout
controller replaces it elsewhere. We never write the fields the agent reports. If every node — or more than 55 % of them, more than one — lapses at once (within a
grace period of each other; a node lost earlier does not count) the fault
is more likely ours (partition, paused or starved process, store trouble): freeze, evict
nothing, say so once (``NodesLapsedTogether``), and set ``NodeLost Unknown / NodeUnreachable``
on each such node (it then reads ``Ready Unknown``): an observation, not an eviction — its
Instances stay as they are, and a deleted App's teardown stops waiting for it to confirm its
stops. A verdict waits up to 1.5 renewal periods for the others due to lapse just after it. A returning node (its Lease moves
again: ``NodeLost`` False) is Ready again; its agent itself stops processes whose Instances are no longer its own.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import ClassVar, Final, cast

from forge.clock import Clock
from forge.config import Config
from forge.controllers.base import DONE, Controller, Result
from forge.errors import NotFound
from forge.events import EventRecorder
from forge.models import (
    COND_NODE_LOST,
    INSTANCE_TERMINAL,
    LABEL_NODE,
    REASON_NODE_LOST,
    Instance,
    Lease,
    Node,
    set_condition,
)
from forge.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

REASON_LEASE_RENEWED: Final[str] = "LeaseRenewed"
REASON_FROZEN: Final[str] = "NodesLapsedTogether"
REASON_UNREACHABLE: Final[str] = "NodeUnreachable"
# More than this share of the nodes lapsing together (and more than one) is taken for a fault on
# the control plane's side — Kubernetes' node lifecycle controller stops evicting in a zone past
# 55 % unhealthy for the same reason. One node of three dying is evicted; two of three is not.
DISRUPTION_SHARE: Final[float] = 0.55
LEASE_PREFIX = "node."
DEFAULT_GRACE = 6.0  # the agent's lease: 3 renewals of 2 s; a longer lease a node wrote wins
SETTLE: Final[float] = 0.01  # past the last expiry waited for, so it has surely passed


@dataclass
class _Seen:
    resource_version: int
    at: float  # this process's monotonic clock when that version was first seen
    renewed: bool  # the version moved while we watched (not just the first look after a start)


class NodesController(Controller):
    name: ClassVar[str] = "nodes"
    watches: ClassVar[tuple[str, ...]] = ("Node", "Lease")
    resync_seconds: ClassVar[float] = 30.0

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        recorder: EventRecorder | None = None,
        grace_seconds: float = DEFAULT_GRACE,
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self.grace = grace_seconds
        self._seen: dict[str, _Seen] = {}  # node name → its Lease as last observed
        self._durations: dict[str, float] = {}  # node name → the lease duration it wrote
        self._lost: set[str] = set()  # nodes whose Ready False / NodeLost this process has seen or written
        self._checked: set[str] = set()  # nodes whose record this process has read at least once
        self._lock = threading.Lock()
        self._frozen = False

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        name = event.object.metadata.name
        if event.object.kind != "Lease":
            return (name,)
        if not name.startswith(LEASE_PREFIX):
            return ()
        node = name[len(LEASE_PREFIX) :]
        # A renewal is only an observation: the node's timer (requeued at its expiry) looks at it
        # then. Only a node we hold to be lost (or one we have never looked at) needs a look now,
        # so 200 nodes renewing every 2 s cost no reconciles.
        lease = cast(Lease, event.object)  # the other kind watched, Node, returned above
        fresh = self._observe(node, lease if event.type != "DELETED" else None)
        with self._lock:
            urgent = node in self._lost
        return (node,) if urgent or fresh else ()

    def all_keys(self) -> Iterable[str]:
        return [n.metadata.name for n in self.store.list(Node)[0]]

    # ------------------------------------------------------------------ liveness

    def _observe(self, node: str, lease: Lease | None) -> bool:
        """Record ``node``'s Lease as seen now; True when this is the first look at the node."""
        now = self.clock.monotonic()
        rv = lease.metadata.resource_version if lease is not None else 0
        with self._lock:
            if lease is not None:
                self._durations[node] = lease.spec.duration_seconds
            seen = self._seen.get(node)
            if seen is None:
                self._seen[node] = _Seen(rv, now, False)
                return True
            if seen.resource_version != rv:
                self._seen[node] = _Seen(rv, now, True)
            return False

    def _look(self, node: str) -> None:
        """Read ``node``'s Lease and observe it (the watch observes renewals too, sooner)."""
        try:
            lease: Lease | None = self.store.get(Lease, LEASE_PREFIX + node)
        except NotFound:
            lease = None
        self._observe(node, lease)

    def _expiry(self, node: str) -> float:
        """Local monotonic time at which ``node`` lapses unless its Lease moves again."""
        with self._lock:
            seen = self._seen.get(node)
            duration = self._durations.get(node, 0.0)
        if seen is None:
            self._look(node)
            return self._expiry(node)
        return seen.at + max(self.grace, duration)

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, key: str) -> Result | None:
        now = self.clock.monotonic()
        self._look(key)
        expiry = self._expiry(key)
        with self._lock:
            fast = key in self._checked and key not in self._lost
        if now < expiry and fast:
            return Result(requeue_after=expiry - now)  # alive, and no verdict of ours to undo
        try:
            node: Node = self.store.get(Node, key)
        except NotFound:
            with self._lock:
                self._seen.pop(key, None)
                self._durations.pop(key, None)
                self._lost.discard(key)
                self._checked.discard(key)
            return DONE
        with self._lock:
            self._checked.add(key)
        if now < expiry:
            self._frozen = False
            self._mark_alive(node)
            return Result(requeue_after=expiry - now)
        nodes: list[Node] = self.store.list(Node)[0]
        for lease in self.store.list(Lease)[0]:  # a lapse is rare: look at every node's Lease afresh
            if lease.metadata.name.startswith(LEASE_PREFIX):
                self._observe(lease.metadata.name[len(LEASE_PREFIX) :], lease)
        # Together: lapsed within one grace period of this node. A node lost a minute earlier
        # (already judged, its Instances replaced) is no sign of a fault on our side now; counting
        # every node that ever lapsed froze evictions for good after a second loss.
        window = max(self.grace, self._durations.get(key, 0.0))
        # Nodes cut off at one instant lapse up to one renewal period apart (each renewed last
        # at its own moment), more with our watch late: judging the first expiry alone evicted it
        # before the others had lapsed (three nodes cut at once, one written off anyway). Wait for
        # those due within 1.5 periods of this one; a live node (renewed within the last period,
        # so due two periods out or later) is not among them.
        wait = window / 2
        due = [
            e
            for n in nodes
            if n.metadata.name != key and now < (e := self._expiry(n.metadata.name)) <= expiry + wait
        ]
        if due:
            return Result(requeue_after=max(due) - now + SETTLE)
        lapsed = sum(
            1 for n in nodes if abs((e := self._expiry(n.metadata.name)) - expiry) <= window and e <= now
        )
        if lapsed == len(nodes) or (lapsed > 1 and lapsed > DISRUPTION_SHARE * len(nodes)):
            if not self._frozen:
                self._frozen = True
                msg = (
                    f"{lapsed} of {len(nodes)} nodes missed their heartbeats at once; suspecting the control "
                    "plane itself (a stall, a partition on its side), so nothing is evicted until they renew"
                )
                log.warning(msg)
                self.recorder.record(node, "Warning", REASON_FROZEN, msg)
            self._mark_unreachable(node, now - expiry + window)
            return DONE
        self._mark_lost(node, now - expiry + max(self.grace, self._durations.get(key, 0.0)))
        return DONE

    def _mark_unreachable(self, node: Node, silent_for: float) -> None:
        """Frozen, the node is still said to be unreachable — ``NodeLost Unknown``, read as
        ``Ready Unknown`` (what Kubernetes' node lifecycle controller writes in its disruption mode): an observation, not an
        eviction. Its Instances stay as they are; only what waits on the node to confirm
        something (a deleted App's teardown) may stop waiting."""
        name = node.metadata.name
        with self._lock:
            self._lost.add(name)  # a verdict of ours to undo when the Lease moves again
        cond = node.status.condition(COND_NODE_LOST)
        if cond is not None and cond.status == "Unknown" and cond.reason == REASON_UNREACHABLE:
            return
        if cond is not None and cond.status == "True":
            return  # already written off: the stronger verdict stands
        msg = (
            f"lease {LEASE_PREFIX}{name} not renewed for {silent_for:.1f}s; with most nodes silent at "
            "once nothing is evicted"
        )
        set_condition(node.status, COND_NODE_LOST, "Unknown", REASON_UNREACHABLE, msg, self.clock.now_iso())
        self.store.update_status(node)

    def _mark_alive(self, node: Node) -> None:
        name = node.metadata.name
        cond = node.status.condition(COND_NODE_LOST)
        if cond is None or cond.status not in ("True", "Unknown"):
            with self._lock:
                self._lost.discard(name)
            return  # no verdict of ours stands: the agent's AgentReady says the rest
        with self._lock:
            seen = self._seen.get(name)
            renewed = seen is not None and seen.renewed
            self._lost.add(name)
        if not renewed:
            return  # not renewed since this process started watching: the verdict stands
        msg = f"lease {LEASE_PREFIX}{name} renewed"
        set_condition(node.status, COND_NODE_LOST, "False", REASON_LEASE_RENEWED, msg, self.clock.now_iso())
        node = self.store.update_status(node)
        with self._lock:
            self._lost.discard(name)
        self.recorder.record(node, "Normal", REASON_LEASE_RENEWED, f"node is back: {msg}")

    def _mark_lost(self, node: Node, silent_for: float) -> None:
        """Our verdict, as our own condition ``NodeLost`` on the Node and on each Instance that
        ran there; ``forge.models`` derives from it that the Node is NotReady and the Instances
        Lost. We write no field the agent reports."""
        name = node.metadata.name
        with self._lock:
            self._lost.add(name)
        instances: list[Instance] = self.store.list(Instance, {LABEL_NODE: name})[0]
        victims = [i for i in instances if i.spec.node == name and i.status.phase not in INSTANCE_TERMINAL]
        cond = node.status.condition(COND_NODE_LOST)
        if cond is None or cond.status != "True":
            msg = f"lease {LEASE_PREFIX}{name} not renewed for {silent_for:.1f}s (grace {self.grace:g}s)"
            set_condition(node.status, COND_NODE_LOST, "True", REASON_NODE_LOST, msg, self.clock.now_iso())
            node = self.store.update_status(node)
            names = ", ".join(i.metadata.name for i in victims[:20]) + (" …" if len(victims) > 20 else "")
            self.recorder.record(
                node,
                "Warning",
                REASON_NODE_LOST,
                f"{msg}; {len(victims)} Instance(s) lost and replaced elsewhere"
                + (f": {names}" if victims else ""),
            )
        for inst in victims:
            msg = f"node {name} stopped renewing its lease"
            set_condition(inst.status, COND_NODE_LOST, "True", REASON_NODE_LOST, msg, self.clock.now_iso())
            inst = self.store.update_status(inst)
            self.recorder.record(inst, "Warning", REASON_NODE_LOST, msg)
