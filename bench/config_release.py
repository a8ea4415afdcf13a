"""Build once, reuse everywhere: push → Live of a config-only release and of a rollback, as a ratio
to the first build of the same app in the same run; and scale 1 → 3 web Instances in place (time
until all are ready, against one Instance's start) with a client sending requests throughout.

Run: .venv/bin/python bench/config_release.py [--build-seconds 8]
The app's build makes a virtualenv and then sleeps ``--build-seconds`` standing in for a package
download (no network here). health.min_ready is 1 s, so a reused build's release takes about
min_ready plus the start. Prints each figure and the ratios; goal ≤ 0.1 for a Django-sized build.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import APP_PY, Forge, Remote, new_forge, push_payload  # noqa: E402

MANIFEST = """name: bench
runtime: python3.11
build:
  commands: ["python3 -m venv .venv", "sleep {sleep}", "test -f app.py"]
run:
  command: exec python3 app.py
resources: {{memory: 128M, cpu: 0.5}}
health: {{path: /health, interval: 1s, timeout: 1s, retries: 2, start_period: 5s, min_ready: 1s}}
"""


def release(remote: Remote, version: str, sleep: float) -> str:
    files = {"app.py": APP_PY, "version.txt": version + "\n", "forge.yaml": MANIFEST.format(sleep=sleep)}
    return remote.commit(files, f"release {version}")


def newest(forge: Forge) -> dict:
    items = forge.list("deployments", "forge.dev/app=bench")
    return max(items, key=lambda d: int(d["metadata"]["name"].rsplit("-", 1)[1]))


def until(check, timeout: float, what: str) -> float:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.05)
    raise TimeoutError(what)


def live_after(forge: Forge, name_after: int, t0: float) -> float:
    """Seconds from ``t0`` until a release numbered above ``name_after`` is Live."""

    def done() -> bool:
        d = newest(forge)
        n = int(d["metadata"]["name"].rsplit("-", 1)[1])
        if n > name_after and d["status"].get("phase") == "Failed":
            raise RuntimeError(f"{d['metadata']['name']} failed: {d['status']}")
        return n > name_after and d["status"].get("phase") == "Live"

    return until(done, 300, "a release to go live") - t0


def number(forge: Forge) -> int:
    return int(newest(forge)["metadata"]["name"].rsplit("-", 1)[1])


def ready_web(forge: Forge) -> list[dict]:
    return [i for i in forge.list("instances", "forge.dev/app=bench")
            if i["spec"]["desired"] == "Running" and not i["spec"].get("oneshot") and i["status"].get("ready")
            and not i["spec"].get("unroutedTime")]


class Hammer:
    """A client sending requests through Caddy back to back; counts answers that are not 200."""

    def __init__(self, forge: Forge) -> None:
        self.forge, self.ok, self.failed, self.stop = forge, 0, 0, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=5) as c:
            while not self.stop.is_set():
                try:
                    r = c.get(f"{self.forge.http}/", headers={"Host": "bench.localhost"})
                    if r.status_code == 200:
                        self.ok += 1
                    else:
                        self.failed += 1
                except httpx.HTTPError:
                    self.failed += 1

    def __enter__(self) -> Hammer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--build-seconds", type=float, default=8.0)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="forge-bench-cfg-"))
    forge = new_forge(root, FORGE_MODE="dev")
    remote = Remote(root, "acme/bench")
    forge.start()
    try:
        with forge.client as c:
            c.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": "bench"},
                                         "spec": {"repo": "acme/bench"}}).raise_for_status()
        v1 = release(remote, "v1", args.build_seconds)
        t0 = time.monotonic()
        forge.webhook("push", push_payload("acme/bench", "refs/heads/main", v1)).raise_for_status()
        first = live_after(forge, 0, t0)
        print(f"first build, push -> Live: {first:.2f}s", flush=True)

        n = number(forge)
        t0 = time.monotonic()
        with forge.client as c:
            c.patch("/api/v1/apps/bench", json={"spec": {"env": {"GREETING": "hi"}}}).raise_for_status()
        config = live_after(forge, n, t0)
        print(f"config-only release (env set) -> Live: {config:.2f}s  ratio {config / first:.3f}", flush=True)

        v2 = release(remote, "v2", args.build_seconds)
        n = number(forge)
        forge.webhook("push", push_payload("acme/bench", "refs/heads/main", v2)).raise_for_status()
        live_after(forge, n, time.monotonic())
        n = number(forge)
        t0 = time.monotonic()
        with forge.client as c:
            c.post("/api/v1/apps/bench/rollback", json={}).raise_for_status()
        rollback = live_after(forge, n, t0)
        print(f"rollback -> Live: {rollback:.2f}s  ratio {rollback / first:.3f}", flush=True)

        until(lambda: len(ready_web(forge)) == 1, 60, "one ready web Instance")
        time.sleep(2)
        with Hammer(forge) as h:
            time.sleep(1)
            t0 = time.monotonic()
            with forge.client as c:
                c.patch("/api/v1/apps/bench", json={"spec": {"replicas": 3}}).raise_for_status()
            up = until(lambda: len(ready_web(forge)) == 3, 120, "three ready web Instances") - t0
            starts = []
            for i in forge.list("instances", "forge.dev/app=bench"):
                st = i["status"]
                if i["spec"]["desired"] == "Running" and st.get("readyTime") and st.get("startedTime"):
                    from forge.clock import parse_iso

                    starts.append(parse_iso(st["readyTime"]) - parse_iso(st["startedTime"]))
            time.sleep(1)
            t1 = time.monotonic()
            with forge.client as c:
                c.patch("/api/v1/apps/bench", json={"spec": {"replicas": 1}}).raise_for_status()
            until(lambda: len([i for i in forge.list("instances", "forge.dev/app=bench")
                               if i["spec"]["desired"] == "Running" and not i["spec"].get("oneshot")]) == 1,
                  120, "back to one Instance")
            down = time.monotonic() - t1
            time.sleep(1)
        one = max(starts) if starts else float("nan")
        print(f"scale 1 -> 3: all ready in {up:.2f}s (one Instance's start -> ready: {one:.2f}s)", flush=True)
        print(f"scale 3 -> 1: surplus stopped in {down:.2f}s (drain included)", flush=True)
        print(f"requests during both scales: {h.ok} ok, {h.failed} failed", flush=True)
        print(f"\nratios to the first build ({first:.2f}s): config {config / first:.3f}, rollback {rollback / first:.3f}")
    finally:
        forge.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
