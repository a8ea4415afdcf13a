"""Store and API benchmark: gunicorn (2 gthread workers) over each store backend, 8 clients.

For SQLite and PostgreSQL in turn (PostgreSQL: a throwaway cluster of its own, fsync on, on a
unix socket — ``tests/pgcluster.py``), prints writes/s (creates), GET p50/p99 and GET/s, LIST
p50/p99, and watch delivery latency (write → seen on a watch stream), each with a ratio against
a baseline measured in the same run: the rate of trivial ``/healthz`` GETs through the same
server and clients (HTTP + gunicorn overhead), and the in-process store call rate (the backend
alone). Targets (2-core machine): ≥ 1,000 GET/s, ≥ 300 writes/s, watch p99 < 50 ms. Bounded
loops: it stops by itself.

    .venv/bin/python bench/store_api.py [--seconds 5] [--clients 8] [--backends sqlite,postgresql]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forge.models import App, AppSpec, ObjectMeta  # noqa: E402
from forge.store.factory import open_store  # noqa: E402
from tests.pgcluster import PgCluster  # noqa: E402

TOKEN = "bench-token"
H = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def start(data: Path, store_url: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "FORGE_ADMIN_TOKEN": TOKEN, "FORGE_STORE_URL": store_url}
    proc = subprocess.Popen([sys.executable, "-m", "forge.api.server", "--listen", f"127.0.0.1:{port}",
                             "--data-dir", str(data), "--workers", "2", "--threads", "8"],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start")


def hammer(url: str, clients: int, seconds: float, op: Callable[[httpx.Client, int, int], None],
           max_ops: int = 200_000) -> tuple[int, float, list[float]]:
    """Run ``op`` from ``clients`` threads for ``seconds`` (or ``max_ops`` in total)."""
    lat: list[float] = []
    lock = threading.Lock()
    count = [0]
    stop_at = time.monotonic() + seconds

    def worker(idx: int) -> None:
        mine: list[float] = []
        with httpx.Client(base_url=url, headers=H, timeout=30) as c:
            i = 0
            while time.monotonic() < stop_at and i < max_ops // clients:
                t0 = time.perf_counter()
                op(c, idx, i)
                mine.append(time.perf_counter() - t0)
                i += 1
        with lock:
            lat.extend(mine)
            count[0] += len(mine)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count[0], time.monotonic() - t0, lat


def ok(r: httpx.Response, code: int = 200) -> None:
    if r.status_code != code:
        raise SystemExit(f"{r.request.method} {r.request.url} -> {r.status_code}: {r.text[:200]}")


def watch_latency(url: str, samples: int) -> list[float]:
    """Write one Event at a time and time until a watch stream (other connection) carries it."""
    seen: dict[str, float] = {}
    cond = threading.Condition()
    with httpx.Client(base_url=url, headers=H, timeout=30) as c:
        rv = c.get("/api/v1/events").json()["metadata"]["resourceVersion"]
    ready = threading.Event()

    def reader() -> None:
        with httpx.Client(base_url=url, headers=H, timeout=60) as c, c.stream(
                "GET", "/api/v1/events", params={"watch": "true", "resourceVersion": rv, "timeoutSeconds": 120}) as r:
            for line in r.iter_lines():
                if not line:
                    continue
                ev = json.loads(line)
                if ev["type"] == "BOOKMARK":
                    ready.set()
                    continue
                with cond:
                    seen[ev["object"]["metadata"]["name"]] = time.perf_counter()
                    cond.notify_all()
                    if len(seen) >= samples:
                        return

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    ready.wait(10)
    out = []
    with httpx.Client(base_url=url, headers=H, timeout=30) as c:
        for i in range(samples):
            name = f"lat{i}"
            t0 = time.perf_counter()
            ok(c.post("/api/v1/events", json={"metadata": {"name": name}, "spec": {
                "involvedObject": {"kind": "App", "name": "x"}, "reason": "Bench"}}), 201)
            with cond:
                cond.wait_for(lambda n=name: n in seen, timeout=5)
            if name in seen:
                out.append(seen[name] - t0)
    t.join(5)
    return out


def store_baseline(store_url: str, seconds: float) -> float:
    store = open_store(store_url)
    store.create(App(metadata=ObjectMeta(name="base"), spec=AppSpec(repo="acme/base")))
    n, stop_at = 0, time.monotonic() + seconds
    while time.monotonic() < stop_at and n < 500_000:
        store.get("App", "base")
        n += 1
    store.close()
    return n / seconds


def measure(data: Path, store_url: str, baseline_url: str, args: argparse.Namespace) -> dict[str, object]:
    data.mkdir()
    proc, url = start(data, store_url)
    try:
        with httpx.Client(base_url=url, headers=H) as c:
            for i in range(200):
                ok(c.post("/api/v1/apps", json={"metadata": {"name": f"seed{i}", "labels": {"tier": str(i % 10)}},
                                                "spec": {"repo": f"acme/seed{i}"}}), 201)
        n, el, _ = hammer(url, args.clients, args.seconds, lambda c, k, i: ok(c.get("/healthz")))
        health_rate = n / el
        n, el, wlat = hammer(url, args.clients, args.seconds, lambda c, k, i: ok(c.post("/api/v1/apps", json={
            "metadata": {"name": f"w{k}-{i}"}, "spec": {"repo": "acme/w"}}), 201))
        write_rate = n / el
        # Events: a record write without the App create's host-conflict check (which lists every
        # App, so POST /apps slows as the bench adds thousands of them).
        n, el, elat = hammer(url, args.clients, args.seconds, lambda c, k, i: ok(c.post("/api/v1/events", json={
            "metadata": {"name": f"e{k}-{i}"}, "spec": {"involvedObject": {"kind": "App", "name": "x"},
                                                          "reason": "Bench"}}), 201))
        event_rate = n / el
        n, el, glat = hammer(url, args.clients, args.seconds,
                             lambda c, k, i: ok(c.get(f"/api/v1/apps/seed{(k * 31 + i) % 200}")))
        get_rate = n / el
        n, el, llat = hammer(url, args.clients, args.seconds,
                             lambda c, k, i: ok(c.get("/api/v1/apps", params={"labelSelector": f"tier={i % 10}"})))
        list_rate = n / el
        watch = watch_latency(url, args.watch_samples)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
    base_store = store_baseline(baseline_url, min(args.seconds, 3.0))
    return {"health": health_rate, "write": write_rate, "wlat": wlat, "event": event_rate, "elat": elat, "get": get_rate, "glat": glat,
            "list": list_rate, "llat": llat, "watch": watch, "base_store": base_store}


def report(name: str, r: dict[str, Any], args: argparse.Namespace) -> None:
    ms = 1000.0
    health_rate, base_store = r["health"], r["base_store"]
    wlat, glat, llat, watch = r["wlat"], r["glat"], r["llat"], r["watch"]
    print(f"# forge API bench: {name}, gunicorn 2 gthread workers x 8 threads, {args.clients} clients, "
          f"{args.seconds:.0f} s per phase")
    print(f"baseline  /healthz GET     {health_rate:9.0f} req/s   (HTTP+gunicorn floor)")
    print(f"baseline  store.get        {base_store:9.0f} op/s    (in-process {name}, 1 thread)")
    print(f"writes    POST /apps       {r['write']:9.0f} req/s   p50 {pct(wlat, 50) * ms:6.2f} ms  "
          f"p99 {pct(wlat, 99) * ms:6.2f} ms   ratio vs healthz {r['write'] / health_rate:.2f}  (App host check lists all Apps)")
    elat = r["elat"]
    print(f"writes    POST /events     {r['event']:9.0f} req/s   p50 {pct(elat, 50) * ms:6.2f} ms  "
          f"p99 {pct(elat, 99) * ms:6.2f} ms   ratio vs healthz {r['event'] / health_rate:.2f}  (target >= 300/s)")
    print(f"get       GET /apps/NAME   {r['get']:9.0f} req/s   p50 {pct(glat, 50) * ms:6.2f} ms  "
          f"p99 {pct(glat, 99) * ms:6.2f} ms   ratio vs healthz {r['get'] / health_rate:.2f}  (target >= 1000/s)")
    print(f"list      GET /apps?sel    {r['list']:9.0f} req/s   p50 {pct(llat, 50) * ms:6.2f} ms  "
          f"p99 {pct(llat, 99) * ms:6.2f} ms   ratio vs healthz {r['list'] / health_rate:.2f}")
    print(f"watch     write->seen      {len(watch):5d} samples   p50 {pct(watch, 50) * ms:6.2f} ms  "
          f"p99 {pct(watch, 99) * ms:6.2f} ms   mean {statistics.fmean(watch) * ms if watch else float('nan'):.2f} ms"
          f"  (target p99 < 50 ms)")
    print(f"ratio     GET/s vs in-process store.get/s: {r['get'] / base_store:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--watch-samples", type=int, default=200)
    ap.add_argument("--backends", default="sqlite,postgresql")
    args = ap.parse_args()
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp:
        for name in backends:
            data = Path(tmp) / name
            if name == "sqlite":
                results[name] = measure(data, f"sqlite:///{data / 'forge.db'}", f"sqlite:///{tmp}/baseline.db", args)
            elif name == "postgresql":
                try:
                    cluster = PgCluster.start(fsync=True)
                except RuntimeError as exc:
                    raise SystemExit(f"postgresql: {exc}") from None
                try:
                    db, base_db = cluster.create_database(), cluster.create_database()
                    results[name] = measure(data, cluster.url(db), cluster.url(base_db), args)
                finally:
                    cluster.stop()
            else:
                raise SystemExit(f"unknown backend {name!r} (sqlite, postgresql)")
    for i, (name, r) in enumerate(results.items()):
        if i:
            print()
        report(name, r, args)
    if {"sqlite", "postgresql"} <= results.keys():
        a, b = results["sqlite"], results["postgresql"]
        print(f"\n# postgresql / sqlite: writes {b['write'] / a['write']:.2f}x (apps), {b['event'] / a['event']:.2f}x (events), GET {b['get'] / a['get']:.2f}x, "
              f"LIST {b['list'] / a['list']:.2f}x, watch p99 {pct(b['watch'], 99) / pct(a['watch'], 99):.2f}x")


if __name__ == "__main__":
    main()
