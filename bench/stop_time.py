"""How long Ctrl-C on ``forge up`` takes with a live app: with an open watch stream (what the
dashboard and ``forge events -w`` hold) against the same stack with none, in the same run.

Run: .venv/bin/python bench/stop_time.py [--rounds 3]. Target: under 2 s with live apps.
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

from tests.e2e.harness import ADMIN_TOKEN, Remote, new_forge, push_payload


def once(with_watch: bool) -> float:
    root = Path(tempfile.mkdtemp(prefix="forge-bench-stop-"))
    f = new_forge(root)
    watcher = None
    try:
        f.start()
        with f.client as c:
            c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "s"},
                                         "spec": {"repo": "acme/s"}}).raise_for_status()
        remote = Remote(root, "acme/s")
        f.webhook("push", push_payload("acme/s", "refs/heads/main", remote.app_release("s", "v1")))
        f.wait_phase("s-1", {"Live"})
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
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    base = [once(False) for _ in range(args.rounds)]
    watched = [once(True) for _ in range(args.rounds)]
    b, w = statistics.median(base), statistics.median(watched)
    print(f"forge up stop, live app, no stream open:   median {b:.2f}s of {args.rounds}")
    print(f"forge up stop, live app, a watch open:     median {w:.2f}s of {args.rounds}  (target < 2 s)")
    print(f"ratio with/without the open watch: {w / b:.2f}x")


if __name__ == "__main__":
    main()
