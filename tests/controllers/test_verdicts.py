"""One writer per Instance and Node status field: the nodes controller and cron hand their verdicts
over (their own condition; cron's in the record it makes) and every typed read applies them, so
the sequences that once needed a second writer — a node lost, an agent writing late, a node back,
a cron run skipped — still read right, and the old second writers are caught."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from forge.clock import FakeClock, iso
from forge.config import Config
from forge.controllers.cron import CronController
from forge.controllers.nodes import DEFAULT_GRACE, NodesController
from forge.models import (
    Instance,
    Isolation,
    Node,
    parse_record,
    set_condition,
)
from forge.nodeagent.node import node_status
from forge.proxy.routing import live_dials
from forge.store.base import Store
from forge.store.sqlite import SqliteStore
from tests.controllers.conftest import condition_of, manifest_with
from tests.controllers.ownership import Writes, record_writers
from tests.controllers.release_helpers import get, report


def renew(store: Store, name: str) -> None:
    lease = store.get("Lease", f"node.{name}")
    lease.spec.renew_time = "2000-01-01T00:00:00.000Z"
    store.update(lease)


def lose_n1(store: Store, clock: FakeClock, nodes: NodesController) -> None:
    """n1 stops renewing while n2 and n3 renew: after the grace n1 is judged lost."""
    for n in ("n1", "n2", "n3"):
        nodes.reconcile(n)
    clock.advance(DEFAULT_GRACE - 1)
    for n in ("n2", "n3"):
        renew(store, n)
        nodes.reconcile(n)
    clock.advance(1.5)
    nodes.reconcile("n1")


@pytest.fixture
def three_nodes(store, clock, make_app, make_node, make_lease, make_deployment, make_instance):
    for n in ("n1", "n2", "n3"):
        make_node(n)
        make_lease(f"node.{n}", duration_seconds=DEFAULT_GRACE)
    app = make_app("web")
    make_deployment("web", 1, manifest=True, phase="Live")
    app.status.live_deployment = "web-1"
    store.update_status(app)
    make_instance("web-1", 0, node="n1", phase="Running", ready=True, port=20001)
    make_instance("web-1", 1, node="n2", phase="Running", ready=True, port=20002)
    make_instance("web-1", 2, node="n1", phase="Stopped", desired="Stopped")


def test_a_lost_node_and_its_instances_read_lost_through_a_late_agent_write(
    store, clock, config, three_nodes
) -> None:
    """n1 lapses: it reads NotReady and its running Instance Lost (not ready, out of routing),
    a terminal one untouched; the agent's late write (Running, ready) and its re-registration
    change neither; n1 renewing makes it Ready again while the Instance stays Lost."""
    nodes = NodesController(store, clock, config)
    lose_n1(store, clock, nodes)
    n1 = get(store, "Node", "n1")
    assert (n1.status.phase, condition_of(n1, "Ready").status, condition_of(n1, "Ready").reason) == (
        "NotReady",
        "False",
        "NodeLost",
    )
    lost = get(store, "Instance", "web-1-0")
    assert (lost.status.phase, lost.status.reason, lost.status.ready) == ("Lost", "NodeLost", False)
    assert condition_of(lost, "Ready").status == "False"
    assert get(store, "Instance", "web-1-2").status.phase == "Stopped"
    assert condition_of(get(store, "Instance", "web-1-2"), "NodeLost") is None

    # The agent of n1 comes back and writes what it sees before it learns of the verdict.
    report(store, "web-1-0", "Running", ready=True, port=20001)
    late = get(store, "Instance", "web-1-0")
    assert (late.status.phase, late.status.ready) == ("Lost", False)
    dials = live_dials(store.list("App")[0], store.list("Instance")[0], store.list("Node")[0])
    assert dials.get("web") == ["127.0.0.1:20002"], dials
    node = get(store, "Node", "n1")
    node.status = node.status.model_validate(
        node_status(node.status.dump(), Isolation(), None, clock.now_iso())
    )
    store.update_status(node)
    assert get(store, "Node", "n1").status.phase == "NotReady"  # re-registering does not lift the verdict

    renew(store, "n1")
    nodes.reconcile("n1")
    n1 = get(store, "Node", "n1")
    assert (n1.status.phase, condition_of(n1, "Ready").reason) == ("Ready", "AgentReady")
    assert (condition_of(n1, "NodeLost").status, condition_of(n1, "NodeLost").reason) == (
        "False",
        "LeaseRenewed",
    )
    assert get(store, "Instance", "web-1-0").status.phase == "Lost"  # replaced elsewhere: final


@pytest.mark.parametrize("kind", ["Instance", "Node"])
def test_the_view_read_back_is_the_view(store, clock, config, three_nodes, kind: str) -> None:
    """Applying a verdict twice, or to a stored copy of its own result, changes nothing; a Node
    whose lost view was stored by some writer still reads Ready once the verdict lifts."""
    nodes = NodesController(store, clock, config)
    lose_n1(store, clock, nodes)
    obj = get(store, kind, "web-1-0" if kind == "Instance" else "n1")
    again = parse_record(obj.dump())
    assert again.dump() == obj.dump()
    store.update_status(obj)  # someone stores the view itself
    assert get(store, kind, obj.metadata.name).status.dump() == obj.status.dump()
    if kind == "Node":
        renew(store, "n1")
        nodes.reconcile("n1")
        assert get(store, "Node", "n1").status.phase == "Ready"


def test_a_node_from_before_agent_ready_keeps_its_stored_readiness() -> None:
    """An older Node record (Ready written by its agent, no AgentReady) reads as stored."""
    for status, phase in (("True", "Ready"), ("False", "NotReady")):
        node = Node.model_validate(
            {
                "metadata": {"name": "old"},
                "status": {
                    "phase": "Ready",
                    "conditions": [{"type": "Ready", "status": status, "reason": "AgentReady"}],
                },
            }
        )
        assert (node.status.phase, condition_of(node, "Ready").status) == (phase, status)


T0 = 1_700_000_040.0  # a minute boundary


def test_a_skipped_cron_run_is_made_skipped_in_one_write(
    store, clock, config, make_app, make_deployment
) -> None:
    """A run due while the previous one still runs is created never to run and reads Skipped
    (PreviousRunActive, naming the busy run); cron writes no Instance status for it."""
    clock.advance(T0 + 65 - clock.now())
    manifest = manifest_with(cron=[{"name": "tick", "schedule": "* * * * *", "command": "sleep 100"}])
    app = make_app("hello")
    make_deployment("hello", 1, manifest=manifest, phase="Live", live_time=iso(T0 - 120))
    app.status.live_deployment = "hello-1"
    store.update_status(app)
    ctl = CronController(store, clock, config)
    ctl.reconcile("hello")
    (first,) = store.list("Instance")[0]
    report(store, first.metadata.name, "Running")
    clock.advance(60)
    rev = store.revision()
    ctl.reconcile("hello")
    runs = sorted(store.list("Instance")[0], key=lambda i: i.spec.oneshot.scheduled_time)
    assert len(runs) == 2
    skipped = runs[1]
    assert skipped.spec.desired == "Stopped"
    assert [(e.type, e.object.metadata.name) for e in store.watch("Instance", since=rev, timeout=0)] == [
        ("ADDED", skipped.metadata.name)
    ]
    assert (skipped.status.phase, skipped.status.reason) == ("Skipped", "PreviousRunActive")
    assert skipped.status.message == f"{first.metadata.name} was still running"


class OldNodes(NodesController):
    """The old way: the nodes controller writes the lost Instances' and the Node's fields itself."""

    def _mark_lost(self, node: Node, silent_for: float) -> None:
        for inst in self.store.list(Instance)[0]:
            if inst.spec.node == node.metadata.name and inst.status.phase == "Running":
                inst.status.phase, inst.status.reason, inst.status.ready = "Lost", "NodeLost", False
                set_condition(inst.status, "Ready", "False", "NodeLost", "gone", self.clock.now_iso())
                self.store.update_status(inst)
        set_condition(node.status, "Ready", "False", "NodeLost", "gone", self.clock.now_iso())
        node.status.phase = "NotReady"
        self.store.update_status(node)


@pytest.fixture
def own_store(tmp_path: Path, clock: FakeClock) -> tuple[SqliteStore, Writes]:
    s = SqliteStore(str(tmp_path / "own.db"), clock=clock)
    return s, record_writers(s)


def test_the_old_second_writers_are_reported(
    own_store: tuple[SqliteStore, Writes], clock: FakeClock, config: Config
) -> None:
    """A nodes controller writing the agent's Instance fields fails the ownership check, naming
    field and owner; today's controller passes it."""
    from tests.controllers.conftest import make_instance as _make_instance
    from tests.controllers.conftest import make_lease as _make_lease
    from tests.controllers.conftest import make_node as _make_node

    store, writes = own_store
    make_node: Callable[..., Node] = _make_node.__wrapped__(store, clock)  # type: ignore[attr-defined]
    make_lease = _make_lease.__wrapped__(store, clock)  # type: ignore[attr-defined]
    make_instance = _make_instance.__wrapped__(store)  # type: ignore[attr-defined]
    for n in ("n1", "n2", "n3"):
        make_node(n)
        make_lease(f"node.{n}", duration_seconds=DEFAULT_GRACE)
    make_instance("web-1", 0, node="n1", phase="Running", ready=True)
    lose_n1(store, clock, NodesController(store, clock, config))
    assert writes.violations() == [] and ("nodes", "Instance", "conditions[NodeLost]") in writes.seen
    make_instance("web-1", 1, node="n1", phase="Running", ready=True)
    n1 = store.get(Node, "n1")
    n1.status.conditions = [c for c in n1.status.conditions if c.type != "NodeLost"]
    store.update_status(n1)
    lose_n1(store, clock, OldNodes(store, clock, config))
    bad = writes.violations()
    assert "nodes wrote Instance.status.phase, owned by agent" in bad
    assert "nodes wrote Instance.status.ready, owned by agent" in bad
    # A Node's Ready and phase are derived on read: no write to them sticks, so none is anyone's.
    assert not any("Node.status" in b for b in bad), bad
    store.close()
