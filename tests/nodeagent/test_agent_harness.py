"""Shared real-process harness for the agent tests (imported by test_agent_*.py; holds no tests).

A real API (``forge.api.create_app`` over a temp SqliteStore) served on a loopback port by a
threading wsgiref server, a real git repository with a tiny http.server app behind a
``file://`` URL template, and Instance records created straight in the store the way the
scheduler binds them.
"""

from __future__ import annotations

import base64
import os
import shutil
import socketserver
import subprocess
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx

from forge.clock import SystemClock
from forge.config import Config
from forge.models import LABEL_APP, LABEL_DEPLOYMENT, LABEL_NODE, Instance

CLOCK = SystemClock()
ADMIN = "admin-" + uuid.uuid4().hex
NEEDS = shutil.which("git") is not None and shutil.which("bwrap") is not None and os.geteuid() == 0

APP_PY = r'''
import json, os, sys, http.server
mode = os.environ.get("MODE", "ok")
print("app starting on", os.environ["PORT"], flush=True)
if mode == "crash":
    print("crashing now", flush=True)
    sys.exit(3)
if mode == "oom":
    hog = []
    while True:
        hog.append(bytearray(16 * 1024 * 1024))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/env":
            body = json.dumps({"env": dict(os.environ), "uid": os.getuid()}).encode()
        else:
            body = b"hello from forge\n"
        code = 503 if (mode == "unhealthy" and self.path == "/health") else 200
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        if not os.environ.get("QUIET"):
            print("request", self.path, flush=True)
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''


def remove_network(agent_data_dir: Path) -> None:
    """What an agent made of its data plane there: namespaces, bridge, nftables table — and
    its release filesystems (mounts)."""
    from forge.nodeagent.network import NodeNetwork
    from forge.nodeagent.teardown import unmount_release_disks
    from forge.proxy.nft import nft_available

    if nft_available() is None:
        NodeNetwork(agent_data_dir).teardown()
    unmount_release_disks(agent_data_dir)


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, step: float = 0.1) -> Any:
    """Bounded wait for something real processes do; returns the truthy value or raises."""
    deadline = CLOCK.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if CLOCK.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last value {value!r})")
        CLOCK.sleep(step)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        return


class _ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Api:
    """The real API on a loopback port, plus admin helpers."""

    def __init__(self, tmp: Path) -> None:
        from forge.api import create_app
        from forge.store.sqlite import SqliteStore

        key = base64.b64encode(os.urandom(32)).decode()
        self.config = Config.from_env(data_dir=tmp, env={"FORGE_ADMIN_TOKEN": ADMIN, "FORGE_SECRET_KEY": key})
        self.store = SqliteStore(str(tmp / "forge.db"))
        app = create_app(self.config, store=self.store, clock=CLOCK)
        self.server = make_server("127.0.0.1", 0, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
        self.thread.start()
        self.admin = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10)

    def node_token(self, node: str) -> str:
        r = self.admin.post(f"/api/v1/nodes/{node}/token")
        assert r.status_code == 201, r.text
        return r.json()["token"]

    def close(self) -> None:
        self.admin.close()
        self.server.shutdown()
        self.server.server_close()
        self.store.close()

    def instance(self, name: str) -> Instance:
        return self.store.get("Instance", name)  # type: ignore[return-value]

    def create_instance(self, name: str, node: str, commit: str, manifest: dict[str, Any],
                        env: dict[str, str] | None = None, secret: str | None = None, app: str = "hello",
                        repo: str = "acme/hello") -> Instance:
        deployment = name.rsplit("-", 1)[0]
        inst = Instance.model_validate({
            "metadata": {"name": name, "labels": {LABEL_APP: app, LABEL_DEPLOYMENT: deployment, LABEL_NODE: node}},
            "spec": {"app": app, "deployment": deployment, "node": node, "repo": repo, "commit": commit,
                     "manifest": manifest, "env": env or {}, "secret": secret,
                     "resources": {"memory": 128 * 1024 * 1024, "cpu": 0.5, "pids": 128}},
            "status": {"phase": "Scheduled"},
        })
        return self.store.create(inst)  # type: ignore[return-value]

    def set_desired(self, name: str, desired: str) -> None:
        for _ in range(10):
            inst = self.instance(name)
            inst.spec.desired = desired  # type: ignore[assignment]
            try:
                self.store.update(inst)
                return
            except Exception as exc:  # noqa: BLE001 - Conflict with the agent's status writes: retry
                if type(exc).__name__ != "Conflict":
                    raise
        raise AssertionError("could not update desired state")


def make_repo(root: Path, full_name: str = "acme/hello") -> str:
    """A real git repo at ROOT/acme/hello.git holding the app; returns the commit sha."""
    repo = root / f"{full_name}.git"
    repo.mkdir(parents=True)
    (repo / "app.py").write_text(APP_PY)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-q", "-m", "app"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def manifest(run: str = "python3 app.py", build: list[str] | None = None, health: str = "/health",
             env: dict[str, str] | None = None, retries: int = 2) -> dict[str, Any]:
    from forge.manifest import Manifest

    return Manifest.model_validate({
        "run": {"command": run, "stopTimeoutSeconds": 2},
        "build": {"commands": build if build is not None else ["echo building the app", "python3 -c 'print(40 + 2)'"],
                  "timeoutSeconds": 60},
        "health": {"path": health, "intervalSeconds": 1, "timeoutSeconds": 1, "retries": retries},
        "env": env or {},
    }).to_status()
