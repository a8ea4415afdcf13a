"""The ownership table of docs/CONTRACTS.md is complete and enforced: the recorder on every
controller test's store sees who writes what, and a planted second writer is reported."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic.alias_generators import to_camel

from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.health import HealthController
from forge.controllers.rollback import RollbackController
from forge.controllers.rollout import RolloutController
from forge.models import (
    LABEL_APP,
    App,
    AppStatus,
    Deployment,
    DeploymentStatus,
    InstanceStatus,
    NodeStatus,
    set_condition,
)
from forge.store.base import Store
from forge.store.sqlite import SqliteStore
from tests.controllers.ownership import Writes, parse_table, record_writers, row_for
from tests.controllers.release_helpers import get, report, serve_all


@pytest.mark.parametrize(
    "kind,model",
    [("Deployment", DeploymentStatus), ("App", AppStatus), ("Instance", InstanceStatus), ("Node", NodeStatus)],
    ids=["deployment", "app", "instance", "node"],
)
def test_every_status_field_has_one_named_owner(kind: str, model: type) -> None:
    """Every field of the kind's status model has a row (conditions by type; Instance and Node
    through their ``*`` row), with no debt: no "also" writer."""
    table = parse_table()
    fields = {f.alias or to_camel(name) for name, f in model.model_fields.items()} - {"conditions"}
    missing = sorted(f for f in fields if row_for(table, kind, f) is None)
    assert not missing, f"{kind}.status fields with no owner in docs/CONTRACTS.md: {missing}"
    shared = sorted(p for (k, p), row in table.items() if k == kind and row.also)
    assert not shared, f"{kind}.status fields with more than one writer: {shared}"


def test_the_only_debt_left_is_pinned() -> None:
    """The "also" column names no writer but the one pinned (previews on its Secret copies):
    a new second writer cannot be added to the table without this test failing."""
    debt = {(k, p): sorted(row.also) for (k, p), row in parse_table().items() if row.also}
    assert debt == {("Secret", "*"): ["previews"]}


class PhaseWritingRollback(RollbackController):
    """The old way: rollback ends a release by writing its phase itself."""

    def reconcile(self, key: str):  # type: ignore[no-untyped-def]
        result = super().reconcile(key)
        for dep in self.store.list(Deployment, {LABEL_APP: key})[0]:
            failing = dep.status.condition("Failing")
            if failing is not None and failing.status == "True" and dep.status.phase != "Failed":
                dep.status.phase = "Failed"
                self.store.update_status(dep)
        return result


class AvailableWritingRollout(RolloutController):
    """The old way: rollout sets the App's Available condition when it switches traffic."""

    def reconcile(self, key: str):  # type: ignore[no-untyped-def]
        result = super().reconcile(key)
        app: App = self.store.get(App, key)
        if app.status.live_deployment and set_condition(
            app.status, "Available", "True", "Switched", "switched", self.clock.now_iso()
        ):
            self.store.update_status(app)
        return result


def scenario(
    store: Store,
    clock: FakeClock,
    config: Config,
    make_app: Callable[..., App],
    make_deployment: Callable[..., Deployment],
    rollout: type[RolloutController],
    rollback: type[RollbackController],
) -> None:
    """hello-1 goes live; hello-2's Instance crashes before it is live; health looks at both."""
    ctls = [
        rollout(store, clock, config),
        rollback(store, clock, config),
        HealthController(store, clock, config),
    ]
    make_app("hello")
    make_deployment("hello", 1, manifest=True)
    for c in ctls:
        c.reconcile("hello")
    serve_all(store, "hello-1")
    for c in ctls * 2:
        c.reconcile("hello")
    make_deployment("hello", 2, manifest=True)
    ctls[0].reconcile("hello")
    report(store, "hello-2-0", "Starting", reason="CrashLoopBackOff", restarts=1)
    for c in ctls * 2:
        c.reconcile("hello")
    assert get(store, "Deployment", "hello-2").status.phase == "Failed"
    assert get(store, "App", "hello").status.live_deployment == "hello-1"


@pytest.fixture
def own_store(tmp_path: Path, clock: FakeClock) -> tuple[SqliteStore, Writes]:
    """A store of its own, so a planted violation does not fail this test's teardown."""
    s = SqliteStore(str(tmp_path / "own.db"), clock=clock)
    return s, record_writers(s)


def test_the_controllers_keep_to_their_fields(
    own_store: tuple[SqliteStore, Writes],
    clock: FakeClock,
    config: Config,
) -> None:
    """Rollout, rollback and health through a push, a promotion and a failed release: every
    status write is by the field's owner — and the recorder saw each of them write."""
    store, writes = own_store
    from tests.controllers.conftest import make_app as _make_app
    from tests.controllers.conftest import make_deployment as _make_deployment

    make_app = _make_app.__wrapped__(store)  # type: ignore[attr-defined]
    make_deployment = _make_deployment.__wrapped__(store, clock)  # type: ignore[attr-defined]
    scenario(store, clock, config, make_app, make_deployment, RolloutController, RollbackController)
    assert writes.violations() == []
    assert {who for who, _, _ in writes.seen} >= {"rollout", "rollback", "health"}
    store.close()


@pytest.mark.parametrize(
    "rollout,rollback,planted",
    [
        (RolloutController, PhaseWritingRollback, "rollback wrote Deployment.status.phase, owned by rollout"),
        (
            AvailableWritingRollout,
            RollbackController,
            "rollout wrote App.status.conditions[Available], owned by health",
        ),
    ],
    ids=["rollback-writes-phase", "rollout-writes-available"],
)
def test_a_planted_second_writer_is_reported(
    own_store: tuple[SqliteStore, Writes],
    clock: FakeClock,
    config: Config,
    rollout: type[RolloutController],
    rollback: type[RollbackController],
    planted: str,
) -> None:
    """A controller writing a field it does not own is named, with the field and its owner."""
    store, writes = own_store
    from tests.controllers.conftest import make_app as _make_app
    from tests.controllers.conftest import make_deployment as _make_deployment

    make_app = _make_app.__wrapped__(store)  # type: ignore[attr-defined]
    make_deployment = _make_deployment.__wrapped__(store, clock)  # type: ignore[attr-defined]
    scenario(store, clock, config, make_app, make_deployment, rollout, rollback)
    assert planted in writes.violations()
    store.close()


def test_table_rows_resolve() -> None:
    """``*`` rows give the agent every Instance and Node field not listed on its own."""
    table = parse_table()
    assert row_for(table, "Instance", "port").owner == "agent"  # type: ignore[union-attr]
    assert row_for(table, "Deployment", "phase").owner == "rollout"  # type: ignore[union-attr]
    assert row_for(table, "Deployment", "nonsense") is None
