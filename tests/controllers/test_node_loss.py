"""Node loss end to end over the controllers (nodes, rollout, scheduler) with a fake clock: a
lapsed node's Instances are replaced elsewhere, the router's view follows, Events say where."""

from __future__ import annotations

import pytest

from forge.controllers.nodes import DEFAULT_GRACE, NodesController
from forge.controllers.rollout import RolloutController
from forge.controllers.scheduler import SchedulerController
from forge.proxy.routing import live_dials
from tests.controllers.conftest import condition_of, events_for
from tests.controllers.release_helpers import report


def renew(store, name: str) -> None:
    lease = store.get("Lease", f"node.{name}")
    lease.spec.renew_time = "2000-01-01T00:00:00.000Z"
    store.update(lease)


@pytest.fixture
def world(store, clock, config, make_app, make_deployment, make_node, make_lease):
    for n in ("n1", "n2", "n3"):
        make_node(n)
        make_lease(f"node.{n}", duration_seconds=DEFAULT_GRACE)
    make_app("hello", replicas=2)
    make_deployment("hello", 1, manifest=True)
    rollout = RolloutController(store, clock, config)
    sched = SchedulerController(store, clock, config)
    nodes = NodesController(store, clock, config)
    port = [20000]

    def settle() -> None:
        for _ in range(3):
            rollout.reconcile("hello")
            for inst in store.list("Instance")[0]:
                if inst.spec.node is None and inst.spec.desired == "Running":
                    sched.reconcile(inst.metadata.name)
                    inst = store.get("Instance", inst.metadata.name)
                if inst.spec.desired == "Running" and inst.status.phase in ("", "Scheduled"):
                    port[0] += 1
                    report(store, inst.metadata.name, "Running", ready=True, port=port[0])

    settle()
    return rollout, sched, nodes, settle


def served(store) -> list[str]:
    return live_dials(store.list("App")[0], store.list("Instance")[0], store.list("Node")[0]).get("hello", [])


def test_lost_node_is_replaced_and_traffic_follows(store, clock, world) -> None:
    """n1 stops renewing: after the grace it is NotReady, its Instance Lost and replaced on another
    node, the router's view drops the lost one and takes the replacement once ready; Events say where."""
    rollout, sched, nodes, settle = world
    running = {i.metadata.name: i.spec.node for i in store.list("Instance")[0]}
    victim_node = "n1" if "n1" in running.values() else "n2"
    victim = next(n for n, node in running.items() if node == victim_node)
    for n in ("n1", "n2", "n3"):
        nodes.reconcile(n)
    clock.advance(DEFAULT_GRACE - 1)
    for n in ("n1", "n2", "n3"):
        if n != victim_node:
            renew(store, n)
            nodes.reconcile(n)
    assert store.get("Instance", victim).status.phase == "Running"
    clock.advance(1.01)
    nodes.reconcile(victim_node)
    node = store.get("Node", victim_node)
    assert condition_of(node, "Ready").reason == "NodeLost"
    lost = events_for(store, victim_node, "NodeLost")
    assert len(lost) == 1 and victim in lost[0].spec.message and "not renewed for 6.0s" in lost[0].spec.message
    assert len(served(store)) == 1  # the lost one no longer takes traffic
    settle()
    new = f"{victim}-r1"
    assert store.get("Instance", victim).spec.desired == "Stopped"
    assert store.get("Instance", new).spec.node not in (victim_node, None)
    assert len(served(store)) == 2
    moved = events_for(store, victim_node, "InstanceMoved")
    assert len(moved) == 1 and new in moved[0].spec.message and "lost" in moved[0].spec.message


def test_a_renewal_is_an_observation_not_a_reconcile(store, clock, config, world) -> None:
    """Lease renewals of a live node enqueue nothing (its timer looks at expiry); a lost node's do."""
    _, _, nodes, _ = world
    for n in ("n1", "n2", "n3"):
        nodes.reconcile(n)
    rev = store.revision()
    renew(store, "n1")
    assert [k for ev in store.watch("Lease", since=rev, timeout=0) for k in nodes.keys_for(ev)] == []
    clock.advance(DEFAULT_GRACE + 1)
    renew(store, "n2")
    renew(store, "n3")
    nodes.reconcile("n1")
    assert condition_of(store.get("Node", "n1"), "Ready").reason == "NodeLost"
    rev = store.revision()
    renew(store, "n1")
    assert [k for ev in store.watch("Lease", since=rev, timeout=0) for k in nodes.keys_for(ev)] == ["n1"]
    nodes.reconcile("n1")
    assert condition_of(store.get("Node", "n1"), "NodeLost").reason == "LeaseRenewed"


def test_restarted_controller_keeps_a_lost_verdict_until_a_renewal(store, clock, config, world) -> None:
    """A fresh controller does not call a written-off node back until its Lease actually moves."""
    _, _, nodes, _ = world
    for n in ("n1", "n2", "n3"):
        nodes.reconcile(n)
    clock.advance(DEFAULT_GRACE + 1)
    renew(store, "n2")
    renew(store, "n3")
    nodes.reconcile("n1")
    fresh = NodesController(store, clock, config)
    fresh.reconcile("n1")
    assert condition_of(store.get("Node", "n1"), "Ready").reason == "NodeLost"
    renew(store, "n1")
    fresh.reconcile("n1")
    assert condition_of(store.get("Node", "n1"), "NodeLost").reason == "LeaseRenewed"


@pytest.mark.parametrize("live", [True, False], ids=["live", "building"])
def test_app_deleted_while_its_only_node_is_lost_is_torn_down(
    store, clock, config, make_app, make_deployment, make_node, make_lease, live: bool
) -> None:
    """The only node goes silent (frozen: nothing evicted, the node Unknown), then the App is
    deleted: its Instances and releases go anyway, without the stop the lost agent cannot confirm
    (sim seeds 933, 881 kept them for good). The node, back, finds its Instance gone."""
    make_node("n1")
    make_lease("node.n1", duration_seconds=DEFAULT_GRACE)
    make_app("hello")
    make_deployment("hello", 1, manifest=True, phase="" if not live else "Live")
    rollout = RolloutController(store, clock, config)
    sched = SchedulerController(store, clock, config)
    nodes = NodesController(store, clock, config)
    rollout.reconcile("hello")
    [inst] = store.list("Instance")[0]
    sched.reconcile(inst.metadata.name)
    report(store, inst.metadata.name, "Running" if live else "Building", ready=live, port=20001)
    nodes.reconcile("n1")
    clock.advance(DEFAULT_GRACE + 1)
    nodes.reconcile("n1")
    cond = condition_of(store.get("Node", "n1"), "Ready")
    assert (cond.status, cond.reason) == ("Unknown", "NodeUnreachable")
    assert store.get("Instance", inst.metadata.name).status.phase != "Lost"  # frozen: not evicted
    store.delete("App", "hello")
    for _ in range(3):
        rollout.reconcile("hello")
    assert store.list("Instance")[0] == [] and store.list("Deployment")[0] == []


def test_teardown_waits_for_a_reachable_node(store, clock, config, world) -> None:
    """A deleted App's Instances on a Ready node stay until their agent says they stopped."""
    rollout, _sched, _nodes, _settle = world
    store.delete("App", "hello")
    rollout.reconcile("hello")
    insts = store.list("Instance")[0]
    assert insts and {i.spec.desired for i in insts} == {"Stopped"}
    rollout.reconcile("hello")
    assert len(store.list("Instance")[0]) == len(insts)
    for i in insts:
        report(store, i.metadata.name, "Stopped")
    rollout.reconcile("hello")
    assert store.list("Instance")[0] == [] and store.list("Deployment")[0] == []
