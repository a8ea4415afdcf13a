"""Router controller: the pure routing table every proxy computes, and the service ports it decides."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.router import KEY, RouterController
from forge.models import (
    App,
    AppSpec,
    AppStatus,
    Instance,
    InstanceSpec,
    InstanceStatus,
    Node,
    NodeSpec,
    ObjectMeta,
)
from forge.proxy.routing import desired_routes
from forge.store.base import Store, WatchEvent

# --------------------------------------------------------------------------- pure table


def _app(name: str, live: str | None = None, domains: tuple[str, ...] = ()) -> App:
    return App(metadata=ObjectMeta(name=name), spec=AppSpec(repo=f"acme/{name}", domains=list(domains)),
               status=AppStatus(live_deployment=live))


def _inst(name: str, dep: str, node: str | None = "n1", port: int | None = 20001, phase: str = "Running",
          ready: bool = True, desired: str = "Running") -> Instance:
    return Instance(
        metadata=ObjectMeta(name=name),
        spec=InstanceSpec(app=dep.rpartition("-")[0], deployment=dep, node=node, desired=desired,  # type: ignore[arg-type]
                          repo="acme/x", commit="0" * 40),
        status=InstanceStatus(phase=phase, ready=ready, port=port),  # type: ignore[arg-type]
    )


NODES = [Node(metadata=ObjectMeta(name="n1"), spec=NodeSpec(address="10.0.0.1")),
         Node(metadata=ObjectMeta(name="n2"), spec=NodeSpec(address="10.0.0.2"))]

TABLE: list[tuple[str, list[App], list[Instance], dict[str, list[str]]]] = [
    ("two-ready", [_app("web", "web-2")],
     [_inst("web-2-0", "web-2", "n1", 20001), _inst("web-2-1", "web-2", "n2", 20002)],
     {"web.example.com": ["10.0.0.1:20001", "10.0.0.2:20002"]}),
    ("only-live-release", [_app("web", "web-2")],
     [_inst("web-1-0", "web-1", port=20009), _inst("web-2-0", "web-2", port=20001)],
     {"web.example.com": ["10.0.0.1:20001"]}),
    ("unready-excluded", [_app("web", "web-2")],
     [_inst("web-2-0", "web-2", port=20001), _inst("web-2-1", "web-2", port=20002, ready=False)],
     {"web.example.com": ["10.0.0.1:20001"]}),
    ("not-running-excluded", [_app("web", "web-2")],
     [_inst("web-2-0", "web-2", port=20001, phase="Stopping"), _inst("web-2-1", "web-2", port=20002, desired="Stopped")],
     {}),
    ("no-port-or-node-excluded", [_app("web", "web-2")],
     [_inst("web-2-0", "web-2", port=None), _inst("web-2-1", "web-2", node=None), _inst("web-2-2", "web-2", node="gone")],
     {}),
    ("no-live-release", [_app("web", None)], [_inst("web-1-0", "web-1")], {}),
    ("custom-domains", [_app("web", "web-1", ("www.acme.io", "acme.io"))], [_inst("web-1-0", "web-1")],
     {"web.example.com": ["10.0.0.1:20001"], "www.acme.io": ["10.0.0.1:20001"], "acme.io": ["10.0.0.1:20001"]}),
    ("custom-domain-first-claim-wins", [_app("b", "b-1", ("shop.io",)), _app("a", "a-1", ("shop.io",))],
     [_inst("a-1-0", "a-1", port=1), _inst("b-1-0", "b-1", port=2)],
     {"a.example.com": ["10.0.0.1:1"], "b.example.com": ["10.0.0.1:2"], "shop.io": ["10.0.0.1:1"]}),
    ("custom-domain-never-shadows-app-host", [_app("a", "a-1", ("b.example.com",)), _app("b", "b-1")],
     [_inst("a-1-0", "a-1", port=1), _inst("b-1-0", "b-1", port=2)],
     {"a.example.com": ["10.0.0.1:1"], "b.example.com": ["10.0.0.1:2"]}),
]


@pytest.mark.parametrize(("apps", "instances", "want"), [t[1:] for t in TABLE], ids=[t[0] for t in TABLE])
def test_desired_routes(apps: list[App], instances: list[Instance], want: dict[str, list[str]]) -> None:
    """Hosts of live Apps map to the sorted dials of the live release's Running, ready Instances."""
    assert desired_routes(apps, instances, NODES, "example.com") == want


# --------------------------------------------------------------------------- service ports


def test_every_app_gets_a_distinct_stable_port(store: Store, clock: FakeClock, config: Config,
                                              make_app: Callable[..., App]) -> None:
    """Apps without a service address get the lowest free ports; a second pass changes nothing,
    and an App that holds a port (on any host's IP) keeps it."""
    make_app("b")
    held = make_app("a")
    held.status.service_address = "198.18.9.9:10000"  # written by another control plane's router
    store.update_status(held)
    make_app("c")
    router = RouterController(store, clock, config)
    assert router.reconcile(KEY) is None
    ports = {a.metadata.name: a.status.service_address for a in store.list(App)[0]}
    ip = router.service_ip
    assert ports == {"a": "198.18.9.9:10000", "b": f"{ip}:10001", "c": f"{ip}:10002"}
    before = {a.metadata.name: a.metadata.resource_version for a in store.list(App)[0]}
    assert router.reconcile(KEY) is None
    assert {a.metadata.name: a.metadata.resource_version for a in store.list(App)[0]} == before


def test_only_apps_without_a_port_wake_the_router(store: Store, clock: FakeClock, config: Config,
                                                 make_app: Callable[..., App]) -> None:
    """A deploy's App status writes do not cost a pass over every App: only a portless App wakes it."""
    router = RouterController(store, clock, config)
    app = make_app("web")
    assert list(router.keys_for(WatchEvent("ADDED", app, 1))) == [KEY]
    router.reconcile(KEY)
    app = store.get(App, "web")
    assert list(router.keys_for(WatchEvent("MODIFIED", app, 2))) == []
