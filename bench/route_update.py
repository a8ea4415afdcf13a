"""Cost of one app's switch on a proxy host, and of a change to the set of hosts, at 10-5,000 apps.

For 10, 1,000 and 5,000 apps (two replicas each), median of ``--repeat`` changes (ms):

- ``kernel``: the raw nftables batch (``ServiceMap.apply``: delete the app's 60 slots, add the
  new ones) in a real table holding every app (needs root);
- ``switch``: what ``forge proxy`` does for one App's change (``ServiceMapReconciler``, key = the
  App): its entry recomputed from the record cache alone, then that batch;
- ``host``: a host added (a new app's first release, a domain) in the host map on disk
  (``HostMap.apply`` over every host: a mkdir and a file) — Caddy's config is not touched;
- ``naive``: one Caddy route per app, change = PATCH ``/id/app-N/handle/0/upstreams`` through
  the Admin API of a real Caddy (Debian's 2.6): the baseline, measured in the same run; every
  such write re-provisions the whole config and closes every websocket of every app;
- ``req``: median latency of a request through Caddy's static config (the per-request host map
  lookup: one ``readdir`` of ``HOSTS/HOST``) with that many hosts on disk, to a loopback echo.

Run: ``.venv/bin/python bench/route_update.py [--repeat 10] [--apps 10,1000,5000]``.
"""

from __future__ import annotations

import argparse
import http.server
import socket
import statistics
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from forge.clock import SystemClock
from forge.config import Config
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
from forge.proxy.caddy import CaddyAdmin, CaddyProcess, base_config, forge_config, hosts_dir
from forge.proxy.hostmap import HostMap
from forge.proxy.nft import nft_available
from forge.proxy.reconcilers import ServiceMapReconciler
from forge.proxy.records import Records
from forge.proxy.servicemap import ServiceMap

CLOCK = SystemClock()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def table(n: int, gen: int = 0) -> dict[str, list[str]]:
    return {f"app{i}.localhost": [f"127.0.0.1:{20000 + i % 9000}", f"127.0.0.2:{20000 + i % 9000}"]
            for i in range(n)}


def naive_config(base: dict[str, Any], routes: dict[str, list[str]]) -> dict[str, Any]:
    per_app = [
        {"@id": f"app-{i}", "match": [{"host": [host]}], "terminal": True,
         "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": d} for d in dials]}]}
        for i, (host, dials) in enumerate(sorted(routes.items()))
    ]
    server = base["apps"]["http"]["servers"]["forge"]
    server["routes"] = per_app + [r for r in server["routes"] if r.get("@id") == "forge-catchall"]
    return base


def median_ms(repeat: int, change: Callable[[int], None]) -> float:
    times = []
    for k in range(repeat):
        start = CLOCK.monotonic()
        change(k)
        times.append((CLOCK.monotonic() - start) * 1000)
    return statistics.median(times)


def measure_naive(admin: CaddyAdmin, base: dict[str, Any], n: int, repeat: int) -> float:
    routes = table(n)
    idx = n // 2
    admin.load(naive_config(base, routes))
    return median_ms(repeat, lambda k: admin.patch_id(
        f"app-{idx}", "/handle/0/upstreams", [{"dial": f"127.0.0.3:{30000 + k}"}, {"dial": f"127.0.0.4:{30000 + k}"}]))


def seed_records(n: int) -> Records:
    records = Records()
    records.replace(Node, [Node(metadata=ObjectMeta(name="n1", resource_version=1), spec=NodeSpec(address="10.0.0.1"))])
    apps, insts = [], []
    for i in range(n):
        apps.append(App(metadata=ObjectMeta(name=f"app{i}", resource_version=1), spec=AppSpec(repo=f"acme/app{i}"),
                        status=AppStatus(live_deployment=f"app{i}-1", service_address=f"198.18.0.1:{10000 + i}")))
        for r in range(2):
            insts.append(Instance(
                metadata=ObjectMeta(name=f"app{i}-1-{r}", resource_version=1),
                spec=InstanceSpec(app=f"app{i}", deployment=f"app{i}-1", node="n1", repo="acme/x", commit="0" * 40),
                status=InstanceStatus(phase="Running", ready=True, port=20000 + r,
                                      address=f"10.213.{i // 250}.{i % 250 + 2 + r}")))
    records.replace(App, apps)
    records.replace(Instance, insts)
    return records


def measure_kernel(n: int, repeat: int, workdir: Path) -> tuple[float, float] | None:
    """Median ms of one app's switch in a kernel map of ``n`` apps: the raw batch, and the proxy's
    whole per-App reconcile; None without root/nftables."""
    if nft_available() is not None:
        return None
    services = ServiceMap(workdir / f"kernel-{n}")
    try:
        services.ensure()
        records = seed_records(n)
        rec = ServiceMapReconciler(records, services)
        rec.reconcile(rec.ALL)  # the first fill is not what is measured
        target = f"app{n // 2}"
        first = records.get(Instance, f"{target}-1-0")
        assert first is not None
        moves = []  # the watch's new versions of the Instance, made before the clock runs
        for k in range(repeat):
            moved = first.copy_deep()
            moved.metadata.resource_version += k + 1
            moved.status.address = f"10.214.{k % 250}.2"
            moved.status.port = 9000 + k
            moves.append(moved)

        def switch(k: int) -> None:
            records.put(moves[k])
            assert rec.reconcile(target) is None

        proxy_ms = median_ms(repeat, switch)
        backends = {p: list(b) for p, b in services.applied.items()}
        port = 10000 + n // 2

        def raw(k: int) -> None:
            backends[port] = [f"10.215.{k % 250}.2:{9000 + k}", f"10.215.{k % 250}.3:{9000 + k}"]
            assert services.apply(backends) == [port]

        return median_ms(repeat, raw), proxy_ms
    finally:
        services.teardown()


def measure_hosts(hostmap: HostMap, n: int, repeat: int) -> float:
    routes = {f"app{i}.localhost": [f"198.18.0.1:{10000 + i}"] for i in range(n)}
    hostmap.apply(routes, verify=True)

    def add(k: int) -> None:
        routes[f"new{k}.localhost"] = [f"198.18.0.1:{40000 + k}"]
        assert hostmap.apply(routes) == [f"new{k}.localhost"]

    return median_ms(repeat, add)


def request_ms(http: str, host: str, repeat: int = 200) -> float:
    with httpx.Client(timeout=10) as c:
        c.get(f"http://{http}/", headers={"Host": host})
        times = []
        for _ in range(repeat):
            start = CLOCK.monotonic()
            r = c.get(f"http://{http}/", headers={"Host": host})
            times.append((CLOCK.monotonic() - start) * 1000)
            assert r.status_code == 200, r.text
    return statistics.median(times)


class _Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        """Quiet."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--apps", default="10,1000,5000")
    args = ap.parse_args(argv)
    listen, admin_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    echo = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="forge-bench-caddy-") as tmp:
        cfg = Config(data_dir=Path(tmp) / "data", http_listen=listen, caddy_admin=admin_addr)
        hostmap = HostMap(hosts_dir(cfg.data_dir))
        proc = CaddyProcess(forge_config(cfg, kernel=False, ask_url="http://127.0.0.1:1/ask"), Path(tmp) / "caddy")
        proc.start()
        admin = CaddyAdmin(admin_addr, timeout=120)
        naive_proc = None
        try:
            print(f"one app's switch and one host added, median of {args.repeat} (ms); a request, median of 200")
            print(f"{'apps':>6} {'kernel':>8} {'switch':>8} {'host':>8} {'naive':>10} {'req':>8} {'naive/switch':>13}")
            for n in (int(x) for x in args.apps.split(",")):
                k = measure_kernel(n, args.repeat, Path(tmp))
                h = measure_hosts(hostmap, n, args.repeat)
                hostmap.apply({**{f"app{i}.localhost": [f"198.18.0.1:{10000 + i}"] for i in range(n)},
                               "echo.localhost": [f"127.0.0.1:{echo.server_address[1]}"]})
                req = request_ms(listen, "echo.localhost")
                # the baseline in a Caddy of its own (the one serving Forge's config is never written)
                naive_admin = f"127.0.0.1:{free_port()}"
                naive_proc = CaddyProcess(base_config(f"127.0.0.1:{free_port()}", naive_admin, "off",
                                                      hosts_dir=str(Path(tmp) / "none")), Path(tmp) / f"naive-{n}")
                naive_proc.start()
                nadmin = CaddyAdmin(naive_admin, timeout=120)
                try:
                    naive = measure_naive(nadmin, base_config("127.0.0.1:1", naive_admin, "off",
                                                              hosts_dir=str(Path(tmp) / "none")), n, args.repeat)
                finally:
                    nadmin.close()
                    naive_proc.stop()
                ks = f"{k[0]:>8.2f} {k[1]:>8.2f}" if k is not None else f"{'n/a':>8} {'n/a':>8}"
                ratio = f"{naive / k[1]:>12.0f}x" if k else f"{'n/a':>13}"
                print(f"{n:>6} {ks} {h:>8.2f} {naive:>10.1f} {req:>8.2f} {ratio}", flush=True)
        finally:
            admin.close()
            proc.stop()
            echo.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
