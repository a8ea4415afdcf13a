"""Tally controller: phases reached by Deployments and Instances become monotonic store marks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from forge.clock import FakeClock, iso
from forge.config import Config
from forge.controllers.base import DONE
from forge.controllers.tally import (
    DEPLOYMENTS_METRIC,
    DURATION_LABEL,
    DURATION_METRIC,
    TASKS_METRIC,
    Mark,
    TallyController,
    deployment_marks,
    instance_marks,
)
from forge.models import Deployment, DeploymentSpec, DeploymentStatus, Instance, ObjectMeta
from forge.store.base import Store, WatchEvent
from tests.controllers.conftest import COMMITS, snapshot

T0 = 1_900_000_000.0


@pytest.fixture
def tally(store: Store, clock: FakeClock, config: Config) -> TallyController:
    return TallyController(store, clock, config)


def set_status(store: Store, kind: str, name: str, **fields: Any) -> None:
    obj = store.get(kind, name)
    for k, v in fields.items():
        setattr(obj.status, k, v)
    store.update_status(obj)


def dep(phase: str = "", created: float | None = T0, live: float | None = None, created_at: str | None = None) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name="hello-1", uid="u", created_at=created_at),
        spec=DeploymentSpec(app="hello", commit=COMMITS[1]),
        status=DeploymentStatus(
            phase=phase,  # type: ignore[arg-type]
            created_time=iso(created) if created is not None else None,
            live_time=iso(live) if live is not None else None,
        ),
    )


@pytest.mark.parametrize(
    ("deployment", "expected"),
    [
        (dep(), [Mark(DEPLOYMENTS_METRIC, "Pending")]),
        (dep("Building"), [Mark(DEPLOYMENTS_METRIC, "Pending"), Mark(DEPLOYMENTS_METRIC, "Building")]),
        (dep("Failed"), [Mark(DEPLOYMENTS_METRIC, "Pending"), Mark(DEPLOYMENTS_METRIC, "Failed")]),
        (dep("Live", live=T0 + 42.5), [Mark(DEPLOYMENTS_METRIC, "Pending"), Mark(DEPLOYMENTS_METRIC, "Live"),
                                       Mark(DURATION_METRIC, DURATION_LABEL, 42.5)]),
        (dep("Superseded", live=T0 + 7), [Mark(DEPLOYMENTS_METRIC, "Pending"), Mark(DEPLOYMENTS_METRIC, "Live"),
                                          Mark(DEPLOYMENTS_METRIC, "Superseded"), Mark(DURATION_METRIC, DURATION_LABEL, 7.0)]),
        (dep("Failed", live=T0 + 3), [Mark(DEPLOYMENTS_METRIC, "Pending"), Mark(DEPLOYMENTS_METRIC, "Live"),
                                      Mark(DEPLOYMENTS_METRIC, "Failed"), Mark(DURATION_METRIC, DURATION_LABEL, 3.0)]),
        (dep("Live", created=None, live=T0 + 9, created_at=iso(T0)),
         [Mark(DEPLOYMENTS_METRIC, "Pending"), Mark(DEPLOYMENTS_METRIC, "Live"), Mark(DURATION_METRIC, DURATION_LABEL, 9.0)]),
        (dep("Live", created=T0 + 5, live=T0), [Mark(DEPLOYMENTS_METRIC, "Pending"), Mark(DEPLOYMENTS_METRIC, "Live"),
                                                Mark(DURATION_METRIC, DURATION_LABEL, 0.0)]),
    ],
    ids=["new", "building", "failed", "live", "superseded", "rolled-back", "created-at-fallback", "clock-skew-clamped"],
)
def test_deployment_marks(deployment: Deployment, expected: list[Mark]) -> None:
    """A Deployment earns Pending, Live once liveTime is set, its current phase, and push-to-live seconds."""
    assert deployment_marks(deployment) == expected


@pytest.mark.parametrize(
    ("phase", "labels"),
    [("", ["Pending"]), ("Pending", ["Pending"]), ("Running", ["Pending", "Running"]), ("Lost", ["Pending", "Lost"])],
    ids=["new", "pending", "running", "lost"],
)
def test_instance_marks(phase: str, labels: list[str]) -> None:
    """An Instance earns Pending and the phase it is in."""
    inst = Instance.model_validate({
        "metadata": {"name": "hello-1-0", "uid": "i"},
        "spec": {"app": "hello", "deployment": "hello-1", "repo": "acme/hello", "commit": COMMITS[1]},
        "status": {"phase": phase},
    })
    assert instance_marks(inst) == [Mark(TASKS_METRIC, label) for label in labels]


def test_deployment_lifecycle_counts_never_decrease(
    store: Store, clock: FakeClock, tally: TallyController, make_app: Callable[..., Any],
    make_deployment: Callable[..., Deployment],
) -> None:
    """Pending → Building → Live → Superseded → deleted: each phase counted once, counts only grow."""
    app = make_app("hello")
    make_deployment(app, 1)
    key = "Deployment/hello-1"
    seen: list[dict[str, int]] = []
    steps: list[dict[str, Any]] = [
        {},
        {"phase": "Building"},
        {"phase": "Live", "live_time": iso(clock.now() + 30)},
        {"phase": "Superseded"},
    ]
    for fields in steps:
        if fields:
            set_status(store, "Deployment", "hello-1", **fields)
        assert tally.reconcile(key) == DONE
        seen.append(store.tally(DEPLOYMENTS_METRIC))
    assert seen[-1] == {"Pending": 1, "Building": 1, "Live": 1, "Superseded": 1}
    assert store.observations(DURATION_METRIC, DURATION_LABEL) == [30.0]
    store.delete("Deployment", "hello-1")
    assert tally.reconcile(key) == DONE
    seen.append(store.tally(DEPLOYMENTS_METRIC))
    for before, after in zip(seen, seen[1:], strict=False):
        assert all(after.get(label, 0) >= n for label, n in before.items()), (before, after)
    assert seen[-1] == seen[-2]


def test_reconcile_is_idempotent_and_writes_no_record(
    store: Store, clock: FakeClock, tally: TallyController, make_app: Callable[..., Any],
    make_deployment: Callable[..., Deployment], make_instance: Callable[..., Instance],
) -> None:
    """A second reconcile adds no mark; the controller never writes a record or an Event."""
    app = make_app("hello")
    make_deployment(app, 1, phase="Live", live_time=iso(clock.now() + 12))
    make_instance("hello-1", 0, phase="Running")
    make_instance("hello-1", 1, phase="Failed")
    before = snapshot(store)
    for _ in range(2):
        for key in tally.all_keys():
            tally.reconcile(key)
    assert snapshot(store) == before
    assert store.tally(DEPLOYMENTS_METRIC) == {"Pending": 1, "Live": 1}
    assert store.tally(TASKS_METRIC) == {"Pending": 2, "Running": 1, "Failed": 1}
    assert store.observations(DURATION_METRIC, DURATION_LABEL) == [12.0]


def test_recreated_record_counts_again(
    store: Store, tally: TallyController, make_app: Callable[..., Any], make_deployment: Callable[..., Deployment],
) -> None:
    """A Deployment deleted and created again under the same name is a new record (new uid)."""
    app = make_app("hello")
    make_deployment(app, 1, phase="Failed")
    tally.reconcile("Deployment/hello-1")
    store.delete("Deployment", "hello-1")
    make_deployment(app, 1, phase="Failed")
    tally.reconcile("Deployment/hello-1")
    assert store.tally(DEPLOYMENTS_METRIC) == {"Pending": 2, "Failed": 2}


@pytest.mark.parametrize("key", ["Deployment/ghost", "Instance/ghost", "App/hello", "hello-1", "Deployment/"],
                         ids=["missing-deployment", "missing-instance", "unwatched-kind", "no-kind", "no-name"])
def test_unknown_keys_are_done(store: Store, tally: TallyController, make_app: Callable[..., Any], key: str) -> None:
    """Keys naming nothing tallyable finish without marks."""
    make_app("hello")
    assert tally.reconcile(key) == DONE
    assert store.tally(DEPLOYMENTS_METRIC) == {} and store.tally(TASKS_METRIC) == {}


def test_keys(
    store: Store, tally: TallyController, make_app: Callable[..., Any], make_deployment: Callable[..., Deployment],
    make_instance: Callable[..., Instance],
) -> None:
    """Keys are Kind/name for watched changes and for the resync of every Deployment and Instance."""
    app = make_app("hello")
    d = make_deployment(app, 1)
    make_instance(d, 0)
    assert sorted(tally.all_keys()) == ["Deployment/hello-1", "Instance/hello-1-0"]
    assert list(tally.keys_for(WatchEvent("DELETED", d, 9))) == ["Deployment/hello-1"]
    assert TallyController.watches == ("Deployment", "Instance")
