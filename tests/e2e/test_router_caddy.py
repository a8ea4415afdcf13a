"""HTTPS from Caddy's internal CA, issued on demand only for hosts the tls/ask truth approves,
with the proxy's static Caddy config and its host map."""

from __future__ import annotations

import http.server
import shutil
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from forge.clock import SystemClock
from forge.config import Config
from forge.errors import Conflict
from forge.models import App, AppSpec, Instance, InstanceSpec, Node, ObjectMeta
from forge.proxy.caddy import CaddyProcess, forge_config, hosts_dir
from forge.proxy.hostmap import HostMap
from forge.proxy.reconcilers import HostsReconciler
from forge.proxy.records import Records
from forge.proxy.routing import is_servable_host
from forge.store.base import Store
from forge.store.factory import open_store
from tests.e2e.harness import https_get

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")]
CLOCK = SystemClock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = CLOCK.monotonic() + timeout
    while not check():
        if CLOCK.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        CLOCK.sleep(0.05)


def serve(handler: Callable[[http.server.BaseHTTPRequestHandler], tuple[int, bytes]]) -> http.server.ThreadingHTTPServer:
    class H(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            code, body = handler(self)
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = open_store(f"sqlite:///{tmp_path / 'forge.db'}")
    yield s
    s.close()


@pytest.fixture
def backend() -> Iterator[int]:
    srv = serve(lambda h: (200, b"hello from the app"))
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def set_live(store: Store, name: str, live: str | None) -> None:
    """Write App.status.liveDeployment; the router writes serviceAddress beside it, so a
    Conflict means: read it again."""
    for _ in range(20):
        app = store.get("App", name)
        app.status.live_deployment = live
        try:
            store.update_status(app)
            return
        except Conflict:
            continue
    raise AssertionError("App status kept changing")


def seed_live_app(store: Store, name: str, port: int, domains: tuple[str, ...] = ()) -> None:
    if not store.list("Node")[0]:
        store.create(Node(metadata=ObjectMeta(name="n1")))
    store.create(App(metadata=ObjectMeta(name=name), spec=AppSpec(repo=f"acme/{name}", domains=list(domains))))
    inst = store.create(Instance(metadata=ObjectMeta(name=f"{name}-1-0"), spec=InstanceSpec(
        app=name, deployment=f"{name}-1", node="n1", repo=f"acme/{name}", commit="a" * 40)))
    inst.status.phase, inst.status.ready, inst.status.port = "Running", True, port
    store.update_status(inst)
    set_live(store, name, f"{name}-1")


def test_tls_internal_serves_https_for_servable_hosts_only(tmp_path: Path, store: Store, backend: int) -> None:
    """With tls=internal, an app host gets a certificate from Caddy's internal CA; an unknown host gets none."""
    asked: list[str] = []

    def ask(h: http.server.BaseHTTPRequestHandler) -> tuple[int, bytes]:
        domain = parse_qs(urlparse(h.path).query).get("domain", [""])[0]
        asked.append(domain)
        apps: list[App] = store.list("App")[0]  # type: ignore[assignment]
        return (200, b"ok") if is_servable_host(domain, apps, "localhost") else (404, b"no")

    ask_srv = serve(ask)
    https_port = free_port()
    cfg = Config(data_dir=tmp_path, http_listen=f"127.0.0.1:{free_port()}", caddy_admin=f"127.0.0.1:{free_port()}",
                 api_listen=f"127.0.0.1:{ask_srv.server_address[1]}", tls="internal")
    cfg = replace(cfg, https_listen=f"127.0.0.1:{https_port}")
    caddy = CaddyProcess(forge_config(cfg, kernel=False), tmp_path / "caddy")
    caddy.start()
    records = Records()
    hosts = HostsReconciler(records, HostMap(hosts_dir(cfg.data_dir)), "localhost", None, CLOCK)  # caddy mode
    try:
        seed_live_app(store, "secure", backend, domains=("secure.example.com",))
        for kind in (App, Instance, Node):
            records.replace(kind, store.list(kind)[0])
        hosts.reconcile(hosts.KEY)
        root = tmp_path / "caddy" / "data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
        assert https_get(https_port, "secure.localhost", root) == ("HTTP/1.1 200 OK", "hello from the app")
        assert https_get(https_port, "secure.example.com", root)[0] == "HTTP/1.1 200 OK"
        with pytest.raises(ssl.SSLError) as refused:
            https_get(https_port, "nobody.localhost", root)
        assert not isinstance(refused.value, ssl.SSLCertVerificationError)  # no certificate at all
        assert "nobody.localhost" in asked
        r = httpx.get(f"http://{cfg.http_listen}/", headers={"Host": "secure.localhost"}, timeout=5)
        assert (r.status_code, r.text) == (200, "hello from the app")
    finally:
        caddy.stop()
        ask_srv.shutdown()
        ask_srv.server_close()
