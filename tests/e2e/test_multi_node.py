"""Many machines, for real: one control-plane host and three worker hosts (network namespaces on a
bridge of the test's own, ``tests/e2e/multihost.py``), each worker a ``forge agent`` with its own
data dir and node name reaching the API over that network. An app with 3 replicas lands on the
3 workers and Caddy (on the control-plane host) serves it from all of them through the kernel's
service map and the routes to each worker's instance subnet.

Then, with a client looping through Caddy from outside: ``forge nodes drain`` moves the app off a
worker with zero failed requests; a worker dies (SIGKILL of its agent and apps, cable cut) and
service is restored from the replacements — the test prints the gap; the worker comes back
and serves nothing it no longer owns.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ADMIN_TOKEN, Remote, github_delivery, push_payload, wait_for
from tests.e2e.multihost import Cluster

APP = r'''
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ME = os.environ["FORGE_INSTANCE"]


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{ME}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''

MANIFEST = """name: spread
runtime: python3.11
build:
  commands: ["test -f app.py"]
run:
  command: exec python3 app.py
  stop_timeout: 5s
resources: {memory: 64M, cpu: 0.1}
health: {path: /, interval: 1s, timeout: 1s, retries: 2, start_period: 5s, min_ready: 1s}
"""

HOST = "spread.localhost"

pytestmark = pytest.mark.skipif(shutil.which("caddy") is None or os.geteuid() != 0 or shutil.which("nft") is None,
                                reason="needs root, nftables and caddy (make setup)")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="forge-hosts-"))
    c = Cluster(root, workers=3)
    try:
        c.build()
        # w3 picks its own subnet, and its first pick is w1's (as two machines' independent
        # choices can be): the API refuses it and the agent takes another before running anything.
        c.hosts["w3"].subnet = ""
        c.hosts["w3"].data.mkdir(parents=True)
        (c.hosts["w3"].data / "network.json").write_text(json.dumps({"subnet": c.hosts["w1"].subnet}))
        c.start_control_plane()
        for w in ("w1", "w2", "w3"):
            c.start_agent(w)
        remote = Remote(root, "acme/spread")
        sha = remote.commit({"app.py": APP, "forge.yaml": MANIFEST}, "v1")
        with c.client as api:
            r = api.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "spread"},
                                               "spec": {"repo": "acme/spread", "branches": ["main"],
                                                        "replicas": 3}})
            assert r.status_code == 201, r.text
        deliver(c, push_payload("acme/spread", "refs/heads/main", sha))
        wait_for(lambda: live(c), 120, "spread to go live on the workers")
        yield c
    except BaseException:
        print(c.logs())
        with contextlib.suppress(httpx.HTTPError), c.client as api:
            for e in api.get("/api/v1/events").json()["items"][-30:]:
                print("event", e["spec"]["reason"], e["spec"]["message"][:300])
        raise
    finally:
        c.stop()
        if os.environ.get("FORGE_E2E_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def deliver(c: Cluster, payload: dict) -> None:
    r = github_delivery(c.api, "push", payload)
    assert r.status_code in (200, 202), r.text


def instances(c: Cluster) -> list[dict]:
    with c.client as api:
        r = api.get("/api/v1/instances", params={"labelSelector": "forge.dev/app=spread"})
        r.raise_for_status()
        return r.json()["items"]


def serving(c: Cluster) -> dict[str, str]:
    """Running, ready Instances meant to run: name → node."""
    return {i["metadata"]["name"]: i["spec"]["node"] for i in instances(c)
            if i["spec"].get("desired") == "Running" and i["status"].get("phase") == "Running" and i["status"].get("ready")}


def live(c: Cluster) -> bool:
    with c.client as api:
        app = api.get("/api/v1/apps/spread").json()
    return bool(app.get("status", {}).get("liveDeployment")) and len(serving(c)) == 3


def ready(c: Cluster, worker: str, type_: str = "Ready") -> tuple[str, str]:
    """A condition of a worker's Node (Ready; NodeLost: the nodes controller's verdict): (status, reason)."""
    with c.client as api:
        node = api.get(f"/api/v1/nodes/{c.node(worker)}").json()
    cond = next((x for x in node["status"].get("conditions", []) if x["type"] == type_), {})
    return cond.get("status", ""), cond.get("reason", "")


def get(c: Cluster, client: httpx.Client) -> str:
    r = client.get(f"{c.http}/", headers={"Host": HOST})
    r.raise_for_status()
    return r.text.strip()


class Looper(threading.Thread):
    """GET / through Caddy every 20 ms, a new connection each time: (time, instance or error)."""

    def __init__(self, c: Cluster) -> None:
        super().__init__(daemon=True)
        self.c = c
        self.stop = threading.Event()
        self.results: list[tuple[float, str | None, str]] = []  # (monotonic, instance, error)

    def run(self) -> None:
        for _ in range(100_000):  # bounded; stops when told
            if self.stop.is_set():
                return
            t = time.monotonic()
            try:
                with httpx.Client(timeout=5) as client:
                    self.results.append((t, get(self.c, client), ""))
            except httpx.HTTPError as exc:
                self.results.append((t, None, f"{type(exc).__name__}: {exc}"))
            time.sleep(0.02)

    def failures(self) -> list[tuple[float, str | None, str]]:
        return [r for r in self.results if r[1] is None]


def seen_instances(c: Cluster, n: int = 60) -> set[str]:
    with httpx.Client(timeout=5) as client:
        return {get(c, client) for _ in range(n)}


def cli(c: Cluster, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env.update(FORGE_URL=c.api, FORGE_ADMIN_TOKEN=ADMIN_TOKEN, FORGE_DATA_DIR=str(c.root / "no-cli-data"))
    r = subprocess.run([sys.executable, "-m", "forge", *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in r.stderr, r.stderr
    return r


def test_three_replicas_on_three_workers_served_through_caddy(cluster: Cluster) -> None:
    c = cluster
    placed = serving(c)
    assert sorted(placed.values()) == sorted(c.node(w) for w in ("w1", "w2", "w3")), placed
    # Caddy on the control-plane host reaches every one of them (each on another machine).
    assert wait_for(lambda: seen_instances(c) == set(placed), 20, "requests to reach all three workers")
    with c.client as api:
        nodes = {n["metadata"]["name"]: n for n in api.get("/api/v1/nodes").json()["items"]}
    subnets = {w: nodes[c.node(w)]["status"]["instanceSubnet"] for w in ("w1", "w2", "w3")}
    assert subnets["w1"] == c.hosts["w1"].subnet and subnets["w2"] == c.hosts["w2"].subnet
    assert len(set(subnets.values())) == 3, subnets
    with c.client as api:
        reasons = {e["spec"]["reason"] for e in api.get("/api/v1/events").json()["items"]}
    assert "NodeRouteFailed" not in reasons
    out = cli(c, "nodes")
    assert out.returncode == 0 and all(c.node(w) in out.stdout for w in ("w1", "w2", "w3")), out.stdout + out.stderr


def test_drain_moves_instances_with_zero_failed_requests(cluster: Cluster) -> None:
    c = cluster
    node = c.node("w3")
    before = serving(c)
    on_w3 = [name for name, n in before.items() if n == node]
    assert on_w3, before
    loop = Looper(c)
    loop.start()
    try:
        time.sleep(1.0)
        r = cli(c, "nodes", "drain", node, "--timeout", "120")
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: len(serving(c)) == 3 and node not in serving(c).values(), 60, "the app to run off w3")
        time.sleep(2.0)
    finally:
        loop.stop.set()
        loop.join(timeout=10)
    after = serving(c)
    print(f"\ndrain: {len(loop.results)} requests, {len(loop.failures())} failed; "
          f"moved {on_w3} -> {sorted(set(after) - set(before))}")
    assert loop.results and not loop.failures(), loop.failures()[:5]
    assert set(after.values()) <= {c.node("w1"), c.node("w2")}
    assert c.running_in("w3") == [], "a drained node still runs processes of the app"
    r = cli(c, "nodes", "uncordon", node)
    assert r.returncode == 0, r.stdout + r.stderr


def test_worker_dies_service_restored_and_it_comes_back_without_double_serving(cluster: Cluster) -> None:
    c = cluster
    victim = c.node("w1")
    before = serving(c)
    doomed = {name for name, n in before.items() if n == victim}
    assert doomed, before
    loop = Looper(c)
    loop.start()
    try:
        time.sleep(2.0)
        killed_at = time.monotonic()
        c.kill("w1")
        c.cut("w1")
        marks: dict[str, float] = {}

        def settled() -> bool:
            now = serving(c)
            if not set(now) & doomed:
                marks.setdefault("unrouted", time.monotonic() - killed_at)
            return len(now) == 3 and victim not in now.values()

        wait_for(settled, 60, "replacements for w1's Instances to be ready")
        marks["replaced"] = time.monotonic() - killed_at
        time.sleep(3.0)
    finally:
        loop.stop.set()
        loop.join(timeout=10)
    after = [r for r in loop.results if r[0] >= killed_at]
    bad = [r for r in after if r[1] is None or r[1] in doomed]
    restored_at = max((r[0] for r in bad), default=killed_at)
    gap = restored_at - killed_at
    print(f"\nnode loss: {len(after)} requests after the kill, {len(bad)} failed or served by w1; the last of them "
          f"{gap:.1f} s after the kill; w1's Instances out of the store's routing table after "
          f"{marks.get('unrouted', float('nan')):.1f} s, all 3 replacements ready after {marks['replaced']:.1f} s; "
          f"first errors: {[r[2][:80] for r in bad[:3]]}")
    assert after and gap <= 15.0, f"service restored only {gap:.1f} s after the worker died"
    tail = [r for r in after if r[0] > restored_at]
    assert tail and all(r[1] is not None and r[1] not in doomed for r in tail)
    with c.client as api:
        node = api.get(f"/api/v1/nodes/{victim}").json()
        events = api.get("/api/v1/events").json()["items"]
    assert node["status"]["phase"] == "NotReady", node["status"]
    reasons = {e["spec"]["reason"] for e in events if e["spec"].get("involvedObject", {}).get("name") == victim}
    assert "NodeLost" in reasons, reasons

    # The machine comes back: cable in, agent restarted on the same data dir. It reports Ready
    # only after stopping what is no longer its own, and never runs the Lost Instances again.
    c.cut("w1", up=True)
    back = time.time()
    c.start_agent("w1")
    assert c.node_ready_since("w1", back)
    time.sleep(3.0)
    now = serving(c)
    assert len(now) == 3 and not (set(now) & doomed), now
    assert not set(c.running_in("w1")) & doomed, c.running_in("w1")
    assert seen_instances(c) <= set(now)


def test_a_partitioned_worker_stops_what_was_replaced_before_it_renews(cluster: Cluster) -> None:
    """The cable of a live worker is cut (its agent and apps keep running, unseen): its Instances
    are replaced elsewhere. When the cable is back the agent finds its lease lapsed and stops
    them before renewing: the old copies never serve again and never run beside their replacements."""
    c = cluster
    victim = c.node("w2")
    before = serving(c)
    cut_off = {name for name, n in before.items() if n == victim}
    assert cut_off, before
    c.cut("w2")
    try:
        wait_for(lambda: len(serving(c)) == 3 and victim not in serving(c).values(), 60,
                 "replacements for the partitioned worker's Instances")
        assert ready(c, "w2") == ("False", "NodeLost")
        assert set(c.running_in("w2")) >= cut_off, "the cut-off copies run on, unseen (a partition, not a death)"
    finally:
        c.cut("w2", up=True)
    wait_for(lambda: ready(c, "w2", "NodeLost") == ("False", "LeaseRenewed") and ready(c, "w2")[0] == "True",
             60, "w2 to renew its lease again")
    assert not set(c.running_in("w2")) & cut_off, "w2 renewed its lease while still running replaced Instances"
    assert not set(serving(c)) & cut_off
    assert seen_instances(c) <= set(serving(c))
