"""The control plane at scale: 50 and 5,000 apps on 200 hollow nodes, measured in one run.

Each size runs in its own child process (``--one N``) so CPU and RSS are its own:

- the real API (``forge.api.create_app`` over a SQLite store, a threading WSGI server on a
  loopback port) and the real controllers (``ControllerRuntime`` over ``build_controllers``),
  and the real ``forge proxy`` (``forge.proxy.daemon.Proxy``) watching through that API, whose
  outside effects are fakes: Caddy is an in-memory admin stub and the kernel service map a dict
  (what the proxy *applies* is what is measured);
- 200 **hollow nodes**: in-process agents that speak the real agent protocol over HTTP with
  their own node tokens — register the Node, renew the Lease every 2 s (one PUT), watch their
  Instances with the ``forge.dev/node`` selector and report them Running and ready at an
  address and port, or Stopped — without starting any process;
- N apps seeded straight into the store as already live (App with its service address,
  Deployment with its manifest and health, one Instance bound to a node and Running, and their
  metric marks), as the controllers' own planners leave them, then the controllers start and
  settle.

Printed per size: one change — a deploy of one app (``POST /api/v1/deployments``, a real git
fetch of a local repo by the source controller) — from the write until the proxy applied
the new Instance to the service map, p50 and p99 over ``--deploys``; the control plane's CPU
(% of one core: process CPU minus the hollow nodes' threads) and RSS while idle for
``--idle`` seconds; and the API request rate the 200 idle nodes generate. Then the ratio of
the change's cost at the largest size to the smallest (target ≤ 1.5×).

Run: ``.venv/bin/python bench/scale.py [--apps 50,5000] [--nodes 200] [--deploys 20] [--idle 30]``.
With ``FORGE_BENCH_THREADS=1`` each size also logs (stderr) the busiest threads while idle and the
idle API requests by route. Figures of the last full run: ``bench/RESULTS-scale.md``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forge import errors  # noqa: E402
from forge.clock import SystemClock  # noqa: E402
from forge.config import Config  # noqa: E402
from forge.models import (  # noqa: E402
    LABEL_APP,
    LABEL_DEPLOYMENT,
    LABEL_NODE,
    App,
    Deployment,
    Instance,
    Node,
    set_condition,
)
from forge.nodeagent import node as nodeinfo  # noqa: E402

CLOCK = SystemClock()
ADMIN = "admin-" + uuid.uuid4().hex
MiB = 1 << 20
FORGE_YAML = """runtime: python3.11
build: {commands: []}
run: {command: python3 -m http.server $PORT, port: 8000}
resources: {memory: 64M, cpu: 0.1}
health: {path: /, interval: 10s, timeout: 3s, retries: 3, min_ready: 0s}
"""


# --------------------------------------------------------------------------- fakes of the outside


class FakeServiceMap:
    """The kernel map as a dict: what the proxy applied, and when each dial first appeared."""

    def __init__(self, address: str = "10.255.0.1") -> None:
        self.address, self.table = address, "forge_bench"
        self.backends: dict[int, list[str]] = {}
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()

    def ensure(self) -> bool:
        return False

    def verify(self, backends: dict[int, list[str]]) -> bool:
        self.apply(backends)
        return False

    def apply(self, backends: dict[int, list[str]]) -> list[int]:
        # A dict walk, as forge.proxy.servicemap's own diff: the fake must not cost more than the map.
        have = self.backends
        changed = [p for p, d in backends.items() if have.get(p) != d]
        changed += [p for p in have if p not in backends]
        if changed:
            now = CLOCK.monotonic()
            with self.cond:
                for p in changed:
                    if p in backends:
                        have[p] = list(backends[p])
                        for dial in backends[p]:
                            self.seen.setdefault(dial, now)
                    else:
                        del have[p]
                self.cond.notify_all()
        return changed

    def update(self, entries: dict[int, list[str]]) -> list[int]:
        """One App's ports (the proxy's per-App switch); [] removes a port."""
        now = CLOCK.monotonic()
        with self.cond:
            for p, dials in entries.items():
                if dials:
                    self.backends[p] = list(dials)
                    for dial in dials:
                        self.seen.setdefault(dial, now)
                else:
                    self.backends.pop(p, None)
            self.cond.notify_all()
        return list(entries)

    def wait_dial(self, dial: str, timeout: float) -> float | None:
        deadline = CLOCK.monotonic() + timeout
        with self.cond:
            while dial not in self.seen:
                left = deadline - CLOCK.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.seen[dial]


class FakeCaddy:
    admin_url = "fake://caddy"

    def __init__(self) -> None:
        self.cfg: Any = None

    def get_id(self, *_: Any) -> Any:
        return None

    def config(self) -> Any:
        return self.cfg

    def load(self, cfg: Any) -> None:
        self.cfg = cfg

    def close(self) -> None:
        return


# --------------------------------------------------------------------------- hollow nodes


class Hollow:
    """One simulated node agent: real HTTP, real tokens, no processes."""

    def __init__(self, url: str, name: str, token: str, stop: threading.Event, ports: Any) -> None:
        from forge.client import ForgeClient

        self.name, self.stop, self.ports = name, stop, ports
        self.client = ForgeClient(url, token, timeout=30)
        self.beat = ForgeClient(url, token, timeout=30)
        self.lease: dict[str, Any] | None = None
        self.thread = threading.Thread(target=self.watch, name=f"hollow-{name}", daemon=True)

    def register(self) -> None:
        from forge.models import Isolation

        nodeinfo.register(self.client, self.name, "127.0.0.1", Isolation(), None, CLOCK)

    def renew(self) -> None:
        self.lease = nodeinfo.renew_lease(self.beat, self.name, 6.0, CLOCK, self.lease)

    def watch(self) -> None:
        rv: int | None = None
        while not self.stop.is_set():
            try:
                if rv is None:
                    items, rv = self.client.list("instances", {LABEL_NODE: self.name})
                    for obj in items:
                        self.report(obj)
                for typ, obj in self.client.watch("instances", rv, {LABEL_NODE: self.name}, timeout_seconds=60):
                    rv = int(obj.get("metadata", {}).get("resourceVersion") or rv)
                    if typ in ("ADDED", "MODIFIED"):
                        self.report(obj)
                    if self.stop.is_set():
                        return
            except errors.Gone:
                rv = None
            except errors.ForgeError:
                self.stop.wait(0.5)

    def report(self, obj: dict[str, Any]) -> None:
        spec, st = obj["spec"], obj.get("status") or {}
        if spec.get("node") != self.name:
            return
        if spec.get("desired") == "Running" and st.get("phase") in (None, "", "Pending", "Scheduled"):
            st = {**st, "phase": "Running", "ready": True, "address": "127.0.0.1", "port": next(self.ports),
                  "readyTime": CLOCK.now_iso(), "startedTime": CLOCK.now_iso()}
        elif spec.get("desired") == "Stopped" and st.get("phase") not in ("Stopped", "Failed", "Lost", "Succeeded"):
            st = {**st, "phase": "Stopped", "ready": False}
        else:
            return
        try:
            self.client.replace_status("instances", obj["metadata"]["name"], {**obj, "status": st})
        except (errors.Conflict, errors.NotFound):
            pass  # a newer version comes through the watch


def heartbeats(nodes: list[Hollow], stop: threading.Event, every: float = 2.0) -> None:
    """Renew every node's Lease each ``every`` seconds, spread evenly over the period."""
    i = 0
    nxt = CLOCK.monotonic()
    step = every / max(1, len(nodes))
    while not stop.is_set():
        try:
            nodes[i % len(nodes)].renew()
        except errors.ForgeError:
            pass
        i += 1
        # A beat that came late (the process was busy) is not made up for with a burst: a node
        # renews every ``every`` seconds from its last renewal, as the agent does.
        nxt = max(nxt + step, CLOCK.monotonic() - step)
        stop.wait(max(0.0, nxt - CLOCK.monotonic()))


# --------------------------------------------------------------------------- one size


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: object) -> None:
        return


class _Threading(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 512


def make_repo(root: Path) -> str:
    repo = root / "acme" / "app.git"
    repo.mkdir(parents=True)
    (repo / "forge.yaml").write_text(FORGE_YAML)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(root), "GIT_CONFIG_NOSYSTEM": "1"}
    for args in (["init", "-q", "-b", "main"], ["add", "."],
                 ["-c", "user.email=b@example.com", "-c", "user.name=b", "commit", "-q", "-m", "app"]):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True)
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def seed(store: Any, config: Config, n_apps: int, nodes: list[str], commit: str, service_ip: str) -> None:
    """N live apps written straight to the store as the controllers leave them once settled (the
    router's service address, the health controller's statuses from its own pure functions), so
    that starting the controllers is not itself a burst of N status writes."""
    from forge.controllers.deploystate import app_url
    from forge.controllers.health import app_health, deployment_health
    from forge.controllers.rollback import RollbackSettings, plan_rollback
    from forge.controllers.rollout import RolloutSettings, plan_rollout
    from forge.controllers.tally import deployment_marks, instance_marks
    from forge.manifest import parse_manifest
    from forge.proxy.servicemap import allocate_ports

    manifest = parse_manifest(FORGE_YAML).to_status()
    now = CLOCK.now_iso()
    ports = allocate_ports(sorted(f"app-{i}" for i in range(n_apps)), {})
    marks: list[tuple[str, str, str, float | None]] = []
    for i in range(n_apps):
        name = f"app-{i}"
        node = nodes[i % len(nodes)]
        app = App.model_validate({"metadata": {"name": name, "generation": 1}, "spec": {"repo": "acme/app"},
                                  "status": {"liveDeployment": f"{name}-1", "latestDeployment": f"{name}-1",
                                             "observedGeneration": 1,
                                             "serviceAddress": f"{service_ip}:{ports[name]}"}})
        dep = Deployment.model_validate({
            "metadata": {"name": f"{name}-1", "labels": {LABEL_APP: name}, "generation": 1},
            "spec": {"app": name, "commit": commit, "ref": "refs/heads/main", "repo": "acme/app"},
            "status": {"phase": "Live", "manifest": manifest, "createdTime": now, "liveTime": now,
                       "appGeneration": 1, "observedGeneration": 1}})
        inst = Instance.model_validate({
            "metadata": {"name": f"{name}-1-0", "labels": {LABEL_APP: name, LABEL_DEPLOYMENT: f"{name}-1",
                                                          LABEL_NODE: node}},
            "spec": {"app": name, "deployment": f"{name}-1", "node": node, "repo": "acme/app", "commit": commit,
                     "manifest": manifest, "resources": {"memory": 64 * MiB, "cpu": 0.1}},
            "status": {"phase": "Running", "ready": True, "address": "127.0.0.1", "port": 10000 + i,
                       "readyTime": now}})
        for _ in range(3):  # the controllers' own planners, to their fixpoint
            dep.status = deployment_health(app, dep, [inst], now)
            app.status = app_health(app, [dep], [inst], now)
            ro = plan_rollout(app, [dep], [inst], None, CLOCK.now(), RolloutSettings(),
                              app_url(name, config.domain, config.tls, config.http_listen))
            app.status = ro.app_status or app.status
            dep.status = ro.deployments.get(dep.metadata.name, dep.status)
            rb = plan_rollback(app, [dep], [inst], CLOCK.now(), RollbackSettings())
            dep.status = rb.deployments.get(dep.metadata.name, dep.status)
        for obj in (app, dep, inst):
            created = store.create(obj)
            if isinstance(created, Deployment | Instance):  # what the tally controller would mark
                made = deployment_marks(created) if isinstance(created, Deployment) else instance_marks(created)
                marks += [(m.metric, created.metadata.uid, m.label, m.value) for m in made]
    store.marks.load(marks)


def thread_cpu(native_ids: set[int]) -> float:
    """CPU seconds of the given threads of this process (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for tid in native_ids:
        try:
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / tick


def process_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def say(msg: str) -> None:
    print(f"[{CLOCK.monotonic():.1f}] {msg}", file=sys.stderr, flush=True)


def run_one(n_apps: int, n_nodes: int, deploys: int, idle: float) -> dict[str, Any]:
    import inspect
    import logging

    from prometheus_client import CollectorRegistry

    from forge.api import create_app
    from forge.client import ForgeClient
    from forge.controllers.manager import CONTROLLERS
    from forge.controllers.runtime import ControllerRuntime
    from forge.proxy.daemon import Proxy
    from forge.store.sqlite import SqliteStore

    logging.basicConfig(level=logging.WARNING)
    tmp = Path(tempfile.mkdtemp(prefix="forge-scale-"))
    commit = make_repo(tmp / "remotes")
    key = base64.b64encode(os.urandom(32)).decode()
    config = Config.from_env(data_dir=tmp / "data", env={
        "FORGE_ADMIN_TOKEN": ADMIN, "FORGE_SECRET_KEY": key,
        "FORGE_GIT_URL_TEMPLATE": f"file://{tmp}/remotes/{{full_name}}.git"})
    store = SqliteStore(str(tmp / "forge.db"))
    requests = [0]
    api = create_app(config, store=store, clock=CLOCK)

    by_kind: dict[str, int] = {}

    def counting(environ: Any, start_response: Any) -> Any:
        requests[0] += 1
        what = f"{environ.get('REQUEST_METHOD')} {'/'.join(environ.get('PATH_INFO', '').split('/')[:4])}"
        if "watch=true" in environ.get("QUERY_STRING", ""):
            what += "?watch"
        by_kind[what] = by_kind.get(what, 0) + 1
        return api(environ, start_response)

    server = make_server("127.0.0.1", 0, counting, server_class=_Threading, handler_class=_Quiet)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, daemon=True).start()
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)

    names = [f"node-{i:03d}" for i in range(n_nodes)]
    t0 = CLOCK.monotonic()
    services = FakeServiceMap()
    seed(store, config, n_apps, names, commit, services.address)
    seeded = CLOCK.monotonic() - t0
    say(f"seeded {n_apps} apps in {seeded:.1f}s")

    stop = threading.Event()
    ports = iter(range(30000, 60000))
    port_lock = threading.Lock()

    class Ports:
        def __next__(self) -> int:
            with port_lock:
                return next(ports)

    hollow = []
    for n in names:
        token = admin.post(f"/api/v1/nodes/{n}/token").json()["token"]
        h = Hollow(url, n, token, stop, Ports())
        h.register()
        h.renew()
        hollow.append(h)
    for h in hollow:
        h.thread.start()
    beaters = [threading.Thread(target=heartbeats, args=(hollow[k::4], stop), name=f"hollow-beat-{k}", daemon=True)
               for k in range(4)]
    for b in beaters:
        b.start()
    # Nodes registered after the seed: make them Ready with room (hollow registration wrote capacity
    # from this machine; give each the same generous allocatable).
    for n in names:
        node: Node = store.get("Node", n)  # type: ignore[assignment]
        node.status.allocatable.memory = max(node.status.allocatable.memory, 64 * 1024 * MiB)
        node.status.allocatable.cpu = max(node.status.allocatable.cpu, 64.0)
        set_condition(node.status, "Ready", "True", "AgentReady", "hollow", CLOCK.now_iso())
        store.update_status(node)

    registry = CollectorRegistry()
    controllers = []
    for cls in CONTROLLERS:
        kwargs = {"registry": registry} if "registry" in inspect.signature(cls).parameters else {}
        controllers.append(cls(store, CLOCK, config, **kwargs))
    runtime = ControllerRuntime(store, CLOCK, controllers, registry)
    t0 = CLOCK.monotonic()
    runtime.start()
    # The real proxy, through the API, with Caddy and the kernel map faked (what it applies is measured)
    proxy_client = ForgeClient(url, ADMIN)
    proxy = Proxy(config, proxy_client, caddy=FakeCaddy(), services=services, node_routes=False)  # type: ignore[arg-type]
    proxy.start()
    runtime.wait_idle(timeout=600)
    settled = CLOCK.monotonic() - t0
    say(f"controllers settled in {settled:.1f}s")

    hollow_ids = {t.native_id for t in threading.enumerate() if t.name.startswith("hollow-") and t.native_id}

    # ---- one change, many times: write → routed
    lat = []
    for k in range(deploys):
        app = f"app-{(k * 7919) % n_apps}"
        start = CLOCK.monotonic()
        r = admin.post("/api/v1/deployments", json={"metadata": {"name": f"{app}-{k + 2}", "labels": {LABEL_APP: app}},
                                                    "spec": {"app": app, "commit": commit, "repo": "acme/app",
                                                             "ref": "refs/heads/main"}})
        r.raise_for_status()
        inst_name = f"{app}-{k + 2}-0"
        dial = None
        deadline = start + 30
        while dial is None and CLOCK.monotonic() < deadline:
            try:
                inst: Instance = store.get("Instance", inst_name)  # type: ignore[assignment]
                if inst.status.port:
                    dial = f"{inst.status.address}:{inst.status.port}"
                    break
            except errors.NotFound:
                pass
            CLOCK.sleep(0.005)
        seen = services.wait_dial(dial, max(0.0, deadline - CLOCK.monotonic())) if dial else None
        lat.append((seen - start) if seen is not None else float("inf"))
        say(f"deploy {k}: {app} routed after {lat[-1]:.3f}s")
        runtime.wait_idle(timeout=60)
        CLOCK.sleep(0.3)

    # ---- idle: heartbeats only
    runtime.wait_idle(timeout=120)
    CLOCK.sleep(2.0)
    req0, cpu0, hol0, w0 = requests[0], process_cpu(), thread_cpu(hollow_ids), CLOCK.monotonic()
    kinds0 = dict(by_kind)
    by_thread0 = {t.native_id: (t.name, thread_cpu({t.native_id})) for t in threading.enumerate() if t.native_id}
    CLOCK.sleep(idle)
    if os.environ.get("FORGE_BENCH_THREADS"):
        top = sorted(((thread_cpu({tid}) - c0, name) for tid, (name, c0) in by_thread0.items()), reverse=True)[:12]
        for cpu, name in top:
            say(f"  idle thread {name}: {100 * cpu / idle:.1f}%")
        for what, n in sorted(by_kind.items()):
            if n > kinds0.get(what, 0):
                say(f"  idle requests {what}: {(n - kinds0.get(what, 0)) / idle:.1f}/s")
    req1, cpu1, hol1, w1 = requests[0], process_cpu(), thread_cpu(hollow_ids), CLOCK.monotonic()
    wall = w1 - w0
    out = {
        "apps": n_apps, "nodes": n_nodes, "seed_s": round(seeded, 1), "settle_s": round(settled, 1),
        "latencies": lat,
        "idle_cpu_pct": round(100 * ((cpu1 - cpu0) - (hol1 - hol0)) / wall, 2),
        "hollow_cpu_pct": round(100 * (hol1 - hol0) / wall, 2),
        "rss_mib": round(rss_mib(), 1),
        "idle_req_per_s": round((req1 - req0) / wall, 1),
    }
    stop.set()
    proxy.close()
    proxy_client.close()
    runtime.close()
    server.shutdown()
    server.server_close()
    admin.close()
    store.close()
    subprocess.run(["rm", "-rf", str(tmp)], check=False)
    return out


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--apps", default="50,5000")
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--deploys", type=int, default=20)
    p.add_argument("--idle", type=float, default=30.0)
    p.add_argument("--size-timeout", type=float, default=600.0, help="seconds one size may take")
    p.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.one is not None:
        print(json.dumps(run_one(a.one, a.nodes, a.deploys, a.idle)), flush=True)
        os._exit(0)  # hollow watch threads may sit in a read; the numbers are out
    rows = []
    for n in [int(x) for x in a.apps.split(",")]:
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", str(n), "--nodes", str(a.nodes),
                                   "--deploys", str(a.deploys), "--idle", str(a.idle)],
                                  capture_output=True, text=True, timeout=a.size_timeout)
        except subprocess.TimeoutExpired:
            print(f"{n} apps: did not finish within {a.size_timeout:g}s (the control plane did not keep up)")
            continue
        if proc.returncode != 0 or not proc.stdout.strip():
            print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
            raise SystemExit(f"size {n} failed")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(f"{'apps':>6} {'nodes':>5} {'p50 ms':>8} {'p99 ms':>8} {'idle CPU %':>10} {'RSS MiB':>8} "
          f"{'idle req/s':>10} {'seed s':>7} {'settle s':>8}")
    for r in rows:
        lat = r["latencies"]
        print(f"{r['apps']:>6} {r['nodes']:>5} {1000 * pct(lat, 0.5):>8.0f} {1000 * pct(lat, 0.99):>8.0f} "
              f"{r['idle_cpu_pct']:>10.2f} {r['rss_mib']:>8.0f} {r['idle_req_per_s']:>10.1f} {r['seed_s']:>7.1f} "
              f"{r['settle_s']:>8.1f}")
    if len(rows) > 1 and rows[0]["apps"] != rows[-1]["apps"]:
        base, top = rows[0]["latencies"], rows[-1]["latencies"]
        print(f"change cost at {rows[-1]['apps']} apps vs {rows[0]['apps']}: p50 "
              f"{statistics.median(top) / statistics.median(base):.2f}x, p99 {pct(top, 0.99) / pct(base, 0.99):.2f}x "
              "(target <= 1.5x)")
    print("(idle CPU: the control plane's — API and controllers — as % of one core; the hollow nodes' own "
          f"threads used {', '.join(str(r['hollow_cpu_pct']) for r in rows)}%)")


if __name__ == "__main__":
    main()
