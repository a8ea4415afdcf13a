"""Zero-config deploys, cold vs warm build cache: push → Live for Flask (requirements.txt +
Procfile), Django (pyproject.toml + uv.lock) and Express (package.json + package-lock.json).

Each app gets a fresh ``forge up`` (so a fresh, empty build cache), then: push v1 (cold: every
package comes from PyPI/npm) and push v2 with the same dependency files (warm: the App's cache
holds the installed set, no download). Printed per app: push → Live and the build alone (first
to last build-log line), cold and warm, and warm/cold. Goal: warm ≤ 20 % of cold.

The repositories carry a forge.yaml that leaves ``build`` out (so the build is still detected)
and sets ``health: {interval: 1s, min_ready: 0s}`` (and Flask's worker ``min_running: 1s``):
the defaults (10 s of readiness before a release takes traffic, 10 s of a worker running) are
fixed safety waits that would otherwise dwarf the build. Without them, add ~10 s to every push
→ Live figure.

Run as root, with caddy and npm, the registries reachable:
    .venv/bin/python bench/zeroconf_cache.py [--apps flask,django,express]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.e2e.harness import Forge, Remote, push_payload, running_forge  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "zeroconf"
HEALTH_ONLY = "health: {interval: 1s, timeout: 1s, min_ready: 0s}\n"
# Flask's Procfile worker would count as ready after the default min_running (10 s): the same
# command with min_running 1s (forge.yaml's process type wins over the Procfile's line).
FAST_WORKER = (
    "processes:\n  worker:\n    command: 'export PATH=\"$PWD/.venv/bin:$PATH\"; python worker.py'\n"
    "    min_running: 1s\n"
)


def files_of(name: str) -> dict[str, str]:
    root = FIXTURES / name
    out = {str(p.relative_to(root)): p.read_text() for p in sorted(root.rglob("*")) if p.is_file()}
    return {**out, "forge.yaml": HEALTH_ONLY + (FAST_WORKER if "Procfile" in out else "")}


def push_to_live(forge: Forge, remote: Remote, app: str, files: dict[str, str], n: int) -> tuple[float, float]:
    commit = remote.commit({**files, "version.txt": f"v{n}\n"}, f"v{n}")
    t0 = time.monotonic()
    r = forge.webhook("push", push_payload(remote.full_name, "refs/heads/main", commit))
    assert r.status_code == 202, r.text
    deadline = t0 + 600
    while time.monotonic() < deadline:
        phase = forge.get("deployments", f"{app}-{n}").get("status", {}).get("phase")
        if phase in ("Live", "Failed"):
            break
        time.sleep(0.1)
    took = time.monotonic() - t0
    assert phase == "Live", forge.get("deployments", f"{app}-{n}")["status"]
    return took, build_seconds(forge, app, f"{app}-{n}")


def build_seconds(forge: Forge, app: str, deployment: str) -> float:
    with forge.client as c:
        for _ in range(100):
            r = c.get(f"/api/v1/apps/{app}/logs", params={"deployment": deployment, "source": "build"})
            lines = [json.loads(ln) for ln in r.text.splitlines() if ln.strip()]
            if any("build succeeded" in ln["line"] for ln in lines):
                times = [datetime.fromisoformat(ln["time"].replace("Z", "+00:00")).timestamp() for ln in lines]
                return max(times) - min(times)
            time.sleep(0.3)
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--apps", default="flask,django,express")
    args = ap.parse_args()
    print(f"{'app':8} {'cold live':>10} {'warm live':>10} {'ratio':>6}   {'cold build':>10} {'warm build':>10} {'ratio':>6}")
    for name in args.apps.split(","):
        app = f"zc-{name}"
        with running_forge(f"forge-bench-zc-{name}-") as forge:
            remote = Remote(forge.root, f"acme/{app}")
            with forge.client as c:
                body = {"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": app},
                        "spec": {"repo": remote.full_name, "branches": ["main"]}}
                assert c.post("/api/v1/apps", json=body).status_code == 201
            files = files_of(name)
            cold, cold_build = push_to_live(forge, remote, app, files, 1)
            warm, warm_build = push_to_live(forge, remote, app, files, 2)
        print(f"{name:8} {cold:9.1f}s {warm:9.1f}s {warm / cold:6.0%}   "
              f"{cold_build:9.1f}s {warm_build:9.1f}s {warm_build / cold_build:6.0%}", flush=True)


if __name__ == "__main__":
    main()
