"""Router in kernel mode: real Caddy on loopback, a real nftables service map, real backends.

Caddy dials each App's service address; the router moves the address between backends with
one kernel batch. The tests check what a client sees (which backend answers), that a switch
writes nothing to Caddy (its own admin audit log counts the writes), and that drift in either
Caddy's config or the kernel map is repaired.
"""

from __future__ import annotations

import collections
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.router import (
    CADDY_VERIFY_SECONDS,
    KEY_BACKENDS,
    KEY_HOSTS,
    REASON_DRIFT,
    REASON_MAP_REPAIRED,
    VERIFY_SECONDS,
    RouterController,
    router_base_config,
)
from forge.models import App, Instance, Node
from forge.proxy.caddy import CaddyAdmin, count_admin_writes
from forge.proxy.nft import nft_available
from forge.proxy.servicemap import ServiceMap
from forge.store.base import Store
from tests.controllers.conftest import events_for
from tests.controllers.test_router import Caddy, backends  # noqa: F401 - the module fixture

pytestmark = pytest.mark.skipif(nft_available() is not None, reason=f"needs nftables as root: {nft_available()}")


def admin_writes(admin: str) -> int:
    """Admin API requests other than GET, as Caddy itself counts them (caddy_admin_http_requests_total)."""
    return count_admin_writes(CaddyAdmin(admin))


@pytest.fixture
def kcfg(config: Config, tmp_path: Path) -> Config:
    return replace(config, data_dir=tmp_path)


@pytest.fixture
def kcaddy(tmp_path: Path, kcfg: Config) -> Iterator[tuple[Caddy, Config]]:
    c = Caddy(tmp_path / "caddy")
    cfg = replace(kcfg, http_listen=c.http, caddy_admin=c.admin)
    c.start(router_base_config(cfg, kernel=True))
    yield c, cfg
    assert c.proc is not None
    c.proc.stop()


@pytest.fixture
def krouter(store: Store, clock: FakeClock, kcaddy: tuple[Caddy, Config]) -> Iterator[RouterController]:
    _, cfg = kcaddy
    services = ServiceMap(cfg.data_dir)
    r = RouterController(store, clock, cfg, registry=CollectorRegistry(), services=services)
    yield r
    r.close()
    services.teardown()


@pytest.fixture
def live(store: Store, make_app: Callable[..., App], make_deployment: Callable[..., Any],
         make_node: Callable[..., Node], make_instance: Callable[..., Instance],
         backends: list[int]) -> Callable[..., App]:  # noqa: F811 - the imported fixture
    """``live(name, n, ready)``: App ``name`` with release ``n`` Live on the given backend indexes."""
    if not any(n.metadata.name == "n1" for n in store.list("Node")[0]):
        make_node("n1")

    def make(name: str, n: int, ready: tuple[int, ...]) -> App:
        try:
            app = store.get("App", name)
        except Exception:  # noqa: BLE001 - first release of this app
            app = make_app(name)
        dep = make_deployment(app, n, phase="Live")
        for idx, b in enumerate(ready):
            inst = make_instance(dep, index=idx, node="n1", phase="Running", ready=True, port=backends[b])
            inst.status.address = "127.0.0.1"
            store.update_status(inst)
        app = store.get("App", name)
        app.status.live_deployment = dep.metadata.name
        return store.update_status(app)  # type: ignore[return-value]

    return make


def settle(r: RouterController) -> None:
    for _ in range(5):
        res = r.reconcile(KEY_HOSTS)
        if res is None or (res.requeue_after or 0) > 1:
            break
    r.reconcile(KEY_BACKENDS)


def seen(c: Caddy, host: str, n: int = 12) -> set[str]:
    return set(collections.Counter(c.get(host).text for _ in range(n)))


def test_service_address_switches_in_the_kernel_without_touching_caddy(
        kcaddy: tuple[Caddy, Config], krouter: RouterController, live: Callable[..., App], store: Store) -> None:
    """A deploy, a scale and a rollback move traffic between backends; Caddy's config is written
    once (when the host appeared) and never again."""
    c, cfg = kcaddy
    live("web", 1, (0, 1))
    settle(krouter)
    app = store.get("App", "web")
    assert app.status.service_address and app.status.service_address.startswith(krouter.services.address + ":")
    assert seen(c, "web.localhost") == {"b0", "b1"}
    writes = admin_writes(c.admin)
    assert writes >= 1
    live("web", 2, (2,))  # deploy: the new release lives on b2 only
    settle(krouter)
    assert seen(c, "web.localhost") == {"b2"}
    live("web", 3, (0, 1, 2))  # a bigger release
    settle(krouter)
    assert seen(c, "web.localhost", 30) == {"b0", "b1", "b2"}
    for inst in store.list("Instance")[0]:  # the live release loses every ready Instance
        if inst.spec.deployment == "web-3":
            inst.status.ready = False
            store.update_status(inst)
    settle(krouter)
    assert c.get("web.localhost").status_code == 502  # the host stays; its address refuses at once
    assert admin_writes(c.admin) == writes


def test_second_app_adds_a_host_and_keeps_the_first(kcaddy: tuple[Caddy, Config], krouter: RouterController,
                                                    live: Callable[..., App]) -> None:
    """Two Apps get distinct service addresses; each host reaches its own backends."""
    c, _ = kcaddy
    live("one", 1, (0,))
    live("two", 1, (1,))
    settle(krouter)
    assert seen(c, "one.localhost") == {"b0"} and seen(c, "two.localhost") == {"b1"}
    assert c.get("nobody.localhost").status_code == 404


def test_caddy_drift_anywhere_is_repaired(kcaddy: tuple[Caddy, Config], krouter: RouterController,
                                          live: Callable[..., App], clock: FakeClock, store: Store) -> None:
    """A route an attacker slipped into Caddy (first position, any host → their backend) is gone
    after the next check, with a Warning Event."""
    c, cfg = kcaddy
    live("web", 1, (0,))
    settle(krouter)
    admin = CaddyAdmin(cfg.effective_caddy_admin)
    try:
        evil = {"handle": [{"handler": "static_response", "body": "owned"}]}
        admin.request("PUT", "/config/apps/http/servers/forge/routes/0", evil)
        assert c.get("web.localhost").text == "owned"
        clock.advance(CADDY_VERIFY_SECONDS + 1)
        krouter.reconcile(KEY_HOSTS)
        assert c.get("web.localhost").text == "b0"
        assert admin.config() == router_base_config(cfg, {"web.localhost": [store.get("App", "web").status.service_address]},
                                                    kernel=True)
    finally:
        admin.close()
    assert [e.spec.type for e in events_for(store, "caddy", REASON_DRIFT)] == ["Warning"]


def test_kernel_map_drift_is_repaired(kcaddy: tuple[Caddy, Config], krouter: RouterController,
                                      live: Callable[..., App], clock: FakeClock, store: Store) -> None:
    """Someone flushes the service map: the next verification restores it and says so."""
    c, _ = kcaddy
    live("web", 1, (1,))
    settle(krouter)
    assert seen(c, "web.localhost") == {"b1"}
    subprocess.run(["nft", "flush", "map", "ip", krouter.services.table, "backends"], check=True)
    clock.advance(VERIFY_SECONDS + 1)
    krouter.reconcile(KEY_BACKENDS)
    assert seen(c, "web.localhost") == {"b1"}
    assert events_for(store, "service-map", REASON_MAP_REPAIRED)
