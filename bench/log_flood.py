"""One app prints 100 MB of log lines in a couple of seconds: does the control plane notice?

Prints the records database's size before and after (target: under 10 MB), the logs database's,
how many lines were dropped on the node, and the API's p99 latency (GET /api/v1/apps) while
the flood is shipped against the same measurement before it, in the same run (target: unchanged).

Run: .venv/bin/python bench/log_flood.py [--requests 200]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import ADMIN_TOKEN, APP_PY, MANIFEST, Forge, Remote, new_forge, push_payload

FLOOD = "yes 0123456789012345678901234567890123456789012345678901234567890123456789 | head -c 100000000; exec python3 app.py"


def size(db: Path) -> float:
    """MB of a SQLite database with its WAL (the pages written but not yet checkpointed)."""
    return sum(p.stat().st_size for p in (db, db.with_name(db.name + "-wal")) if p.exists()) / 1e6


def p99(forge: Forge, n: int) -> float:
    times = []
    with httpx.Client(base_url=forge.api, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10) as c:
        for _ in range(n):
            t = time.perf_counter()
            c.get("/api/v1/apps").raise_for_status()
            times.append(time.perf_counter() - t)
    return statistics.quantiles(times, n=100)[98] * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="forge-bench-flood-"))
    forge = new_forge(root)
    try:
        forge.start()
        records, logs = forge.data / "forge.db", forge.data / "forge-logs.db"
        with forge.client as c:
            c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "flood"},
                                         "spec": {"repo": "acme/flood"}}).raise_for_status()
        before_p99 = p99(forge, args.requests)
        before_size = size(records)
        remote = Remote(root, "acme/flood")
        manifest = MANIFEST.format(name="flood", version="v1", extra="", min_ready="0s").replace(
            "exec python3 app.py", FLOOD)
        sha = remote.commit({"app.py": APP_PY, "version.txt": "v1\n", "forge.yaml": manifest}, "flood")
        forge.webhook("push", push_payload("acme/flood", "refs/heads/main", sha))
        forge.wait_phase("flood-1", {"Live", "Failed"}, timeout=180)
        during_p99 = p99(forge, args.requests)  # the shipper is still working through the flood
        time.sleep(35)  # past one rate-limit window, so the drop marker is shipped
        agent_metrics = next(ln for ln in forge.log.read_text().splitlines() if "Metrics:" in ln) if forge.log else ""
        port = agent_metrics.rsplit("127.0.0.1:", 1)[1].split("/")[0] if "127.0.0.1:" in agent_metrics else ""
        dropped = 0.0
        if port:
            for ln in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
                if ln.startswith("forge_agent_log_lines_dropped_total{"):
                    dropped += float(ln.rsplit(" ", 1)[1])
        print(f"records database (with its WAL): {before_size:.2f} MB before, {size(records):.2f} MB after "
              f"(target < 10 MB); logs database: {size(logs):.2f} MB")
        print(f"lines dropped on the node: {dropped:.0f} (of ~1,400,000 printed)")
        print(f"API p99 (GET /api/v1/apps, {args.requests} requests): before {before_p99:.1f} ms, during the flood "
              f"{during_p99:.1f} ms, ratio {during_p99 / before_p99:.2f}x")
    finally:
        forge.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
