"""Store and API benchmark: gunicorn (2 gthread workers) over SQLite, 8 concurrent clients.

Prints writes/s (creates), GET p50/p99 and GET/s, LIST p50/p99, and watch delivery latency
(write → seen on a watch stream), each with a ratio against a baseline measured in the same
run: the rate of trivial ``/healthz`` GETs through the same server and clients (HTTP + gunicorn
overhead), and the in-process store call rate (SQLite alone). Bounded loops: it stops by itself.

    .venv/bin/python bench/store_api.py [--seconds 5] [--clients 8]
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

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from forge.models import App, AppSpec, ObjectMeta  # noqa: E402
from forge.store.sqlite import SqliteStore  # noqa: E402

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


def start(data: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, "FORGE_ADMIN_TOKEN": TOKEN}
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


def store_baseline(data: Path, seconds: float) -> float:
    store = SqliteStore(str(data / "baseline.db"))
    store.create(App(metadata=ObjectMeta(name="base"), spec=AppSpec(repo="acme/base")))
    n, stop_at = 0, time.monotonic() + seconds
    while time.monotonic() < stop_at and n < 500_000:
        store.get("App", "base")
        n += 1
    store.close()
    return n / seconds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--watch-samples", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="forge-bench-") as tmp:
        data = Path(tmp)
        proc, url = start(data)
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
        base_store = store_baseline(data, min(args.seconds, 3.0))
    ms = 1000.0
    print(f"# forge API bench: gunicorn 2 gthread workers x 8 threads, SQLite, {args.clients} clients, "
          f"{args.seconds:.0f} s per phase")
    print(f"baseline  /healthz GET     {health_rate:9.0f} req/s   (HTTP+gunicorn floor)")
    print(f"baseline  store.get        {base_store:9.0f} op/s    (in-process SQLite, 1 thread)")
    print(f"writes    POST /apps       {write_rate:9.0f} req/s   p50 {pct(wlat, 50) * ms:6.2f} ms  "
          f"p99 {pct(wlat, 99) * ms:6.2f} ms   ratio vs healthz {write_rate / health_rate:.2f}  (target >= 300/s)")
    print(f"get       GET /apps/NAME   {get_rate:9.0f} req/s   p50 {pct(glat, 50) * ms:6.2f} ms  "
          f"p99 {pct(glat, 99) * ms:6.2f} ms   ratio vs healthz {get_rate / health_rate:.2f}  (target >= 1000/s)")
    print(f"list      GET /apps?sel    {list_rate:9.0f} req/s   p50 {pct(llat, 50) * ms:6.2f} ms  "
          f"p99 {pct(llat, 99) * ms:6.2f} ms   ratio vs healthz {list_rate / health_rate:.2f}")
    print(f"watch     write->seen      {len(watch):5d} samples   p50 {pct(watch, 50) * ms:6.2f} ms  "
          f"p99 {pct(watch, 99) * ms:6.2f} ms   mean {statistics.fmean(watch) * ms if watch else float('nan'):.2f} ms"
          f"  (target p99 < 50 ms)")
    print(f"ratio     GET/s vs in-process store.get/s: {get_rate / base_store:.3f}")


if __name__ == "__main__":
    main()
