"""Platform overhead of a deploy: webhook 202 → first 200 through Caddy, against a plain shell
script that clones, builds, starts and gets the first 200 from the same app, in the same run.

Run: .venv/bin/python bench/deploy_overhead.py [--rounds 5]
Prints the medians, the platform overhead (difference) and the ratio. Target: overhead ≤ 0.3 s.
The app's health.min_ready is 0 here: the default 10 s is a safety wait a release spends
ready before it takes traffic, added on purpose on top of what this measures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import Forge, Remote, free_port, new_forge, push_payload

BASELINE_SH = r"""
set -e
rm -rf "$DEST" && git clone -q --depth 1 "$REMOTE" "$DEST" && cd "$DEST"
echo building && test -f app.py
PORT=$PORT exec python3 app.py > "$DEST.log" 2>&1
"""


def first_200(url: str, headers: dict[str, str] | None, deadline: float, want: str) -> float:
    with httpx.Client(timeout=1) as c:
        while time.monotonic() < deadline:
            try:
                r = c.get(url, headers=headers)
                if r.status_code == 200 and r.text.startswith(want):
                    return time.monotonic()
            except httpx.HTTPError:
                pass
            time.sleep(0.005)
    raise TimeoutError(f"no 200 from {url} ({headers}) in time")


def baseline_once(remote: Remote, work: Path, version: str) -> float:
    port = free_port()
    env = {**os.environ, "REMOTE": f"file://{remote.bare}", "DEST": str(work / "baseline"), "PORT": str(port)}
    t0 = time.monotonic()
    proc = subprocess.Popen(["sh", "-c", BASELINE_SH], env=env, start_new_session=True)
    try:
        t1 = first_200(f"http://127.0.0.1:{port}/", None, t0 + 30, version)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return t1 - t0


def platform_once(forge: Forge, remote: Remote, version: str) -> float:
    # min_ready 0s: this measures the pipeline; health.min_ready (default 10 s) is a deliberate
    # wait on top of it, before a new release takes traffic.
    commit = remote.app_release("bench", version, min_ready="0s")
    r = forge.webhook("push", push_payload("acme/bench", "refs/heads/main", commit))
    assert r.status_code == 202, r.text
    t_ack = time.monotonic()
    t1 = first_200(f"{forge.http}/", {"Host": "bench.localhost"}, t_ack + 120, version)
    return t1 - t_ack


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="forge-bench-"))
    forge = new_forge(root)
    remote = Remote(root, "acme/bench")
    forge.start()
    try:
        with forge.client as c:
            c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "bench"},
                                         "spec": {"repo": "acme/bench"}}).raise_for_status()
        platform, baseline = [], []
        for i in range(args.rounds):
            v = f"b{i}"
            platform.append(platform_once(forge, remote, v))
            baseline.append(baseline_once(remote, root, v))
            print(f"round {i}: platform {platform[-1]:.3f}s  baseline {baseline[-1]:.3f}s", flush=True)
    finally:
        forge.stop()
        shutil.rmtree(root, ignore_errors=True)
    p, b = statistics.median(platform), statistics.median(baseline)
    print(f"\nplatform (webhook 202 -> first 200 via Caddy), median of {args.rounds}: {p:.3f}s")
    print(f"baseline (shell: clone, build, start, first 200), median of {args.rounds}: {b:.3f}s")
    print(f"platform overhead: {p - b:.3f}s  (target <= 0.3 s)   ratio platform/baseline: {p / b:.2f}x")


if __name__ == "__main__":
    main()
