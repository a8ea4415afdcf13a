"""Drain: a node's Instances move elsewhere with the deploy's zero-downtime switch (rollout and
scheduler over a real store and a fake clock; the agents are played through Instance status)."""

from __future__ import annotations

import pytest

from forge.controllers.rollout import RolloutController
from forge.controllers.scheduler import SchedulerController
from forge.models import Instance
from forge.proxy.routing import live_dials
from tests.controllers.conftest import events_for, snapshot
from tests.controllers.release_helpers import report


class Cluster:
    def __init__(self, store, clock, config, make_app, make_deployment, make_node) -> None:
        self.store, self.clock, self.port = store, clock, 20000
        self.rollout = RolloutController(store, clock, config)
        self.sched = SchedulerController(store, clock, config)
        for n in ("n1", "n2", "n3"):
            make_node(n)
        self.make_app, self.make_deployment = make_app, make_deployment

    def settle(self, app: str = "hello") -> None:
        """Rollout, then bind and start every Instance asked to run (agents report Running, ready)."""
        for _ in range(4):
            self.rollout.reconcile(app)
            for inst in self.instances(app):
                if inst.spec.node is None and inst.spec.desired == "Running":
                    self.sched.reconcile(inst.metadata.name)
                    inst = self.store.get("Instance", inst.metadata.name)
                if inst.spec.desired == "Running" and inst.status.phase in ("", "Scheduled"):
                    self.port += 1
                    report(self.store, inst.metadata.name, "Running", ready=True, port=self.port,
                           ready_time=self.clock.now_iso())

    def instances(self, app: str = "hello") -> list[Instance]:
        return sorted((i for i in self.store.list("Instance")[0] if i.spec.app == app), key=lambda i: i.metadata.name)

    def running(self, app: str = "hello") -> dict[str, str]:
        return {i.metadata.name: i.spec.node for i in self.instances(app) if i.spec.desired == "Running"}

    def drain(self, node: str) -> None:
        obj = self.store.get("Node", node)
        obj.spec.unschedulable, obj.spec.drain = True, True
        self.store.update(obj)

    def served(self, app: str = "hello") -> list[str]:
        s = self.store
        return live_dials(s.list("App")[0], s.list("Instance")[0], s.list("Node")[0]).get(app, [])


@pytest.fixture
def cluster(store, clock, config, make_app, make_deployment, make_node) -> Cluster:
    c = Cluster(store, clock, config, make_app, make_deployment, make_node)
    make_app("hello", replicas=2)
    make_deployment("hello", 1, manifest=True)
    c.settle()
    assert store.get("App", "hello").status.live_deployment == "hello-1"
    return c


def test_drain_moves_instances_after_their_replacements_are_ready(cluster, store, clock) -> None:
    """Draining n1: a replacement elsewhere first; the old one serves until it is ready, then drains and stops."""
    before = cluster.running()
    on_n1 = [name for name, node in before.items() if node == "n1"]
    assert len(on_n1) == 1
    old = on_n1[0]
    cluster.drain("n1")
    cluster.rollout.reconcile("hello")
    new = f"{old}-r1"
    assert store.get("Instance", new).spec.desired == "Running"
    assert store.get("Instance", old).spec.desired == "Running"  # still serving
    cluster.sched.reconcile(new)
    assert store.get("Instance", new).spec.node not in ("n1", None)
    cluster.rollout.reconcile("hello")
    assert store.get("Instance", old).spec.desired == "Running"  # replacement not ready yet
    assert len(cluster.served()) == 2
    report(store, new, "Running", ready=True, port=30000, ready_time=clock.now_iso())
    res = cluster.rollout.reconcile("hello")
    assert store.get("Instance", old).spec.desired == "Running"  # both serve while the old drains
    assert len(cluster.served()) == 3
    assert res.requeue_after == pytest.approx(10.0)
    clock.advance(10)
    cluster.rollout.reconcile("hello")
    assert store.get("Instance", old).spec.desired == "Stopped"
    assert "n1" not in cluster.running().values() and len(cluster.running()) == 2
    moving = events_for(store, old, "Moving")
    assert len(moving) == 1 and new in moving[0].spec.message
    state = snapshot(store)
    cluster.rollout.reconcile("hello")
    assert snapshot(store) == state


def test_pinned_app_stays_on_a_draining_node(cluster, store, make_app, make_deployment) -> None:
    """An app whose persistent storage lives on the drained node is not moved."""
    app = store.get("App", "hello")
    on = next(iter(cluster.running().values()))
    app.status.storage_node = on
    store.update_status(app)
    cluster.drain(on)
    cluster.rollout.reconcile("hello")
    assert not any(i.metadata.name.endswith("-r1") for i in cluster.instances())


def test_node_drain_wakes_the_apps_on_it(cluster, store) -> None:
    """A Node event with drain set maps to the apps running there; other Node changes to none."""
    rev = store.revision()
    node = next(iter(cluster.running().values()))
    obj = store.get("Node", node)
    obj.metadata.labels = {"x": "y"}
    store.update(obj)
    cluster.drain(node)
    keys = [list(cluster.rollout.keys_for(ev)) for ev in store.watch("Node", since=rev, timeout=0)]
    assert keys == [[], ["hello"]]
