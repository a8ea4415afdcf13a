"""Per-app time series: how big the store gets and what a write and a read cost (#25).

Simulates ``--days`` (default 31) of one busy app on a fake clock — every 10 s a request sample
(two releases live for a while each day) and a usage sample per Instance — sent as batches of
five minutes each through the real SQLite series store, with its pruning on write. It prints
the rows kept per resolution, the size of ``forge-metrics.db`` and its growth bound, the mean
time of one batch write, and of the reads behind ``GET /apps/APP/metrics`` for 1 h and 30 d.

    .venv/bin/python bench/series_size.py [--days 31] [--instances 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forge.appmetrics import RequestSample  # noqa: E402
from forge.clock import FakeClock  # noqa: E402
from forge.series import UsageSample, grid  # noqa: E402
from forge.store.sqlite import SqliteStore  # noqa: E402

T0 = 1_800_000_000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=31)
    ap.add_argument("--instances", type=int, default=2)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="forge-bench-series-"))
    clock = FakeClock(T0)
    store = SqliteStore(str(tmp / "forge.db"), clock=clock)
    steps = int(args.days * 86400 // 300)
    write_s = 0.0
    for n in range(steps):
        start = T0 + n * 300
        reqs, use = [], []
        for at in range(start, start + 300, 10):
            for release in ("shop-1", "shop-2") if at % 86400 < 600 else ("shop-2",):
                s = RequestSample("shop", release, at)
                for i in range(40):
                    s.observe(500 if i == 0 else 200, 0.002 * (i % 25))
                reqs.append(s)
            use += [("shop", UsageSample(f"shop-2-{i}", at, 0.2, 150 << 20)) for i in range(args.instances)]
        clock.advance(300)
        t = time.perf_counter()
        store.add_requests("proxy/edge", f"r{n}", reqs)
        store.add_usage("node/n1", f"u{n}", use)
        write_s += time.perf_counter() - t
    store.prune_series()
    now = clock.now()
    reads = {}
    for label, window, step in (("1h", 3600, 10), ("30d", 30 * 86400, 300)):
        g = grid(now, window, step)
        best = float("inf")
        for _ in range(5):  # the best of five: the machine is shared
            t = time.perf_counter()
            store.read_requests("shop", step, g[0], g[-1])
            store.read_app_usage("shop", step, g[0], g[-1])
            best = min(best, time.perf_counter() - t)
        reads[label] = best
    rows = {
        (table, step): len(getattr(store, f"read_{kind}")("shop", step, 0, int(now)))
        for table, kind in (("req_points", "requests"), ("usage_points", "usage"))
        for step in (10, 300)
    }
    store.close()
    db = tmp / "forge-metrics.db"
    size = db.stat().st_size + sum(p.stat().st_size for p in tmp.glob("forge-metrics.db-*"))
    print(f"{args.days:g} simulated days, 1 app, {args.instances} Instances, 10 s request and usage samples")
    for (table, step), count in rows.items():
        print(f"  {table:13s} step {step:3d}s: {count:6d} rows kept")
    print(f"forge-metrics.db (+wal): {size / 2**20:.1f} MiB — bounded: 48 h of 10 s points + 30 d of rollups")
    print(f"one batch write (5 min of samples, both kinds): {write_s / steps * 1000:.2f} ms mean")
    print(
        f"reads for GET /metrics: since=1h {reads['1h'] * 1000:.1f} ms, since=30d {reads['30d'] * 1000:.1f} ms"
    )
    for p in tmp.iterdir():
        os.unlink(p)
    tmp.rmdir()


if __name__ == "__main__":
    main()
