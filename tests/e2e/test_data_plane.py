"""The data plane, end to end, the way an attacker and a user each meet it.

* From inside an app's process *and* its build: the host's services (a listener on every host
  address, Caddy's admin socket, the API, the metrics ports), another app's Instance and the
  cloud metadata address are all out of reach; a listener outside the machine (a network
  namespace this test makes, standing in for a package index) is reachable; 500 ports bound
  inside one app stop no other app from deploying.
* Zero downtime for everyone: 20 deploys of A (5 failing in different ways) and 10 of B under a
  keep-alive client, a new-connection client and a websocket on B: no failed request, no
  websocket closed before its release was stopped, and not one Caddy config write.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from forge.proxy.caddy import count_admin_writes
from forge.proxy.nft import nft_available
from tests.e2e.harness import MANIFEST, Forge, Remote, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(nft_available() is not None,
                                                  reason=f"apps get their own network only as root with nftables: {nft_available()}")]

PROBE_PY = r'''
import json, os, socket, sys
phase = sys.argv[1]
targets = json.load(open("targets.json"))
out = {}


def attempt(name, host, port):
    if host.startswith("/"):
        s = socket.socket(socket.AF_UNIX)
        addr = host
    else:
        s = socket.socket()
        addr = (host, port)
    s.settimeout(2)
    try:
        s.connect(addr)
        out[name] = "connected"
    except OSError as exc:
        out[name] = type(exc).__name__
    finally:
        s.close()


import threading
threads = [threading.Thread(target=attempt, args=(n, h, p)) for n, (h, p) in targets.items()]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(os.path.join(os.environ["HOME"], f"probe-{phase}.json"), "w") as f:
    json.dump(out, f)
if phase == "run":
    held = []
    for port in range(40000, 40500):  # squat 500 ports in this app's own namespace
        s = socket.socket()
        s.bind(("0.0.0.0", port))
        s.listen()
        held.append(s)
    open(os.path.join(os.environ["HOME"], "squatted"), "w").write(str(len(held)))
    import time
    while True:
        time.sleep(3600)
'''

WS_APP_PY = r'''
import base64, hashlib, os, socket, struct, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = open("version.txt").read().strip()
MODE = open("mode.txt").read().strip() if os.path.exists("mode.txt") else "ok"
if MODE == "crash":
    print("crashing on purpose", flush=True)
    sys.exit(3)


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        code = 500 if (self.path == "/health" and MODE == "unhealthy") else 200
        body = f"{VERSION}\n".encode()
        self.send_response(code)
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
            reply = f"{VERSION}:{data.decode()}".encode()
            sock.sendall(bytes([0x81, len(reply)]) + reply)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''


# --------------------------------------------------------------------------- helpers


def host_addresses() -> list[str]:
    """Every IPv4 address of this host except loopback (where an app might find a host service)."""
    out = subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, text=True, check=True).stdout
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])
            if not a["local"].startswith("127.")]


@pytest.fixture(scope="module")
def outside() -> Iterator[tuple[str, int]]:
    """A 'package index' outside the machine: a listener in a network namespace of its own,
    joined to the host by a veth pair (TEST-NET-2 addresses); its (address, port)."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, peer = f"fgtest-out-{tag}", f"fgto{tag}", f"fgtp{tag}"
    # TEST-NET-2, and a /30 no route on this machine knows (TEST-NET-3 may hold a package proxy).
    routes = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    start = int(tag, 16) % 60
    last_octet = next(((start + i) % 60) * 4 for i in range(60) if f"198.51.100.{((start + i) % 60) * 4}/30" not in routes)
    subnet = f"198.51.100.{last_octet}"
    base = subnet.rsplit(".", 1)[0]
    last = int(subnet.rsplit(".", 1)[1])
    host_ip, out_ip = f"{base}.{last + 1}", f"{base}.{last + 2}"
    cmds = [["ip", "netns", "add", ns], ["ip", "link", "add", host_if, "type", "veth", "peer", "name", peer, "netns", ns],
            ["ip", "addr", "add", f"{host_ip}/30", "dev", host_if], ["ip", "link", "set", host_if, "up"],
            ["ip", "-n", ns, "addr", "add", f"{out_ip}/30", "dev", peer], ["ip", "-n", ns, "link", "set", peer, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"], ["ip", "-n", ns, "route", "add", "default", "via", host_ip]]
    for c in cmds:
        subprocess.run(c, check=True, capture_output=True)
    server = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", "--bind", out_ip, "8080"],
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c",
                                         f"import socket; socket.create_connection(('{out_ip}', 8080), 1)"],
                                        stdin=subprocess.DEVNULL, capture_output=True).returncode == 0,
                 20, "the outside listener")
        yield out_ip, 8080
    finally:
        server.kill()
        server.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    """A listener on every host address (0.0.0.0), standing in for sshd or a database: the test reaches it."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", 0))
    s.listen(64)
    stop = threading.Event()

    def accept() -> None:
        s.settimeout(0.5)
        while not stop.is_set():
            try:
                c, _ = s.accept()
                c.close()
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield int(s.getsockname()[1])
    stop.set()
    t.join(timeout=5)
    s.close()


def release_dir(forge: Forge, app: str, deployment: str) -> Path:
    return forge.data / "node" / "releases" / app / deployment


def live_instance(forge: Forge, deployment: str) -> dict:
    insts = [i for i in forge.list("instances", f"forge.dev/deployment={deployment}")
             if i["spec"]["desired"] == "Running"]
    assert insts, f"no running instance of {deployment}"
    return insts[0]


def metrics_ports(forge: Forge) -> list[int]:
    log = (forge.log.read_text() if forge.log else "")
    ports = []
    for line in log.splitlines():
        if "Metrics:" in line:
            for part in line.replace(",", " ").split():
                if part.startswith("http://127.0.0.1:") and part.endswith("/metrics"):
                    ports.append(int(part.split(":")[2].split("/")[0]))
    return ports


# --------------------------------------------------------------------------- attacker


@pytest.mark.alone  # its probe walks many targets on connect timeouts: over 60 s under parallel workers
def test_app_and_build_reach_nothing_of_the_host_nor_other_apps(forge: Forge, outside: tuple[str, int],
                                                                 host_service: int) -> None:
    """From inside a build and an app process, every platform endpoint and another app's Instance
    fail to connect, while the outside world answers; 500 squatted ports block no other deploy."""
    victim = Remote(forge.root, "acme/victim")
    register(forge, "victim", "acme/victim")
    push(forge, "acme/victim", victim.app_release("victim", "v1"))
    forge.wait_phase("victim-1", {"Live"})
    inst = live_instance(forge, "victim-1")
    api_port = int(forge.api.rsplit(":", 1)[1])
    http_port = int(forge.http.rsplit(":", 1)[1])
    gw = inst["status"]["address"].rsplit(".", 1)[0] + ".1"
    forbidden: dict[str, tuple[str, int]] = {
        "victim-instance": (inst["status"]["address"], inst["status"]["port"]),
        "metadata": ("169.254.169.254", 80),
        "caddy-admin-socket": (str(forge.data.resolve() / "caddy" / "admin.sock"), 0),
        "caddy-admin-tcp-default": (gw, 2019),
    }
    for i, addr in enumerate([gw, "127.0.0.1", *host_addresses()]):
        forbidden[f"host-service-{i}"] = (addr, host_service)
        forbidden[f"api-{i}"] = (addr, api_port)
        forbidden[f"caddy-http-{i}"] = (addr, http_port)
        for j, port in enumerate(metrics_ports(forge)):
            forbidden[f"metrics{j}-{i}"] = (addr, port)
    targets = {**forbidden, "outside": outside}
    # The test itself (on the host) reaches the host service: the probe's failures are the fence.
    socket.create_connection(("127.0.0.1", host_service), 2).close()

    evil = Remote(forge.root, "acme/evil")
    register(forge, "evil", "acme/evil")
    files = {"app.py": WS_APP_PY, "version.txt": "e1\n", "probe.py": PROBE_PY, "targets.json": json.dumps(targets),
             "forge.yaml": MANIFEST.format(name="evil", version="e1", extra="", min_ready="1s").replace(
                 '"test -f app.py"', '"python3 probe.py build"').replace(
                 "exec python3 app.py", "python3 probe.py run & exec python3 app.py")}
    push(forge, "acme/evil", evil.commit(files, "probe everything"))
    dep = forge.wait_phase("evil-1", {"Live", "Failed"})
    assert dep["status"]["phase"] == "Live", dep["status"]
    rel = release_dir(forge, "evil", "evil-1")
    wait_for(lambda: (rel / "probe-run.json").exists() and (rel / "squatted").exists(), 60, "the run probe")
    for phase in ("build", "run"):
        seen = json.loads((rel / f"probe-{phase}.json").read_text())
        reached = sorted(k for k in forbidden if seen.get(k) == "connected")
        assert not reached, f"{phase}: reached {reached} ({ {k: seen[k] for k in reached} })"
        assert seen["outside"] == "connected", f"{phase}: the outside world is unreachable: {seen['outside']}"
    assert (rel / "squatted").read_text() == "500"

    after = Remote(forge.root, "acme/after")
    register(forge, "after", "acme/after")
    push(forge, "acme/after", after.app_release("after", "a1"))
    assert forge.wait_phase("after-1", {"Live", "Failed"})["status"]["phase"] == "Live"
    wait_for(lambda: forge.serves("after.localhost", "a1"), 10, "after.localhost")
    r = forge.through_caddy("victim.localhost")
    assert (r.status_code, r.text.strip()) == (200, "v1"), (forge.get("apps", "victim")["status"],
                                                           live_instance(forge, "victim-1")["status"])


# --------------------------------------------------------------------------- zero downtime


class Client(threading.Thread):
    """GET / in a loop on one host, over one keep-alive connection or a new one each time."""

    def __init__(self, forge: Forge, host: str, keepalive: bool, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.forge, self.host, self.keepalive, self.stop = forge, host, keepalive, stop
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        headers = {"Host": self.host} | ({} if self.keepalive else {"Connection": "close"})
        with httpx.Client(timeout=10) as c:
            for _ in range(200_000):  # bounded; stops when told
                if self.stop.is_set():
                    return
                try:
                    if not self.keepalive:
                        c.close()
                        c = httpx.Client(timeout=10)  # noqa: PLW2901 - a new connection per request
                    r = c.get(f"{self.forge.http}/", headers=headers)
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} HTTP {r.status_code} {r.text[:60]!r}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {type(exc).__name__}: {exc}")
                time.sleep(0.02)


class WebSocket(threading.Thread):
    """Holds a websocket to B through Caddy, exchanging a message every 200 ms. When it closes,
    the release it was talking to must already have been told to stop (closed after its drain);
    then it opens a new one."""

    def __init__(self, forge: Forge, host: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.forge, self.host, self.stop = forge, host, stop
        self.opened = 0
        self.exchanged = 0
        self.dropped: list[str] = []
        self.closed_after_stop = 0

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
        assert head.startswith(b"HTTP/1.1 101"), head[:100]
        want = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest())
        assert want in head
        self.opened += 1
        return s

    def exchange(self, s: socket.socket, n: int) -> str:
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
        return body.decode()

    def run(self) -> None:
        n = 0
        for _ in range(1000):  # bounded number of (re)connections
            if self.stop.is_set():
                return
            try:
                s = self.connect()
            except (OSError, AssertionError) as exc:
                self.dropped.append(f"cannot open: {exc}")
                time.sleep(0.5)
                continue
            version = ""
            try:
                while not self.stop.is_set():
                    n += 1
                    version = self.exchange(s, n).split(":", 1)[0]
                    self.exchanged += 1
                    time.sleep(0.2)
            except OSError as exc:
                if self.release_stopping(version):
                    self.closed_after_stop += 1
                else:
                    self.dropped.append(f"{version}: {exc}")
            finally:
                s.close()

    def release_stopping(self, version: str) -> bool:
        """The Instance serving ``version`` was told to stop: this close is its drain ending."""
        for inst in self.forge.list("instances", "forge.dev/app=wsapp"):
            dep = self.forge.get("deployments", inst["spec"]["deployment"])
            if dep["spec"]["commit"] in COMMITS.get(version, ()) and inst["spec"]["desired"] == "Stopped":
                return True
        return False


COMMITS: dict[str, set[str]] = {}


def ws_release(remote: Remote, version: str, mode: str = "ok", manifest_extra: str = "") -> str:
    files = {"app.py": WS_APP_PY, "version.txt": version + "\n", "mode.txt": mode + "\n",
             "forge.yaml": MANIFEST.format(name=remote.full_name.split("/")[1], version=version, extra=manifest_extra,
                                           min_ready="1s")}
    if mode == "build-fails":
        files["forge.yaml"] = files["forge.yaml"].replace('"test -f app.py"', '"exit 7"')
    if mode == "invalid":
        files["forge.yaml"] += "bogus_field: 1\n"
    sha = remote.commit(files, f"{version} {mode}")
    COMMITS.setdefault(version, set()).add(sha)
    return sha


def deploy_series(forge: Forge, app: str, remote: Remote, plan: list[str], start: int, errors: list[str]) -> None:
    """Push each release of ``plan`` and wait for its end; a failing one must fail, the rest go Live."""
    for i, mode in enumerate(plan):
        n = start + i
        version = f"{app}{n}"
        before = forge.get("apps", app)["status"].get("liveDeployment")
        created = push(forge, remote.full_name, ws_release(remote, version, mode))
        if not created:
            errors.append(f"{version}: push created nothing")
            continue
        dep = forge.wait_phase(created[0], {"Live", "Failed"}, timeout=120)
        want = "Live" if mode == "ok" else "Failed"
        if dep["status"]["phase"] != want:
            errors.append(f"{created[0]} ({mode}) ended {dep['status']['phase']}: {dep['status'].get('message')}")
        if mode != "ok" and forge.get("apps", app)["status"].get("liveDeployment") != before:
            errors.append(f"{created[0]} ({mode}) moved the live release")


def test_twenty_deploys_drop_nothing_and_never_touch_caddy(forge: Forge) -> None:
    """20 deploys of A (5 failing: unhealthy, crash at start, build failure, invalid manifest,
    unhealthy again) and 10 of B, under a keep-alive and a new-connection client per app and a
    websocket on B: 0 failed requests, 0 websockets closed before their release stopped, 0 Caddy writes."""
    a, b = Remote(forge.root, "acme/wsa"), Remote(forge.root, "acme/wsapp")
    register(forge, "wsa", "acme/wsa")
    register(forge, "wsapp", "acme/wsapp")
    push(forge, "acme/wsa", ws_release(a, "wsa0"))
    push(forge, "acme/wsapp", ws_release(b, "wsapp0"))
    forge.wait_phase("wsa-1", {"Live"})
    forge.wait_phase("wsapp-1", {"Live"})
    wait_for(lambda: forge.serves("wsa.localhost", "wsa0") and forge.serves("wsapp.localhost", "wsapp0"), 15,
             "both apps to serve")
    writes_before = count_admin_writes(forge.admin)

    stop = threading.Event()
    clients = [Client(forge, h, ka, stop) for h in ("wsa.localhost", "wsapp.localhost") for ka in (True, False)]
    ws = WebSocket(forge, "wsapp.localhost", stop)
    for t in [*clients, ws]:
        t.start()
    plan_a = ["ok", "unhealthy", "ok", "ok", "crash", "ok", "ok", "build-fails", "ok", "ok",
              "ok", "invalid", "ok", "ok", "ok", "unhealthy", "ok", "ok", "ok", "ok"]
    errors: list[str] = []
    try:
        ta = threading.Thread(target=deploy_series, args=(forge, "wsa", a, plan_a, 1, errors))
        tb = threading.Thread(target=deploy_series, args=(forge, "wsapp", b, ["ok"] * 10, 1, errors))
        ta.start()
        tb.start()
        ta.join(timeout=900)
        tb.join(timeout=900)
        # Through the last drain: the old releases of both apps stop while the clients go on.
        wait_for(lambda: all(i["status"].get("phase") in ("Stopped", "Failed", None, "") or i["spec"]["desired"] == "Running"
                             for i in forge.list("instances")), 60, "old releases to stop")
        time.sleep(1.0)
    finally:
        stop.set()
        for t in [*clients, ws]:
            t.join(timeout=30)
    assert not errors, errors
    if any(c.failures for c in clients):
        for i in forge.list("instances"):
            print(i["metadata"]["name"], i["spec"]["desired"], i["status"].get("phase"), i["status"].get("restarts"),
                  i["status"].get("reason"), i["status"].get("address"), i["status"].get("readyTime"))
        caddy_log = forge.data / "logs" / "caddy.log"
        print("\n".join(ln for ln in caddy_log.read_text().splitlines() if '"error"' in ln)[-3000:])
        for e in forge.list("events")[-60:]:
            print(e["spec"].get("lastTime"), e["spec"]["involvedObject"]["name"], e["spec"]["reason"], e["spec"]["message"][:100])
    for c in clients:
        assert c.ok > 100, f"{c.host} keepalive={c.keepalive}: only {c.ok} requests"
        assert not c.failures, f"{c.host} keepalive={c.keepalive}: {len(c.failures)} of {c.ok + len(c.failures)} failed: {c.failures[:5]}"
    assert ws.exchanged > 50 and not ws.dropped, f"websocket: {ws.dropped[:5]} ({ws.exchanged} messages)"
    assert ws.closed_after_stop >= 1, "the websocket never outlived a switch to its release's stop"
    print(f"requests ok: {[c.ok for c in clients]}; websocket opened {ws.opened}x, {ws.exchanged} messages, "
          f"{ws.closed_after_stop} closed by their release's stop")
    assert count_admin_writes(forge.admin) == writes_before, "a deploy wrote to Caddy's config"
    assert forge.get("apps", "wsa")["status"]["liveDeployment"] and forge.serves("wsapp.localhost", "wsapp10")
