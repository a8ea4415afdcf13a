"""End-to-end harness (helpers; the fixtures live in conftest.py): real git remotes in a temp dir, a real ``forge up`` (API, controllers,
agent, Caddy) on free loopback ports, and signed GitHub deliveries."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from forge.proxy.caddy import CaddyAdmin

WEBHOOK_SECRET = "e2e-webhook-secret"
ADMIN_TOKEN = "e2e-admin-token-0123456789"

needs_caddy = pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed (make setup)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str, step: float = 0.1) -> Any:
    """Bounded wait for a condition in a test (never in product code)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


APP_PY = r'''
import os, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = open("version.txt").read().strip()
HEALTH = int(os.environ.get("HEALTH_STATUS", "200"))


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        code = HEALTH if self.path == "/health" else 200
        body = f"{VERSION} {os.environ.get('GREETING', '')}".strip().encode() + b"\n"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        print("request", self.path, flush=True)


print(f"starting {VERSION} on {os.environ['PORT']}", flush=True)
ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''

MANIFEST = """name: {name}
runtime: python3.11
build:
  commands: ["echo building {version}", "test -f app.py"]
run:
  command: exec python3 app.py
resources: {{memory: 128M, cpu: 0.5}}
health: {{path: /health, interval: 1s, timeout: 1s, retries: 2, start_period: 5s, min_ready: {min_ready}}}
{extra}"""


@dataclass
class Remote:
    """A bare repository standing in for github.com/OWNER/NAME, plus a work tree to commit in."""

    root: Path
    full_name: str
    work: Path = field(init=False)
    bare: Path = field(init=False)

    def __post_init__(self) -> None:
        self.bare = self.root / "remotes" / f"{self.full_name}.git"
        self.work = self.root / "work" / self.full_name
        self.bare.parent.mkdir(parents=True, exist_ok=True)
        git("init", "--bare", "-q", "-b", "main", str(self.bare))
        git("-C", str(self.bare), "config", "uploadpack.allowAnySHA1InWant", "true")
        self.work.mkdir(parents=True)
        git("init", "-q", "-b", "main", str(self.work))
        git("-C", str(self.work), "remote", "add", "origin", str(self.bare))

    def commit(self, files: dict[str, str], message: str, branch: str = "main") -> str:
        for rel, text in files.items():
            p = self.work / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
        git("-C", str(self.work), "add", "-A")
        git("-C", str(self.work), "-c", "user.name=E2E", "-c", "user.email=e2e@example.com", "commit", "-q", "-m", message)
        git("-C", str(self.work), "push", "-q", "origin", f"HEAD:refs/heads/{branch}")
        return git("-C", str(self.work), "rev-parse", "HEAD").strip()

    def app_release(self, name: str, version: str, health: int = 200, extra: str = "", min_ready: str = "1s") -> str:
        files = {"app.py": APP_PY, "version.txt": version + "\n",
                 "forge.yaml": MANIFEST.format(name=name, version=version, extra=extra, min_ready=min_ready)}
        if health != 200:
            files["app.py"] = APP_PY.replace('os.environ.get("HEALTH_STATUS", "200")', f'"{health}"')
        return self.commit(files, f"release {version}")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True, timeout=60).stdout


def push_payload(full_name: str, ref: str, after: str, before: str = "0" * 40, deleted: bool = False) -> dict:
    owner, name = full_name.split("/")
    return {
        "ref": ref, "before": before, "after": after, "created": before == "0" * 40, "deleted": deleted,
        "forced": False, "base_ref": None, "compare": f"https://github.com/{full_name}/compare",
        "commits": [], "head_commit": None if deleted else {"id": after, "message": "e2e"},
        "repository": {"id": 1, "name": name, "full_name": full_name, "private": False,
                       "owner": {"name": owner, "login": owner}, "default_branch": "main"},
        "pusher": {"name": "e2e", "email": "e2e@example.com"}, "sender": {"login": "e2e"},
    }


@dataclass
class Forge:
    root: Path
    data: Path
    api: str
    http: str
    env: dict[str, str]
    caddy_admin: str | None = None  # None: forge up's default, a unix socket in the data dir

    default_node_name: bool = False  # True: no --node-name, forge up names the node after the host

    @property
    def node(self) -> str:
        """The local node's name, unique per install: concurrent runs on one machine never
        share a cgroup parent (each agent sweeps what it does not know under its own)."""
        if self.default_node_name:
            return socket.gethostname().lower()
        return "e2e-" + hashlib.sha256(str(self.data.resolve()).encode()).hexdigest()[:8]
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    extra_args: list[str] = field(default_factory=list)
    proxy_metrics: str = ""  # HOST:PORT of the proxy's Prometheus endpoint (set by start)

    @property
    def admin(self) -> CaddyAdmin:
        """A client of this forge up's Caddy Admin API (the caller closes it)."""
        return CaddyAdmin(self.caddy_admin or f"unix/{self.data.resolve() / 'caddy' / 'admin.sock'}", timeout=2)

    @property
    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)

    def start(self) -> None:
        self.log = self.root / f"forge-up-{int(time.time() * 1000)}.log"
        self.proxy_metrics = f"127.0.0.1:{free_port()}"
        out = self.log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forge", "up", "--data-dir", str(self.data), "--api-listen", self.api.removeprefix("http://"),
             "--http-listen", self.http.removeprefix("http://"),
             *(["--caddy-admin", self.caddy_admin] if self.caddy_admin else []),
             "--metrics-listen", f"127.0.0.1:{free_port()}", "--controllers-metrics-listen", f"127.0.0.1:{free_port()}",
             "--proxy-metrics-listen", self.proxy_metrics,
             *([] if self.default_node_name else ["--node-name", self.node]), *self.extra_args],
            env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        out.close()
        wait_for(lambda: self.proc.poll() is not None or "Forge is up" in self.log.read_text(errors="replace"),
                 120, "forge up to be ready")
        assert self.proc.poll() is None, self.log.read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        from forge.nodeagent.teardown import unmount_release_disks

        unmount_release_disks(self.data / "node")  # forge up does it on exit; a killed one cannot

    def webhook(self, event: str, payload: dict, *, form: bool = False, secret: str | None = WEBHOOK_SECRET,
                delivery: str | None = None, signature: str | None = None) -> httpx.Response:
        return github_delivery(self.api, event, payload, form=form, secret=secret, delivery=delivery,
                               signature=signature)

    def get(self, plural: str, name: str) -> dict:
        with self.client as c:
            r = c.get(f"/api/v1/{plural}/{name}")
            r.raise_for_status()
            return r.json()

    def list(self, plural: str, selector: str | None = None) -> list[dict]:
        with self.client as c:
            r = c.get(f"/api/v1/{plural}", params={"labelSelector": selector} if selector else None)
            r.raise_for_status()
            return r.json()["items"]

    def wait_phase(self, deployment: str, phases: set[str], timeout: float = 90) -> dict:
        def check() -> dict | None:
            try:
                d = self.get("deployments", deployment)
            except httpx.HTTPStatusError:
                return None
            return d if d.get("status", {}).get("phase") in phases else None

        try:
            return wait_for(check, timeout, f"{deployment} to reach {phases}", step=0.2)
        except AssertionError:
            raise AssertionError(f"{deployment} never reached {phases}: {self.get('deployments', deployment).get('status')}\n"
                                 f"events: {[e['spec']['reason'] + ': ' + e['spec']['message'] for e in self.list('events')][-15:]}") from None

    def through_caddy(self, host: str, path: str = "/") -> httpx.Response:
        return httpx.get(f"{self.http}{path}", headers={"Host": host}, timeout=5)

    def serves(self, host: str, text: str) -> bool:
        """Caddy answers 200 for ``host`` with a body starting with ``text``."""
        try:
            r = self.through_caddy(host)
        except httpx.HTTPError:
            return False
        return r.status_code == 200 and r.text.startswith(text)


def github_delivery(api: str, event: str, payload: dict, *, form: bool = False, secret: str | None = WEBHOOK_SECRET,
                    delivery: str | None = None, signature: str | None = None) -> httpx.Response:
    """POST a GitHub webhook delivery to the API at ``api``, signed with ``secret`` (or ``signature``)."""
    raw = json.dumps(payload).encode()
    ctype = "application/json"
    if form:
        from urllib.parse import urlencode

        raw, ctype = urlencode({"payload": raw.decode()}).encode(), "application/x-www-form-urlencoded"
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
               "Content-Type": ctype, "User-Agent": "GitHub-Hookshot/e2e"}
    if signature is not None:
        headers["X-Hub-Signature-256"] = signature
    elif secret is not None:
        headers["X-Hub-Signature-256"] = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    return httpx.post(f"{api}/api/v1/webhook/github", content=raw, headers=headers, timeout=10)


def new_forge(root: Path, **env_extra: str) -> Forge:
    """A ``forge up`` (not started) with its own data dir under ``root``, free loopback ports, the
    e2e admin token and webhook secret, and git remotes under ``root/remotes``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env.update(FORGE_ADMIN_TOKEN=ADMIN_TOKEN, FORGE_GITHUB_WEBHOOK_SECRET=WEBHOOK_SECRET,
               FORGE_GIT_URL_TEMPLATE=f"file://{root}/remotes/{{full_name}}.git", PYTHONUNBUFFERED="1", **env_extra)
    return Forge(root=root, data=root / "data", api=f"http://127.0.0.1:{free_port()}",
                 http=f"http://127.0.0.1:{free_port()}", env=env)


@contextlib.contextmanager
def running_forge(prefix: str, **env_extra: str) -> Iterator[Forge]:
    """A started ``forge up`` in its own temp root (not under pytest's basetemp: pytest resets
    /tmp/pytest-of-USER to 0700 when a session starts, locking app uids out of their releases),
    stopped and removed on exit."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    f = new_forge(root, **env_extra)
    try:
        f.start()
        yield f
    finally:
        f.stop()
        if os.environ.get("FORGE_E2E_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def https_get(port: int, sni: str, cafile: Path) -> tuple[str, str]:
    """(status line, body) of GET / over TLS to 127.0.0.1:port with SNI ``sni``, verified against ``cafile``."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=sni) as tls:
        tls.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.splitlines()[0], body
