"""Scheduler: pure node choice and the binding reconcile over a real store."""

from __future__ import annotations

import pytest

from forge.controllers.scheduler import CPU_OVERCOMMIT, SchedulerController, choose_node
from forge.models import LABEL_NODE
from tests.controllers.conftest import GiB, MiB, condition_of, events_for, snapshot


@pytest.fixture
def sched(store, clock, config) -> SchedulerController:
    return SchedulerController(store, clock, config)


@pytest.mark.parametrize(
    ("nodes", "bound", "want"),
    [
        ([("a", True, 2, 4)], [], "a"),
        ([("a", False, 2, 4), ("b", True, 2, 4)], [], "b"),
        ([("a", True, 0.5, 4), ("b", True, 2, 4)], [("a", 1.8, 1)], "b"),  # cpu full on a (0.5 x 4 overcommit)
        ([("a", True, 4, 1), ("b", True, 4, 4)], [("a", 0.1, 0.9)], "b"),  # memory full on a
        ([("a", True, 4, 4), ("b", True, 4, 4)], [("a", 0.5, 0.25)], "b"),  # spread the deployment
        ([("a", True, 0.1, 4)], [], None),
        ([], [], None),
    ],
    ids=["fits", "not-ready-skipped", "cpu-headroom", "memory-headroom", "spread", "too-big", "no-nodes"],
)
def test_choose_node(store, make_node, make_instance, make_deployment, make_app, nodes, bound, want) -> None:
    """choose_node honours readiness, CPU and memory headroom and spreads replicas."""
    make_deployment(make_app("web"), 1, manifest=True)
    for name, ready, cpu, mem in nodes:
        make_node(name, ready=ready, cpu=cpu, memory=mem * GiB)
    for i, (node, cpu, mem) in enumerate(bound):
        make_instance("web-1", i + 1, node=node, phase="Running", cpu=cpu, memory=int(mem * GiB))
    inst = make_instance("web-1", 0, cpu=0.5, memory=512 * MiB)
    node, why = choose_node(inst, store.list("Node")[0], store.list("Instance")[0])
    assert (node.metadata.name if node else None) == want
    assert bool(why) == (want is None)


def test_cpu_is_overcommitted_but_memory_is_not(store, make_node, make_instance) -> None:
    """CPU (a ceiling) packs CPU_OVERCOMMIT times the node's cores; memory (a hard limit) does not."""
    make_node("a", cpu=1, memory=4 * GiB)
    for i in range(int(CPU_OVERCOMMIT / 0.5) - 1):
        make_instance("web-1", i + 1, node="a", phase="Running", cpu=0.5, memory=64 * MiB)
    inst = make_instance("web-1", 0, cpu=0.5, memory=64 * MiB)
    node, _ = choose_node(inst, store.list("Node")[0], store.list("Instance")[0])
    assert node is not None
    make_instance("web-1", 99, node="a", phase="Running", cpu=0.5, memory=64 * MiB)
    node, why = choose_node(inst, store.list("Node")[0], store.list("Instance")[0])
    assert node is None and "CPU" in why
    big = make_instance("web-2", 0, cpu=0.1, memory=5 * GiB)
    assert choose_node(big, store.list("Node")[0], store.list("Instance")[0])[0] is None


def test_terminal_instances_free_their_resources(store, make_node, make_instance) -> None:
    """Stopped/Failed/Lost Instances do not count against a node's allocatable."""
    make_node("a", cpu=1)
    make_instance("web-1", 1, node="a", phase="Stopped", cpu=1)
    inst = make_instance("web-1", 0, cpu=1)
    node, _ = choose_node(inst, store.list("Node")[0], store.list("Instance")[0])
    assert node is not None and node.metadata.name == "a"


def test_bind_writes_node_label_and_condition(store, sched, make_node, make_instance) -> None:
    """Reconcile binds spec.node with the node label, sets Scheduled, and is idempotent."""
    make_node("n1")
    make_instance("web-1", 0)
    res = sched.reconcile("web-1-0")
    assert res is None or res.requeue_after is None
    inst = store.get("Instance", "web-1-0")
    assert inst.spec.node == "n1" and inst.metadata.labels[LABEL_NODE] == "n1"
    assert inst.status.phase == ""  # the agent's field: it reports once it has the Instance
    assert condition_of(inst, "Scheduled").status == "True"
    before = snapshot(store)
    sched.reconcile("web-1-0")
    assert snapshot(store) == before


def test_replicas_spread_over_nodes(store, sched, make_node, make_instance) -> None:
    """Two replicas of one Deployment land on two different nodes."""
    make_node("n1")
    make_node("n2")
    make_instance("web-1", 0)
    make_instance("web-1", 1)
    sched.reconcile("web-1-0")
    sched.reconcile("web-1-1")
    assert {store.get("Instance", f"web-1-{i}").spec.node for i in (0, 1)} == {"n1", "n2"}


def test_unschedulable_event_once_then_binds(store, clock, sched, make_node, make_instance) -> None:
    """No room: Scheduled False + one Warning across retries, requeue in 10 s; a new node fixes it."""
    make_node("small", cpu=0.25)
    make_node("down", ready=False)
    make_instance("web-1", 0, cpu=2)
    for _ in range(3):
        res = sched.reconcile("web-1-0")
        assert res is not None and res.requeue_after == 10.0
        clock.advance(10)
    inst = store.get("Instance", "web-1-0")
    cond = condition_of(inst, "Scheduled")
    assert (cond.status, cond.reason) == ("False", "Unschedulable")
    assert "0/2 nodes" in cond.message and "not ready" in cond.message
    assert inst.spec.node is None
    warnings = events_for(store, "web-1-0", "Unschedulable")
    assert len(warnings) == 1 and warnings[0].spec.count == 1
    make_node("big", cpu=4)
    sched.reconcile("web-1-0")
    assert store.get("Instance", "web-1-0").spec.node == "big"
    assert condition_of(store.get("Instance", "web-1-0"), "Scheduled").status == "True"


def test_node_change_enqueues_unbound_instances(store, sched, make_node, make_instance) -> None:
    """A Node event maps to every Instance still waiting for a node."""
    make_node("n1")
    make_instance("web-1", 0)
    make_instance("web-1", 1, node="n1", phase="Running")
    ev = store.watch("Node", since=0, timeout=0)[0]
    assert list(sched.keys_for(ev)) == ["web-1-0"]


def test_bound_without_status_is_completed(store, sched, make_node, make_instance) -> None:
    """A crash between the bind and the status write is repaired by the next reconcile."""
    make_node("n1")
    make_instance("web-1", 0, node="n1")
    sched.reconcile("web-1-0")
    inst = store.get("Instance", "web-1-0")
    assert condition_of(inst, "Scheduled").status == "True"


ZONE = "topology.forge.dev/zone"


@pytest.mark.parametrize(
    ("nodes", "bound", "want"),
    [
        # a and b in zone z1 (b empty), c in z2: a replica in z1 sends the next one to z2
        ([("a", "z1"), ("b", "z1"), ("c", "z2")], [("a", 0.25)], "c"),
        # without zones the emptiest-of-this-deployment node wins, whatever the zones of others
        ([("a", ""), ("b", "")], [("a", 0.25)], "b"),
        # both zones hold one replica: spread over nodes inside them (d has none)
        ([("a", "z1"), ("b", "z1"), ("c", "z2"), ("d", "z2")], [("a", 0.25), ("c", 0.25)], "b"),
    ],
    ids=["zone-first", "no-zones", "then-nodes"],
)
def test_topology_spread(store, make_node, make_instance, nodes, bound, want) -> None:
    """Replicas of one Deployment spread across topology.forge.dev/zone first, then nodes."""
    for name, zone in nodes:
        make_node(name, labels={ZONE: zone} if zone else None)
    for i, (node, mem) in enumerate(bound):
        make_instance("web-1", i + 1, node=node, phase="Running", memory=int(mem * GiB))
    inst = make_instance("web-1", 0)
    node, _ = choose_node(inst, store.list("Node")[0], store.list("Instance")[0])
    assert node is not None and node.metadata.name == want


def test_bin_packing_prefers_the_fullest_node_that_fits(store, make_node, make_instance) -> None:
    """Apart from spreading one Deployment, the most memory-allocated node that fits wins."""
    make_node("empty", memory=4 * GiB)
    make_node("half", memory=4 * GiB)
    make_node("full", memory=4 * GiB)
    make_instance("other-1", 0, node="half", phase="Running", memory=2 * GiB)
    make_instance("other-2", 0, node="full", phase="Running", memory=int(3.9 * GiB))
    inst = make_instance("web-1", 0, memory=512 * MiB)
    node, _ = choose_node(inst, store.list("Node")[0], store.list("Instance")[0])
    assert node is not None and node.metadata.name == "half"  # "full" has no room for 512 MiB


def test_node_selector_and_cordon(store, sched, make_node, make_instance) -> None:
    """nodeSelector limits the nodes; cordoned and draining nodes take nothing; the message says why."""
    make_node("ssd", labels={"disk": "ssd"}, unschedulable=True)
    make_node("ssd2", labels={"disk": "ssd"}, drain=True)
    make_node("hdd", labels={"disk": "hdd"})
    make_instance("web-1", 0, node_selector={"disk": "ssd"})
    res = sched.reconcile("web-1-0")
    assert res is not None and res.requeue_after == 10.0
    cond = condition_of(store.get("Instance", "web-1-0"), "Scheduled")
    assert cond.reason == "Unschedulable"
    assert "2 cordoned" in cond.message and "1 without the labels of nodeSelector disk=ssd" in cond.message
    make_node("ssd3", labels={"disk": "ssd", "zone": "x"})
    sched.reconcile("web-1-0")
    assert store.get("Instance", "web-1-0").spec.node == "ssd3"
