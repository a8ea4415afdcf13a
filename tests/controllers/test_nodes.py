"""Nodes controller: liveness by the control plane's own clock at observed Lease renewals."""

from __future__ import annotations

import pytest

from forge.controllers.nodes import NodesController
from tests.controllers.conftest import condition_of, events_for, snapshot


@pytest.fixture
def nodes(store, clock, config) -> NodesController:
    return NodesController(store, clock, config, grace_seconds=15)


def renew(store, name: str, renew_time: str = "2000-01-01T00:00:00.000Z") -> None:
    """Renew a node's Lease; the written time is deliberately wrong: only the change counts."""
    lease = store.get("Lease", f"node.{name}")
    lease.spec.renew_time = renew_time
    store.update(lease)


@pytest.fixture
def two_nodes(make_node, make_lease, make_instance):
    for n in ("n1", "n2"):
        make_node(n)
        make_lease(f"node.{n}")
    make_instance("web-1", 0, node="n1", phase="Running")
    make_instance("web-1", 1, node="n2", phase="Running")
    make_instance("web-1", 2, node="n1", phase="Stopped", desired="Stopped")


def test_alive_node_requeues_at_expiry(store, clock, nodes, two_nodes) -> None:
    """A freshly seen lease keeps the node Ready and asks to be checked at the exact expiry."""
    res = nodes.reconcile("n1")
    assert res.requeue_after == pytest.approx(15)
    clock.advance(10)
    renew(store, "n1")
    assert nodes.reconcile("n1").requeue_after == pytest.approx(15)
    clock.advance(5)
    assert nodes.reconcile("n1").requeue_after == pytest.approx(10)
    assert condition_of(store.get("Node", "n1"), "Ready").status == "True"


def test_lapsed_node_is_lost_and_returns(store, clock, nodes, two_nodes) -> None:
    """A lease unchanged past the grace: node NotReady, its running Instances Lost; renewal → Ready."""
    nodes.reconcile("n1"), nodes.reconcile("n2")
    clock.advance(10)
    renew(store, "n2")
    nodes.reconcile("n2")
    clock.advance(6)  # n1 last seen 16 s ago, n2 6 s ago
    nodes.reconcile("n1")
    node = store.get("Node", "n1")
    cond = condition_of(node, "Ready")
    assert (cond.status, cond.reason, node.status.phase) == ("False", "NodeLost", "NotReady")
    lost = store.get("Instance", "web-1-0")
    assert (lost.status.phase, lost.status.reason) == ("Lost", "NodeLost")
    assert store.get("Instance", "web-1-2").status.phase == "Stopped"  # terminal ones stay
    assert store.get("Instance", "web-1-1").status.phase == "Running"
    assert len(events_for(store, "n1", "NodeLost")) == 1
    before = snapshot(store)
    nodes.reconcile("n1")
    assert snapshot(store) == before
    renew(store, "n1")
    nodes.reconcile("n1")
    node = store.get("Node", "n1")
    verdict = condition_of(node, "NodeLost")
    assert (verdict.status, verdict.reason) == ("False", "LeaseRenewed")
    cond = condition_of(node, "Ready")  # the agent's word again
    assert (cond.status, cond.reason, node.status.phase) == ("True", "NodeReady", "Ready")
    assert store.get("Instance", "web-1-0").status.phase == "Lost"


def test_all_nodes_lapse_freezes(store, clock, nodes, two_nodes) -> None:
    """When every node lapses together nothing is evicted and one Warning says why; each node is
    said to be unreachable (NodeLost Unknown, read as Ready Unknown), and Ready again once its
    Lease moves."""
    nodes.reconcile("n1"), nodes.reconcile("n2")
    clock.advance(30)
    for _ in range(2):
        nodes.reconcile("n1"), nodes.reconcile("n2")
    for n in ("n1", "n2"):
        cond = condition_of(store.get("Node", n), "Ready")
        assert (cond.status, cond.reason) == ("Unknown", "NodeUnreachable")
    assert {store.get("Instance", f"web-1-{i}").status.phase for i in (0, 1)} == {"Running"}
    frozen = events_for(store, reason="NodesLapsedTogether")
    assert len(frozen) == 1 and frozen[0].spec.count == 1
    renew(store, "n1")
    nodes.reconcile("n1")
    node = store.get("Node", "n1")
    verdict = condition_of(node, "NodeLost")
    assert (verdict.status, verdict.reason) == ("False", "LeaseRenewed")
    cond = condition_of(node, "Ready")  # the agent's word again
    assert (cond.status, cond.reason, node.status.phase) == ("True", "NodeReady", "Ready")


def test_most_nodes_lapsing_together_freezes_one_of_three_is_evicted(store, clock, nodes, two_nodes,
                                                                     make_node, make_lease) -> None:
    """Two of three nodes silent at once (a stalled API delays every renewal): nothing evicted.
    One of three silent: that one is lost."""
    make_node("n3")
    make_lease("node.n3")
    for n in ("n1", "n2", "n3"):
        nodes.reconcile(n)
    clock.advance(10)
    renew(store, "n3")
    nodes.reconcile("n3")
    clock.advance(6)  # n1 and n2 silent 16 s, n3 6 s
    nodes.reconcile("n1"), nodes.reconcile("n2")
    assert {condition_of(store.get("Node", n), "Ready").status for n in ("n1", "n2")} == {"Unknown"}
    assert store.get("Instance", "web-1-0").status.phase == "Running"
    assert "2 of 3 nodes" in events_for(store, reason="NodesLapsedTogether")[0].spec.message
    renew(store, "n2")
    nodes.reconcile("n2")
    nodes.reconcile("n1")  # now only n1 is silent: one of three
    assert condition_of(store.get("Node", "n1"), "Ready").reason == "NodeLost"
    assert store.get("Instance", "web-1-0").status.phase == "Lost"


def test_second_loss_a_minute_later_is_evicted(store, clock, nodes, two_nodes, make_node, make_lease) -> None:
    """Found by the simulator (tests/sim regression second-node-loss-freezes, seed 198): one of
    three nodes lost, then another a minute later. The second did not lapse together with the
    first: it is lost and its Instances replaced, not frozen for good by a 2-of-3 count."""
    make_node("n3")
    make_lease("node.n3")
    for n in ("n1", "n2", "n3"):
        nodes.reconcile(n)
    for _ in range(8):  # n1 silent from the start; n2 and n3 renew every 10 s
        clock.advance(10)
        renew(store, "n2"), renew(store, "n3")
        nodes.reconcile("n1"), nodes.reconcile("n2"), nodes.reconcile("n3")
    assert condition_of(store.get("Node", "n1"), "Ready").reason == "NodeLost"
    for _ in range(3):  # now n2 goes silent too, a minute after n1; n3 keeps renewing
        clock.advance(10)
        renew(store, "n3")
        nodes.reconcile("n1"), nodes.reconcile("n2"), nodes.reconcile("n3")
    assert condition_of(store.get("Node", "n2"), "Ready").reason == "NodeLost"
    assert store.get("Instance", "web-1-1").status.phase == "Lost"
    assert not events_for(store, reason="NodesLapsedTogether")


def test_restart_grants_grace(store, clock, config, two_nodes) -> None:
    """A new controller (control-plane restart) treats every lease as just renewed."""
    clock.advance(3600)  # leases were written an hour ago by the store's reckoning
    fresh = NodesController(store, clock, config, grace_seconds=15)
    assert fresh.reconcile("n1").requeue_after == pytest.approx(15)
    assert condition_of(store.get("Node", "n1"), "Ready").status == "True"


def test_lease_events_map_to_nodes(store, nodes, two_nodes, make_lease) -> None:
    """Lease node.X wakes node X; other Leases (leader election) wake nothing."""
    make_lease("controllers-leader", holder="cp-1")
    keys = {k for ev in store.watch("Lease", since=0, timeout=0) for k in nodes.keys_for(ev)}
    assert keys == {"n1", "n2"}


def test_three_nodes_cut_at_once_none_is_evicted(store, clock, nodes, two_nodes, make_node, make_lease) -> None:
    """Three nodes cut off at one instant lapse a few hundred ms apart (each renewed at its own
    moment): the first expiry waits for the others and all are frozen — none is written off
    (the 55 % rule used to judge the first alone: 1 of 3, evicted; found by the simulator)."""
    make_node("n3")
    make_lease("node.n3")
    nodes.reconcile("n1")
    clock.advance(0.35)
    nodes.reconcile("n2")
    clock.advance(0.35)
    nodes.reconcile("n3")
    clock.advance(15 - 0.7)  # n1's lease ends now; n2's in 0.35 s, n3's in 0.7 s
    res = nodes.reconcile("n1")
    assert res.requeue_after == pytest.approx(0.71)
    assert condition_of(store.get("Node", "n1"), "Ready").status == "True"
    clock.advance(res.requeue_after)
    for n in ("n1", "n2", "n3"):
        nodes.reconcile(n)
    assert {condition_of(store.get("Node", n), "Ready").reason for n in ("n1", "n2", "n3")} == {"NodeUnreachable"}
    assert store.get("Instance", "web-1-0").status.phase == "Running"
    assert not events_for(store, reason="NodeLost")
