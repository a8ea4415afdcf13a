"""A real Prometheus (Debian's) scraping a live ``forge up`` every second for a minute while the
API serves traffic: how many counter resets did it record? Before multiprocess metrics the API's
2 gunicorn workers each kept their own counters and Prometheus saw 21 resets in 5 minutes.

Run: .venv/bin/python bench/prometheus_resets.py [--seconds 60]. Target: 0 resets.
Prints the resets of every forge_* counter series, and as the baseline in the same run, how
many scrapes answered and how many requests were made (a reset needs both workers to answer).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import ADMIN_TOKEN, WEBHOOK_SECRET, free_port, new_forge


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    if shutil.which("prometheus") is None:
        sys.exit("prometheus is not installed (apt-get install prometheus)")
    root = Path(tempfile.mkdtemp(prefix="forge-bench-prom-"))
    forge = new_forge(root)
    prom_port = free_port()
    prom = None
    try:
        forge.start()
        cfg = root / "prometheus.yml"
        cfg.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms"},
            "scrape_configs": [{"job_name": "forge-api", "static_configs": [
                {"targets": [forge.api.removeprefix("http://")]}]}],
        }))
        prom = subprocess.Popen(["prometheus", f"--config.file={cfg}", f"--storage.tsdb.path={root / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop = threading.Event()
        sent = [0]

        def traffic() -> None:
            body = b'{"zen": "bench", "hook_id": 1}'
            sig = "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()
            for i in range(1_000_000):  # bounded; stops when told
                if stop.is_set():
                    return
                with httpx.Client(timeout=5) as c:  # a new connection each time: either worker answers
                    c.post(f"{forge.api}/api/v1/webhook/github", content=body,
                           headers={"X-GitHub-Event": "ping", "X-GitHub-Delivery": f"b-{i}",
                                    "Content-Type": "application/json", "X-Hub-Signature-256": sig})
                    c.get(f"{forge.api}/api/v1/apps", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                sent[0] += 2
                time.sleep(0.05)

        t = threading.Thread(target=traffic, daemon=True)
        t.start()
        time.sleep(args.seconds)
        stop.set()
        t.join(timeout=10)
        series = []
        for name in ("forge_api_requests_total", "forge_webhook_deliveries_total",
                     "forge_api_request_duration_seconds_count", "forge_deployments_total"):
            q = f"resets({name}{{job=\"forge-api\"}}[{args.seconds + 30}s])"
            r = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query", params={"query": q}, timeout=10).json()
            if r.get("status") != "success":
                sys.exit(f"prometheus query failed: {r}")
            series += [{**s, "metric": {"__name__": name, **s["metric"]}} for s in r["data"]["result"]]
        total = sum(int(float(s["value"][1])) for s in series)
        up = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/query",
                       params={"query": f"count_over_time(up{{job=\"forge-api\"}}[{args.seconds + 30}s])"},
                       timeout=10).json()["data"]["result"]
        scrapes = int(float(up[0]["value"][1])) if up else 0
        print(f"{scrapes} scrapes of the API over {args.seconds}s, {sent[0]} requests made meanwhile")
        print(f"counter series: {len(series)}; counter resets recorded by Prometheus: {total}  (target 0)")
        for s in series:
            if float(s["value"][1]):
                print("  reset:", s["metric"])
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(timeout=10)
        forge.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
