"""Router controller: the pure routing table, then reconcile against a real Caddy on loopback."""

from __future__ import annotations

import collections
import http.server
import json
import shutil
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.router import KEY, REASON_UNREACHABLE, RouterController, router_base_config
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
from forge.proxy.caddy import NOT_FOUND_BODY, CaddyAdmin, CaddyProcess
from forge.proxy.routing import desired_routes
from forge.store.base import Store
from tests.controllers.conftest import events_for

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


# --------------------------------------------------------------------------- real Caddy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Echo(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.server.ident.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def backends() -> Iterator[list[int]]:
    """Three loopback HTTP servers, each answering its own id (``b0``, ``b1``, ``b2``); their ports."""
    servers = []
    for i in range(3):
        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
        srv.ident = f"b{i}"  # type: ignore[attr-defined]
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
    yield [s.server_address[1] for s in servers]
    for s in servers:
        s.shutdown()
        s.server_close()


class Caddy:
    """A real Caddy child that tests may kill and restart on the same admin port."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.http, self.admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
        self.proc: CaddyProcess | None = None

    def start(self, config: dict[str, Any]) -> None:
        self.proc = CaddyProcess(config, self.workdir)
        self.proc.start()

    def restart(self, config: dict[str, Any]) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.start(config)

    def get(self, host: str) -> httpx.Response:
        return httpx.get(f"http://{self.http}/", headers={"Host": host}, timeout=5)


@pytest.fixture(scope="module")
def caddy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Caddy]:
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed")
    c = Caddy(tmp_path_factory.mktemp("caddy"))
    c.start(router_base_config(Config(http_listen=c.http, caddy_admin=c.admin)))
    yield c
    assert c.proc is not None
    c.proc.stop()


@pytest.fixture
def rcfg(config: Config, caddy: Caddy) -> Config:
    return replace(config, http_listen=caddy.http, caddy_admin=caddy.admin)


@pytest.fixture
def router(store: Store, clock: FakeClock, rcfg: Config) -> Iterator[RouterController]:
    r = RouterController(store, clock, rcfg, registry=CollectorRegistry(), services=None)  # caddy mode
    yield r
    r.close()


def updates(r: RouterController, method: str = "patch") -> float:
    return r.metrics.updates.labels(method=method)._value.get()


@pytest.fixture
def live_app(store: Store, make_app: Callable[..., App], make_deployment: Callable[..., Any],
             make_node: Callable[..., Node], make_instance: Callable[..., Instance],
             backends: list[int]) -> Callable[..., App]:
    """``live_app(name, ready=[0, 1], unready=[2], domains=())``: a live App whose release has
    Instances on the backends of those indexes."""
    if not any(n.metadata.name == "n1" for n in store.list("Node")[0]):
        make_node("n1")

    def make(name: str, ready: tuple[int, ...] = (0,), unready: tuple[int, ...] = (), **spec: Any) -> App:
        app = make_app(name, **spec)
        dep = make_deployment(app, 1, phase="Live")
        for idx, b in enumerate(ready + unready):
            make_instance(dep, index=idx, node="n1", phase="Running", ready=b in ready, port=backends[b])
        app = store.get("App", name)
        app.status.live_deployment = dep.metadata.name
        return store.update_status(app)  # type: ignore[return-value]

    return make


def test_balances_over_ready_instances_only(caddy: Caddy, router: RouterController,
                                            live_app: Callable[..., App]) -> None:
    """Requests for APP.DOMAIN reach every ready Instance of the live release and never an unready one."""
    live_app("web", ready=(0, 1), unready=(2,))
    assert router.reconcile(KEY) is None
    seen = collections.Counter(caddy.get("web.localhost").text for _ in range(12))
    assert set(seen) == {"b0", "b1"}
    assert router.reconcile(KEY) is None
    assert updates(router) == 1


@pytest.mark.parametrize("host", ["nobody.localhost", "localhost", "web.example.org"], ids=["unknown", "bare", "other-domain"])
def test_unknown_host_gets_404_with_body(caddy: Caddy, router: RouterController, live_app: Callable[..., App],
                                         host: str) -> None:
    """A host no live App claims is answered 404 by the catch-all, with a body, never an empty 200."""
    live_app("web")
    router.reconcile(KEY)
    r = caddy.get(host)
    assert (r.status_code, r.text) == (404, NOT_FOUND_BODY)


def test_custom_domain_and_app_without_live_release(caddy: Caddy, router: RouterController,
                                                    live_app: Callable[..., App], make_app: Callable[..., App]) -> None:
    """Custom domains lead to the App; an App with no live release is a 404."""
    live_app("shop", ready=(1,), domains=["shop.example.com"])
    make_app("draft")
    router.reconcile(KEY)
    assert caddy.get("shop.example.com").text == "b1"
    assert caddy.get("shop.localhost").text == "b1"
    assert caddy.get("draft.localhost").status_code == 404


def test_burst_of_changes_is_one_update(caddy: Caddy, router: RouterController, live_app: Callable[..., App],
                                        store: Store) -> None:
    """Many store changes before one reconcile cost one Caddy update, and a quiet pass costs none."""
    for i in range(5):
        live_app(f"app{i}", ready=(i % 3,))
    app = store.get("App", "app0")
    app.status.live_deployment = None
    store.update_status(app)
    router.reconcile(KEY)
    router.reconcile(KEY)
    assert updates(router) == 1
    assert caddy.get("app0.localhost").status_code == 404
    assert [caddy.get(f"app{i}.localhost").text for i in range(1, 5)] == ["b1", "b2", "b0", "b1"]


@pytest.mark.parametrize("restart_with", ["base-file", "no-config"])
def test_routes_restored_after_caddy_restart(caddy: Caddy, router: RouterController, live_app: Callable[..., App],
                                             rcfg: Config, restart_with: str) -> None:
    """A killed and restarted Caddy (empty base config, or none of ours) gets the routes back on the next pass."""
    live_app("web", ready=(0,))
    router.reconcile(KEY)
    assert caddy.get("web.localhost").text == "b0"
    config = router_base_config(rcfg) if restart_with == "base-file" else {"admin": {"listen": caddy.admin}}
    caddy.restart(config)
    if restart_with == "base-file":
        assert caddy.get("web.localhost").status_code == 404
    # The runtime adds the key at least every resync_seconds; that bounds restoration.
    assert RouterController.resync_seconds <= 2.0
    assert router.reconcile(KEY) is None
    assert caddy.get("web.localhost").text == "b0"
    assert caddy.get("nobody.localhost").status_code == 404
    assert updates(router, "load") == (1 if restart_with == "no-config" else 0)
    if restart_with == "no-config":
        caddy.restart(router_base_config(rcfg))  # leave the module's Caddy as the others expect


def test_unreachable_caddy_one_warning_per_outage(store: Store, clock: FakeClock, config: Config,
                                                  live_app: Callable[..., App]) -> None:
    """Caddy down: the router requeues soon, counts failures and records one Warning Event per outage."""
    live_app("web")
    r = RouterController(store, clock, config, caddy=CaddyAdmin(f"127.0.0.1:{free_port()}", timeout=1),
                         registry=CollectorRegistry(), services=None)
    try:
        results = [r.reconcile(KEY), r.reconcile(KEY)]
    finally:
        r.caddy.close()
    assert all(res is not None and res.requeue_after and res.requeue_after <= 2 for res in results)
    assert r.metrics.failures._value.get() == 2
    warnings = events_for(store, "caddy", REASON_UNREACHABLE)
    assert len(warnings) == 1 and warnings[0].spec.type == "Warning" and warnings[0].spec.count == 1


def test_documented_base_config_is_current() -> None:
    """manifests/caddy/base.json is exactly what Forge loads into Caddy with default settings
    (data dir /var/lib/forge, kernel mode: admin on a unix socket, no upstream keep-alive)."""
    path = Path(__file__).resolve().parents[2] / "manifests" / "caddy" / "base.json"
    assert json.loads(path.read_text()) == router_base_config(Config(data_dir=Path("/var/lib/forge")), kernel=True)
