"""How long Ctrl-C on ``forge up`` takes with 10 live Instances.

Three stacks, each measured in the same run: 10 Instances of apps that exit on SIGTERM at once;
the same with a watch stream open (what the dashboard and ``forge events -w`` hold); and 10
Instances of which one app ignores SIGTERM and has ``run.stop_timeout: 3s`` (the longest stop
any app actually needs: everything should be down about 3 s later, not 10 × 3 s or 10 s).

Run: .venv/bin/python bench/stop_time.py [--rounds 1] [--instances 10].
Target: within 2 s of the longest stop_timeout the apps need (so < 2 s, < 2 s, < 5 s).
"""

from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import ADMIN_TOKEN, MANIFEST, Remote, new_forge, push_payload, wait_for

STUBBORN_APP = """\
import os, signal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

signal.signal(signal.SIGTERM, signal.SIG_IGN)  # needs its whole stop_timeout, then SIGKILL


class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")


ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), H).serve_forever()
"""


def _deploy(f, root: Path, name: str, replicas: int, stubborn: bool) -> None:
    with f.client as c:
        c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": name},
                                     "spec": {"repo": f"acme/{name}", "replicas": replicas}}).raise_for_status()
    remote = Remote(root, f"acme/{name}")
    if stubborn:
        manifest = MANIFEST.format(name=name, version="v1", extra="", min_ready="1s").replace(
            "command: exec python3 app.py", "command: exec python3 app.py\n  stop_timeout: 3s")
        sha = remote.commit({"app.py": STUBBORN_APP, "version.txt": "v1\n", "forge.yaml": manifest}, "v1")
    else:
        sha = remote.app_release(name, "v1")
    f.webhook("push", push_payload(f"acme/{name}", "refs/heads/main", sha))


def once(instances: int, with_watch: bool, stubborn: bool) -> float:
    root = Path(tempfile.mkdtemp(prefix="forge-bench-stop-"))
    f = new_forge(root)
    watcher = None
    try:
        f.start()
        apps = [("s", instances - 1 if stubborn else instances, False)]
        if stubborn:
            apps.append(("slow", 1, True))
        for name, n, slow in apps:
            _deploy(f, root, name, n, slow)
        for name, _, _ in apps:
            f.wait_phase(f"{name}-1", {"Live"}, timeout=180)
        running = wait_for(lambda: len([i for i in f.list("instances") if i["status"].get("ready")]) >= instances,
                           60, f"{instances} ready Instances")
        assert running
        if with_watch:
            watcher = subprocess.Popen([sys.executable, "-c", (
                f"import httpx; httpx.get('{f.api}/api/v1/events?watch=true&resourceVersion=0&timeoutSeconds=60', "
                f"headers={{'Authorization': 'Bearer {ADMIN_TOKEN}'}}, timeout=70)")])
            time.sleep(1.0)
        assert f.proc is not None
        t0 = time.monotonic()
        f.proc.send_signal(signal.SIGINT)
        f.proc.wait(120)
        return time.monotonic() - t0
    finally:
        if watcher is not None:
            watcher.kill()
            watcher.wait()
        f.stop()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--instances", type=int, default=10)
    args = ap.parse_args()
    n = args.instances
    cases = [
        (f"{n} Instances, all exit on SIGTERM        ", False, False, 0.0),
        (f"{n} Instances, a watch stream open        ", True, False, 0.0),
        (f"{n} Instances, one needs stop_timeout 3s  ", False, True, 3.0),
    ]
    for label, watch, stubborn, need in cases:
        times = [once(n, watch, stubborn) for _ in range(args.rounds)]
        med = statistics.median(times)
        print(f"forge up Ctrl-C, {label}: median {med:.2f}s of {args.rounds} "
              f"(longest stop_timeout needed {need:g}s; target < {need + 2:g}s)", flush=True)


if __name__ == "__main__":
    main()
