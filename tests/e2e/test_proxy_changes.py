"""No client notices another app's change: websockets and keep-alive clients of app A stay
connected while 20 changes happen to other apps (create, first release, domain add, domain
remove, delete — each of which used to reload Caddy's config, and Caddy 2.6 closes every
hijacked connection on a reload), and through A's own scale up and down, where only the
connections of the Instances the scale takes away may end, at their drain (on this branch a
replicas change rolls out as a config release, so the scale-up replaces A's Instances too; with
an in-place scale only the scale-down's removed ones would end — the test holds either way: a
socket may end only if its Instance was told to stop, and never one to an Instance that stays).
"""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import threading
import time

import httpx
import pytest

from tests.e2e.harness import MANIFEST, Forge, Remote, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e]

# Replies to each websocket frame with the Instance's name: a client knows whom it talks to.
WS_APP_PY = r'''
import base64, hashlib, os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE = os.environ.get("FORGE_INSTANCE", "?")
VERSION = open("version.txt").read().strip()

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        body = f"{VERSION}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"]
        accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        sock = self.connection
        while True:
            head = sock.recv(2)
            if len(head) < 2:
                return
            n = head[1] & 0x7F
            mask = sock.recv(4)
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(sock.recv(n)))
            reply = f"{INSTANCE}:{data.decode()}".encode()
            sock.sendall(bytes([0x81, len(reply)]) + reply)

    def log_message(self, fmt, *args):
        pass

ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''


def release(remote: Remote, name: str, version: str, app_py: str | None = None) -> str:
    files = {
        "app.py": app_py or WS_APP_PY,
        "version.txt": version + "\n",
        "forge.yaml": MANIFEST.format(name=name, version=version, extra="", min_ready="1s"),
    }
    return remote.commit(files, f"release {version}")


class Socket(threading.Thread):
    """One websocket to A through Caddy, a frame every 100 ms; a close is an error unless its
    Instance was removed (desired Stopped: the scale-down's drain ended it). Reconnects."""

    def __init__(self, forge: Forge, host: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.forge, self.host, self.stop = forge, host, stop
        self.frames = 0
        self.errors: list[str] = []
        self.drained: list[str] = []
        self.instances: set[str] = set()

    def connect(self) -> socket.socket:
        host, port = self.forge.http.removeprefix("http://").rsplit(":", 1)
        s = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /ws HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("closed during the handshake")
            head += chunk
        if not head.startswith(b"HTTP/1.1 101"):
            raise OSError(f"handshake answered {head[:40]!r}")
        want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        if want not in head:
            raise OSError(f"handshake without the right accept key: {head[:200]!r}")
        return s

    @staticmethod
    def exchange(s: socket.socket, n: int) -> str:
        msg = f"m{n}".encode()
        mask = os.urandom(4)
        s.sendall(bytes([0x81, 0x80 | len(msg)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(msg)))
        head = s.recv(2)
        if len(head) < 2:
            raise ConnectionResetError("websocket closed")
        body = b""
        while len(body) < head[1] & 0x7F:
            chunk = s.recv((head[1] & 0x7F) - len(body))
            if not chunk:
                raise ConnectionResetError("websocket closed mid-frame")
            body += chunk
        if head[0] & 0x0F == 0x8:  # a close frame (Caddy 2.6 sends 1001 "going away" on a config load)
            raise ConnectionResetError(f"close frame {int.from_bytes(body[:2], 'big')} from the proxy")
        text = body.decode()
        if not text.endswith(f":m{n}"):
            raise OSError(f"answer {text!r} to frame {n}")
        return text.rsplit(":", 1)[0]

    def run(self) -> None:
        n = 0
        for _ in range(200):  # bounded number of (re)connections
            if self.stop.is_set():
                return
            try:
                s = self.connect()
            except Exception as exc:  # noqa: BLE001 - every way of failing is counted
                self.errors.append(f"cannot open: {exc}")
                time.sleep(0.5)
                continue
            instance = ""
            try:
                while not self.stop.is_set():
                    n += 1
                    instance = self.exchange(s, n)
                    self.instances.add(instance)
                    self.frames += 1
                    time.sleep(0.1)
            except Exception as exc:  # noqa: BLE001 - every way of failing is counted
                if isinstance(exc, OSError) and instance and self.removed(instance):
                    self.drained.append(instance)
                else:
                    self.errors.append(f"{time.strftime('%H:%M:%S')} {instance or '?'}: {exc}")
            finally:
                s.close()

    def removed(self, instance: str) -> bool:
        try:
            return self.forge.get("instances", instance)["spec"]["desired"] == "Stopped"
        except AssertionError:
            return True  # already collected: it was removed
        except httpx.HTTPError:
            return False


class KeepAlive(threading.Thread):
    """Requests to A over one keep-alive connection every 20 ms; counts answers and failures."""

    def __init__(self, forge: Forge, host: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.forge, self.host, self.stop = forge, host, stop
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with httpx.Client(timeout=10) as c:
            for _ in range(100_000):
                if self.stop.is_set():
                    return
                try:
                    r = c.get(f"{self.forge.http}/", headers={"Host": self.host})
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} HTTP {r.status_code} {r.text[:60]!r}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
                time.sleep(0.02)


def set_spec(forge: Forge, name: str, **spec: object) -> None:
    for _ in range(10):
        app = forge.get("apps", name)
        app["spec"].update(spec)
        with forge.client as c:
            r = c.put(f"/api/v1/apps/{name}", json=app)
        if r.status_code == 200:
            return
        assert r.status_code == 409, r.text
    raise AssertionError(f"could not update App {name}")


def ready_instances(forge: Forge, app: str) -> set[str]:
    return {
        i["metadata"]["name"]
        for i in forge.list("instances", f"forge.dev/app={app}")
        if i["spec"]["desired"] == "Running" and i["status"].get("ready")
    }


def settled(forge: Forge, app: str, n: int) -> bool:
    """``n`` ready Instances meant to run, all of the live release, and every other one stopped."""
    live = forge.get("apps", app)["status"].get("liveDeployment")
    insts = forge.list("instances", f"forge.dev/app={app}")
    running = [i for i in insts if i["spec"]["desired"] == "Running"]
    others = [i for i in insts if i["spec"]["desired"] != "Running"]
    return (len(running) == n and all(i["spec"]["deployment"] == live and i["status"].get("ready") for i in running)
            and all(i["status"].get("phase") in ("Stopped", "Failed") for i in others))


def code(forge: Forge, host: str) -> int:
    try:
        return forge.through_caddy(host).status_code
    except httpx.HTTPError:
        return 0


def test_other_apps_changes_and_own_scale_close_nothing(forge: Forge) -> None:
    """4 websockets and a keep-alive client of A through 20 changes to other apps and A's scale
    2 → 3 → 1: no websocket ends but those on the removed Instances, no request fails."""
    a = Remote(forge.root, "acme/wsa")
    register(forge, "wsa", "acme/wsa", replicas=2)
    push(forge, "acme/wsa", release(a, "wsa", "a1"))
    forge.wait_phase("wsa-1", {"Live"})
    wait_for(lambda: len(ready_instances(forge, "wsa")) == 2 and forge.serves("wsa.localhost", "a1"), 30, "A to serve")

    stop = threading.Event()
    sockets = [Socket(forge, "wsa.localhost", stop) for _ in range(4)]
    keepalive = KeepAlive(forge, "wsa.localhost", stop)
    for t in [*sockets, keepalive]:
        t.start()
    changes = 0
    try:
        wait_for(lambda: all(s.frames >= 5 for s in sockets), 20, "every websocket to exchange frames")
        for i in range(4):
            name, domain = f"other{i}", f"other{i}.example.test"
            remote = Remote(forge.root, f"acme/{name}")
            register(forge, name, f"acme/{name}")  # 1: create
            changes += 1
            push(forge, f"acme/{name}", release(remote, name, f"{name}v1"))  # 2: first release
            forge.wait_phase(f"{name}-1", {"Live"})
            wait_for(lambda n=name: forge.serves(f"{n}.localhost", f"{n}v1"), 15, f"{name} to be served")
            changes += 1
            set_spec(forge, name, domains=[domain])  # 3: domain add
            wait_for(lambda d=domain, n=name: forge.serves(d, f"{n}v1"), 15, f"{domain} to be served")
            changes += 1
            set_spec(forge, name, domains=[])  # 4: domain remove
            wait_for(lambda d=domain: code(forge, d) == 404, 15, f"{domain} to be gone")
            changes += 1
            with forge.client as c:  # 5: delete
                assert c.delete(f"/api/v1/apps/{name}").status_code in (200, 202)
            wait_for(lambda n=name: code(forge, f"{n}.localhost") == 404, 30, f"{name} to be gone")
            changes += 1
        time.sleep(1.0)
        before_scale = [s.frames for s in sockets]
        assert not any(s.errors or s.drained for s in sockets), [s.errors for s in sockets]

        # A's own scale, up then down (in place, or as a config release: either way only the
        # connections of the Instances it takes away may end, at their drain)
        set_spec(forge, "wsa", replicas=3)
        wait_for(lambda: settled(forge, "wsa", 3), 120, "A at three Instances")
        set_spec(forge, "wsa", replicas=1)
        wait_for(lambda: settled(forge, "wsa", 1), 120, "A down to one Instance")
        time.sleep(1.5)
        survivors = ready_instances(forge, "wsa")
    finally:
        stop.set()
        for t in [*sockets, keepalive]:
            t.join(timeout=30)
    errors = [e for s in sockets for e in s.errors]
    drained = [d for s in sockets for d in s.drained]
    frames = sum(s.frames for s in sockets)
    print(f"{changes} changes to other apps; websocket frames {frames} (before the scale {sum(before_scale)}), "
          f"errors {len(errors)}, ended by a removed Instance's drain {len(drained)}; "
          f"keep-alive requests {keepalive.ok} ok, {len(keepalive.failures)} failed")
    assert changes == 20
    assert not errors, errors[:10]  # a socket to an Instance that stayed never ended
    assert not set(drained) & survivors, (drained, survivors)
    assert not keepalive.failures, keepalive.failures[:10]
    assert keepalive.ok > 100 and all(n >= 50 for n in before_scale), (keepalive.ok, before_scale)
    assert all(s.frames > n for s, n in zip(sockets, before_scale, strict=True))  # they went on after it

