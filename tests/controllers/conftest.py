"""Shared fixtures for controller tests: a real SQLite store in tmp_path, a FakeClock, a Config
and factories that seed App / Deployment / Instance / Node / Lease records.

Fixture names are a contract other controller tests rely on: ``store``, ``clock``, ``config``,
``make_app``, ``make_deployment``, ``make_instance``, ``make_node``, ``make_lease``; plus the
plain helpers ``events_for`` and ``condition_of`` and the constants ``GiB``/``MiB``/``COMMITS``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from forge.clock import FakeClock
from forge.config import Config
from forge.errors import NotFound
from forge.manifest import load_yaml, parse_manifest, validate_data
from forge.models import (
    COND_AGENT_READY,
    LABEL_APP,
    LABEL_DEPLOYMENT,
    LABEL_NODE,
    App,
    AppSpec,
    Capacity,
    Condition,
    Deployment,
    DeploymentSpec,
    DeploymentStatus,
    Event,
    Instance,
    InstanceSpec,
    InstanceStatus,
    Lease,
    LeaseSpec,
    Manifest,
    Node,
    NodeSpec,
    ObjectMeta,
    Resource,
    Resources,
    set_condition,
)
from forge.store.base import Store
from tests.controllers.ownership import record_writers

MiB = 1024 * 1024
GiB = 1024 * MiB


def commit_for(n: int | str) -> str:
    """A deterministic 40-hex commit id for test release ``n``."""
    return hashlib.sha1(f"commit-{n}".encode()).hexdigest()


COMMITS = [commit_for(i) for i in range(10)]

# A real forge.yaml, through the real validator. min_ready 0: promotion at the first ready
# probe, so tests of other rules need no clock games; the min_ready tests set it themselves.
DEFAULT_FORGE_YAML = """
runtime: python3.11
build: {commands: []}
run: {command: python3 -m http.server $PORT, port: 8000}
resources: {memory: 256M, cpu: 0.5}
health: {path: /health, interval: 10s, timeout: 3s, retries: 3, min_ready: 0s}
"""
DEFAULT_MANIFEST: Manifest = parse_manifest(DEFAULT_FORGE_YAML)


def manifest_with(**sections: Any) -> Manifest:
    """The default forge.yaml with top-level sections replaced, in forge.yaml's own terms
    (``build={"commands": ["make"], "timeout": "15m"}``), validated as a push's would be."""
    return validate_data({**load_yaml(DEFAULT_FORGE_YAML), **sections})


def as_manifest(value: Manifest | dict[str, Any] | bool) -> Manifest:
    """``True`` → the default; a dict is forge.yaml-shaped and validated; a Manifest as is."""
    if value is True:
        return DEFAULT_MANIFEST.model_copy(deep=True)
    if isinstance(value, Manifest):
        return value
    assert isinstance(value, dict), f"not a manifest: {value!r}"
    return validate_data(value)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def config(tmp_path: Path) -> Iterator[Config]:
    cfg = Config(
        data_dir=tmp_path / "data",
        git_url_template=f"file://{tmp_path}/remotes/{{full_name}}.git",
        secret_key=bytes(range(32)),
        admin_token="test-admin-token",
        webhook_secret="test-webhook-secret",
    )
    yield cfg
    remove_service_map(cfg.data_dir)


def remove_service_map(data_dir: Path) -> None:
    """A router in kernel mode (root) made this install's service table and address: remove them."""
    from forge.proxy.nft import Nft, nft_available
    from forge.proxy.servicemap import ServiceMap

    if nft_available() is None:
        services = ServiceMap(data_dir)
        if Nft().table_exists("ip", services.table):
            services.teardown()


@pytest.fixture
def store(tmp_path: Path, clock: FakeClock) -> Iterator[Store]:
    """A real SqliteStore whose createdAt/updatedAt follow the FakeClock."""
    from forge.store.sqlite import SqliteStore

    s = SqliteStore(str(tmp_path / "forge.db"), clock=clock)
    writes = record_writers(s)  # one writer per status field (docs/CONTRACTS.md), in every test
    yield s
    s.close()
    bad = writes.violations()
    assert not bad, "status fields written by a controller that does not own them:\n" + "\n".join(bad)


def _write_status(store: Store, created: Resource, status_fields: dict[str, Any]) -> Resource:
    if not status_fields:
        return created
    obj = created.copy_deep()
    for k, v in status_fields.items():
        setattr(obj.status, k, v)
    return store.update_status(obj)


def _split(kwargs: dict[str, Any], spec_cls: type, status_cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    spec, status = {}, {}
    for k, v in kwargs.items():
        if k in spec_cls.model_fields:
            spec[k] = v
        elif k in status_cls.model_fields:
            status[k] = v
        else:
            raise TypeError(f"unknown field {k!r} for {spec_cls.__name__}/{status_cls.__name__}")
    return spec, status


@pytest.fixture
def make_app(store: Store) -> Callable[..., App]:
    """``make_app("hello", replicas=2)`` → a stored App (repo defaults to ``acme/NAME``)."""

    def make(name: str, **spec: Any) -> App:
        spec.setdefault("repo", f"acme/{name}")
        return store.create(App(metadata=ObjectMeta(name=name), spec=AppSpec(**spec)))  # type: ignore[return-value]

    return make


@pytest.fixture
def make_deployment(store: Store, clock: FakeClock) -> Callable[..., Deployment]:
    """``make_deployment(app, n, commit=None, phase="Live", manifest=..., **spec_or_status)``.

    ``app`` is an App or its name; keyword arguments go to spec or status by field name.
    ``manifest=True`` stores ``DEFAULT_MANIFEST``; a dict is a forge.yaml, validated.
    """

    def make(app: App | str, n: int, commit: str | None = None, **kwargs: Any) -> Deployment:
        app_name = app if isinstance(app, str) else app.metadata.name
        spec, status = _split(kwargs, DeploymentSpec, DeploymentStatus)
        if status.get("manifest") is not None:
            status["manifest"] = as_manifest(status["manifest"])
        if not isinstance(app, str):
            spec.setdefault("repo", app.spec.repo)
        spec.setdefault("repo", f"acme/{app_name}")
        status.setdefault("created_time", clock.now_iso())
        dep = Deployment(
            metadata=ObjectMeta(name=f"{app_name}-{n}", labels={LABEL_APP: app_name}),
            spec=DeploymentSpec(app=app_name, commit=commit or commit_for(n), **spec),
        )
        return _write_status(store, store.create(dep), status)  # type: ignore[return-value]

    return make


@pytest.fixture
def make_node(store: Store, clock: FakeClock) -> Callable[..., Node]:
    """``make_node("n1", ready=True, cpu=2, memory=4 * GiB, unschedulable=False, labels=None)``."""

    def make(
        name: str, ready: bool = True, cpu: float = 2, memory: int = 4 * GiB, unschedulable: bool = False,
        labels: dict[str, str] | None = None, drain: bool = False,
    ) -> Node:
        node = store.create(Node(metadata=ObjectMeta(name=name, labels=labels or {}),
                                 spec=NodeSpec(unschedulable=unschedulable, drain=drain)))
        node.status.capacity = Capacity(cpu=cpu, memory=memory)
        node.status.allocatable = Capacity(cpu=cpu, memory=memory)
        node.status.last_heartbeat_time = clock.now_iso()
        set_condition(  # as the agent does: its own word; Ready and phase are derived from it
            node.status, COND_AGENT_READY, "True" if ready else "False",
            "NodeReady" if ready else "NodeNotReady", "", clock.now_iso(),
        )
        return store.update_status(node)  # type: ignore[return-value]

    return make


@pytest.fixture
def make_instance(store: Store) -> Callable[..., Instance]:
    """``make_instance(deployment, index=0, node=None, phase="", desired="Running", cpu=0.5,
    memory=256 * MiB, node_selector=None, **status)``; ``deployment`` is a Deployment or a name ``APP-N``."""

    def make(
        deployment: Deployment | str,
        index: int = 0,
        node: str | None = None,
        phase: str = "",
        desired: str = "Running",
        cpu: float = 0.5,
        memory: int = 256 * MiB,
        name: str | None = None,
        node_selector: dict[str, str] | None = None,
        **status: Any,
    ) -> Instance:
        if isinstance(deployment, str):
            try:
                deployment = store.get("Deployment", deployment)  # type: ignore[assignment]
            except NotFound:
                pass
        if isinstance(deployment, str):
            dep_name, app_name = deployment, deployment.rpartition("-")[0]
            repo, commit = f"acme/{app_name}", commit_for(deployment.rpartition("-")[2])
            manifest = DEFAULT_MANIFEST
        else:
            dep_name, app_name = deployment.metadata.name, deployment.spec.app
            repo = deployment.spec.repo or f"acme/{app_name}"
            commit, manifest = deployment.spec.commit, deployment.status.manifest or DEFAULT_MANIFEST
        labels = {LABEL_APP: app_name, LABEL_DEPLOYMENT: dep_name}
        if node:
            labels[LABEL_NODE] = node
        inst = Instance(
            metadata=ObjectMeta(name=name or f"{dep_name}-{index}", labels=labels),
            spec=InstanceSpec(
                app=app_name, deployment=dep_name, index=index, node=node, desired=desired,  # type: ignore[arg-type]
                repo=repo, commit=commit, manifest=manifest, resources=Resources(cpu=cpu, memory=memory),
                node_selector=node_selector or {},
            ),
        )
        if phase:
            status["phase"] = phase
        unknown = set(status) - set(InstanceStatus.model_fields)
        if unknown:
            raise TypeError(f"unknown Instance status fields {sorted(unknown)}")
        return _write_status(store, store.create(inst), status)  # type: ignore[return-value]

    return make


@pytest.fixture
def make_lease(store: Store, clock: FakeClock) -> Callable[..., Lease]:
    """``make_lease("node.n1", holder="n1", duration_seconds=15)`` renewed at the clock's now."""

    def make(name: str, holder: str = "", duration_seconds: float = 15.0) -> Lease:
        now = clock.now_iso()
        lease = Lease(
            metadata=ObjectMeta(name=name),
            spec=LeaseSpec(holder=holder or name.removeprefix("node."), renew_time=now, acquire_time=now,
                           duration_seconds=duration_seconds),
        )
        return store.create(lease)  # type: ignore[return-value]

    return make


def events_for(store: Store, name: str | None = None, reason: str | None = None) -> list[Event]:
    """Events (optionally for one involved object name and/or one reason), oldest first."""
    items, _ = store.list("Event")
    out = [
        e for e in items
        if (name is None or e.spec.involved_object.name == name) and (reason is None or e.spec.reason == reason)
    ]
    return sorted(out, key=lambda e: (e.spec.first_time or "", e.metadata.name))  # type: ignore[return-value]


def condition_of(obj: Resource, type_: str) -> Condition | None:
    return obj.status.condition(type_)


def snapshot(store: Store) -> dict[tuple[str, str], int]:
    """(kind, name) → resourceVersion of every record: compare before/after a second reconcile."""
    out: dict[tuple[str, str], int] = {}
    for kind in ("App", "Deployment", "Instance", "Node", "Event", "Lease", "Secret", "RepoCredential"):
        for obj in store.list(kind)[0]:
            out[(kind, obj.metadata.name)] = obj.metadata.resource_version
    return out
