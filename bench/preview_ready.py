"""Pull-request preview: ``pull_request opened`` 202 → the preview's first 200 at APP-pr-N through
Caddy, against a push to the App's own branch (webhook 202 → first 200) in the same run.

A real ``forge up`` (dev mode) on loopback; the app is the e2e test app (stdlib only, no build
commands: the build cache is warm in the sense that nothing is downloaded, and the source
controller's bare repository cache already holds the base history). Each round opens a new pull
request whose head exists only as ``refs/pull/N/head``; health.min_ready is 0 so the figures are
the pipeline, not the deliberate safety wait.

Run: .venv/bin/python bench/preview_ready.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.deploy_overhead import first_200  # noqa: E402
from tests.e2e.harness import MANIFEST, Remote, git, new_forge, push_payload  # noqa: E402
from tests.e2e.test_previews import PREVIEW_APP_PY, pr_event  # noqa: E402


def pr_head(remote: Remote, number: int, version: str) -> str:
    files = {
        "app.py": PREVIEW_APP_PY,
        "version.txt": version + "\n",
        "forge.yaml": MANIFEST.format(name="bench", version=version, extra="", min_ready="0s"),
    }
    for rel, text in files.items():
        (remote.work / rel).write_text(text)
    git("-C", str(remote.work), "add", "-A")
    git(
        "-C",
        str(remote.work),
        "-c",
        "user.name=B",
        "-c",
        "user.email=b@example.com",
        "commit",
        "-q",
        "-m",
        version,
    )
    git("-C", str(remote.work), "push", "-q", "-f", "origin", f"HEAD:refs/pull/{number}/head")
    return git("-C", str(remote.work), "rev-parse", "HEAD").strip()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="forge-bench-pr-"))
    forge = new_forge(root)
    remote = Remote(root, "acme/bench")
    forge.start()
    previews, pushes = [], []
    try:
        with forge.client as c:
            c.post(
                "/api/v1/apps",
                json={
                    "metadata": {"name": "bench"},
                    "spec": {"repo": "acme/bench", "branches": ["main"], "previews": {"enabled": True}},
                },
            ).raise_for_status()
        for i in range(args.rounds):
            commit = remote.app_release("bench", f"main{i}", min_ready="0s")
            r = forge.webhook("push", push_payload("acme/bench", "refs/heads/main", commit))
            assert r.status_code == 202, r.text
            t0 = time.monotonic()
            pushes.append(first_200(f"{forge.http}/", {"Host": "bench.localhost"}, t0 + 120, f"main{i}") - t0)
            sha = pr_head(remote, 100 + i, f"pr{i}")
            payload = pr_event("opened", 100 + i, sha)
            payload["repository"]["full_name"] = "acme/bench"
            payload["pull_request"]["base"]["repo"]["full_name"] = "acme/bench"
            payload["pull_request"]["head"]["repo"]["full_name"] = "acme/bench"
            r = forge.webhook("pull_request", payload)
            assert r.status_code == 202 and r.json()["previews"] == [f"bench-pr-{100 + i}"], r.text
            t0 = time.monotonic()
            host = f"bench-pr-{100 + i}.localhost"
            previews.append(first_200(f"{forge.http}/", {"Host": host}, t0 + 120, f"pr{i}") - t0)
            print(
                f"round {i}: push -> live {pushes[-1]:.3f}s   PR opened -> preview serving {previews[-1]:.3f}s",
                flush=True,
            )
    finally:
        forge.stop()
        shutil.rmtree(root, ignore_errors=True)
    p, b = statistics.median(previews), statistics.median(pushes)
    print(f"\nPR opened (202) -> preview's first 200 via Caddy, median of {args.rounds}: {p:.3f}s")
    print(f"push (202) -> first 200 of the new release, median of {args.rounds}: {b:.3f}s")
    print(f"ratio preview/push: {p / b:.2f}x  (a preview is a new App: its first release, its first route)")


if __name__ == "__main__":
    main()
