"""Fixtures for API tests: create_app over a real SqliteStore in tmp_path, and a live server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon.testing
import httpx
import pytest

from forge.api import create_app
from forge.clock import SystemClock
from forge.config import Config
from forge.store.sqlite import SqliteStore

TOKEN = "admin-test-token-0123456789"
COMMIT1 = "1" * 40
COMMIT2 = "2" * 40
COMMIT3 = "3" * 40


def admin_headers(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Api:
    client: falcon.testing.TestClient
    store: SqliteStore
    config: Config

    def req(self, method: str, path: str, token: str | None = TOKEN, **kw: Any) -> falcon.testing.Result:
        headers = dict(kw.pop("headers", {}) or {})
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        return self.client.simulate_request(method, path, headers=headers, **kw)

    def create(self, plural: str, body: dict[str, Any], token: str | None = TOKEN) -> dict[str, Any]:
        r = self.req("POST", f"/api/v1/{plural}", token=token, json=body)
        assert r.status_code == 201, r.text
        return r.json


def make_api(tmp_path: Path, token: str = TOKEN, **overrides: Any) -> Api:
    config = Config(data_dir=tmp_path, admin_token=token, domain="forge.test", **overrides)
    store = SqliteStore(str(tmp_path / "forge.db"))
    return Api(falcon.testing.TestClient(create_app(config, store, SystemClock())), store, config)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    a = make_api(tmp_path)
    yield a
    a.store.close()


def app_body(name: str = "hello", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"repo": f"acme/{name}", **spec}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]

    def client(self, token: str | None = TOKEN, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=admin_headers(token) if token else {}, timeout=timeout)


def start_server(data_dir: Path, workers: int = 2, env: dict[str, str] | None = None,
                 extra_args: list[str] | None = None) -> LiveServer:
    """``python -m forge.api.server`` (gunicorn, gthread) on a free loopback port, ready when /readyz is."""
    port = free_port()
    full_env = {**os.environ, "FORGE_ADMIN_TOKEN": TOKEN, "FORGE_DOMAIN": "forge.test", **(env or {})}
    log = open(data_dir / "server.log", "wb")  # noqa: SIM115 - kept open for the child's lifetime
    proc = subprocess.Popen(
        [sys.executable, "-m", "forge.api.server", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir),
         "--workers", str(workers), "--threads", "8", *(extra_args or [])],
        env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    log.close()
    url = f"http://127.0.0.1:{port}"
    with httpx.Client(timeout=1.0) as c:
        for _ in range(300):
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {(data_dir / 'server.log').read_text()[-2000:]}")
            try:
                if c.get(f"{url}/readyz").status_code == 200:
                    return LiveServer(url, data_dir, proc)
            except httpx.TransportError:
                pass
            try:
                proc.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
    proc.kill()
    raise RuntimeError("server did not become ready in 15 s")


def stop_server(server: LiveServer) -> None:
    """Quick shutdown (SIGINT); threads parked in idle streams get 3 s, then the server's group is killed."""
    server.proc.send_signal(signal.SIGINT)
    try:
        server.proc.wait(3)
    except subprocess.TimeoutExpired:
        os.killpg(server.proc.pid, signal.SIGKILL)
        server.proc.wait(5)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    server = start_server(tmp_path_factory.mktemp("live"))
    yield server
    stop_server(server)
