"""Releases you can trust, driven through a real ``forge up``, real git and real processes: one
release per change (scale or env, then a push), pushes ordered by history (a late older push after
a newer one), idempotent pushes (a replayed push of the live commit), builds reused by rollbacks
and scales that leave running Instances alone."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from tests.e2e.harness import Forge, Remote, push_payload, wait_for
from tests.e2e.test_cli_live import cli
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0 or shutil.which("caddy") is None,
                                                  reason="needs root and caddy")]

WORKER = """
import os, time
print("worker up", os.getpid(), flush=True)
while True:
    time.sleep(1)
"""
PROCESSES = "processes:\n  worker: {command: exec python3 worker.py, replicas: 1}\n"


def ok(forge: Forge, *args: str) -> str:
    r = cli(forge, *args)
    assert r.returncode == 0, r
    return r.stdout


def releases(forge: Forge, app: str) -> list[dict]:
    items = forge.list("deployments", f"forge.dev/app={app}")
    return sorted(items, key=lambda d: int(d["metadata"]["name"].rsplit("-", 1)[1]))


def running(forge: Forge, app: str, deployment: str | None = None, process: str = "web") -> list[dict]:
    return [i for i in forge.list("instances", f"forge.dev/app={app}")
            if i["spec"]["desired"] == "Running" and not i["spec"].get("oneshot")
            and (i["spec"].get("process") or "web") == process
            and (deployment is None or i["spec"]["deployment"] == deployment)]


def builds(forge: Forge, app: str) -> int:
    """How many builds ran for ``app`` (the builder logs one line per finished build)."""
    with forge.client as c:
        r = c.get(f"/api/v1/apps/{app}/logs", params={"source": "build"})
        r.raise_for_status()
    return sum(1 for line in r.text.splitlines() if "==> build succeeded" in line)


def live_app(forge: Forge, name: str, extra: str = "") -> tuple[Remote, str]:
    remote = Remote(forge.root, f"acme/{name}")
    sha = remote.commit({"worker.py": WORKER}, "worker") and remote.app_release(name, "v1", extra=extra)
    register(forge, name, f"acme/{name}")
    assert push(forge, f"acme/{name}", sha) == [f"{name}-1"]
    forge.wait_phase(f"{name}-1", {"Live"}, timeout=120)
    return remote, sha


def settle(forge: Forge, app: str, seconds: float = 3.0) -> None:
    """Give the controllers time to make any release they would make (a bounded quiet period)."""
    time.sleep(seconds)
    assert not [d for d in releases(forge, app) if d["status"].get("phase") not in ("Live", "Superseded", "Failed", "Cancelled")]


def converged(forge: Forge, app: str, workers: int) -> list[str]:
    """Wait until nothing is in flight and the live release runs ``workers`` ready workers; the
    release names then. (Plain waits, not ``--wait``: the same test runs against older Forges.)"""

    def check() -> list[str] | None:
        deps = releases(forge, app)
        if any(d["status"].get("phase") not in ("Live", "Superseded", "Failed", "Cancelled") for d in deps):
            return None
        live = forge.get("apps", app)["status"].get("liveDeployment")
        ready = [i for i in running(forge, app, live, "worker") if i["status"].get("phase") == "Running"]
        return [d["metadata"]["name"] for d in deps] if len(ready) == workers else None

    return wait_for(check, 120, f"{app} to run {workers} workers with nothing in flight", step=0.3)


def push_counts(forge: Forge, app: str, remote: Remote, workers: int) -> None:
    """A push now makes exactly one release, and it runs ``workers`` workers from its start."""
    before = converged(forge, app, workers)
    sha2 = remote.app_release(app, "v2", extra=PROCESSES)
    created = push(forge, f"acme/{app}", sha2)
    assert len(created) == 1
    forge.wait_phase(created[0], {"Live"}, timeout=120)
    workers_of_push = {i["metadata"]["name"] for i in forge.list("instances", f"forge.dev/deployment={created[0]}")
                       if (i["spec"].get("process") or "web") == "worker"}
    assert len(workers_of_push) == workers, workers_of_push
    settle(forge, app)
    after = converged(forge, app, workers)
    assert after == [*before, created[0]], after


def test_scale_then_push_makes_one_release_with_the_scaled_workers(forge: Forge) -> None:
    """After scale worker=2, a push makes exactly one release, and it runs 2 workers (no release
    with 1 worker followed by a ConfigChanged one)."""
    remote, _ = live_app(forge, "rel-scale", extra=PROCESSES)
    assert cli(forge, "scale", "rel-scale", "worker=2").returncode == 0
    push_counts(forge, "rel-scale", remote, 2)


def test_env_then_push_makes_one_release_carrying_the_env(forge: Forge) -> None:
    """With 2 workers asked for in the App's spec, env set then a push: one release for the env,
    one for the push — each with 2 workers and the env — and nothing more."""
    remote = Remote(forge.root, "acme/rel-env")
    sha = remote.commit({"worker.py": WORKER}, "worker") and remote.app_release("rel-env", "v1", extra=PROCESSES)
    register(forge, "rel-env", "acme/rel-env", processes={"worker": 2})
    assert push(forge, "acme/rel-env", sha) == ["rel-env-1"]
    forge.wait_phase("rel-env-1", {"Live"}, timeout=120)
    assert cli(forge, "env", "set", "rel-env", "GREETING=blue").returncode == 0
    assert wait_for(lambda: forge.serves("rel-env.localhost", "v1 blue"), 60, "the env to be served")
    push_counts(forge, "rel-env", remote, 2)
    assert wait_for(lambda: forge.serves("rel-env.localhost", "v2 blue"), 30, "v2 with the env")


def test_late_older_push_never_cancels_the_newer_release(forge: Forge) -> None:
    """Live at A, push B, then the push of A again under a new delivery id (late or replayed):
    B goes live, and the late push of A never cancels it."""
    remote, sha_a = live_app(forge, "rel-late")
    sha_b = remote.app_release("rel-late", "v2")
    assert push(forge, "acme/rel-late", sha_b) == ["rel-late-2"]
    time.sleep(0.3)
    late = forge.webhook("push", push_payload("acme/rel-late", "refs/heads/main", sha_a))
    assert late.status_code == 202, late.text
    forge.wait_phase("rel-late-2", {"Live"}, timeout=120)
    assert wait_for(lambda: forge.serves("rel-late.localhost", "v2"), 30, "v2 to be served")
    settle(forge, "rel-late")
    by_name = {d["metadata"]["name"]: d for d in releases(forge, "rel-late")}
    assert by_name["rel-late-2"]["status"]["phase"] == "Live"
    for name, d in by_name.items():
        if name not in ("rel-late-1", "rel-late-2"):  # whatever the late push made never went live
            assert d["status"]["phase"] == "Cancelled" and d["status"]["reason"] == "StalePush", d["status"]
    assert forge.get("apps", "rel-late")["status"]["liveDeployment"] == "rel-late-2"


def test_replayed_push_of_the_live_commit_makes_no_release(forge: Forge) -> None:
    """A signed push of the live commit replayed under new delivery ids creates nothing; an Event
    says it is already live; forge deploy --force releases it anyway."""
    _, sha = live_app(forge, "rel-replay")
    for _ in range(3):
        r = forge.webhook("push", push_payload("acme/rel-replay", "refs/heads/main", sha))
        assert r.status_code == 202 and r.json()["created"] == [], r.text
    settle(forge, "rel-replay", 2.0)
    assert [d["metadata"]["name"] for d in releases(forge, "rel-replay")] == ["rel-replay-1"]
    events = [e["spec"] for e in forge.list("events") if e["spec"]["reason"] == "AlreadyLive"
              and e["spec"]["involvedObject"]["name"] == "rel-replay"]
    assert events and "already live" in events[0]["message"]
    r = cli(forge, "deploy", "rel-replay", "--force", "--wait")
    assert r.returncode == 0 and r.stdout.strip() == "rel-replay-2 is Live", r
    wait_for(lambda: builds(forge, "rel-replay") == 2, 20, "a second build")  # --force rebuilds on purpose


def test_rollback_reuses_the_build_and_scale_keeps_running_instances(forge: Forge) -> None:
    """A rollback runs the build still on the node (no second build of v1), and scaling 1→3→1
    starts and stops Instances of the live release in place: the first one keeps its pid."""
    remote, _ = live_app(forge, "rel-reuse")
    wait_for(lambda: builds(forge, "rel-reuse") == 1, 20, "the first build's log")
    sha2 = remote.app_release("rel-reuse", "v2")
    assert push(forge, "acme/rel-reuse", sha2) == ["rel-reuse-2"]
    forge.wait_phase("rel-reuse-2", {"Live"}, timeout=120)
    wait_for(lambda: builds(forge, "rel-reuse") == 2, 20, "the second build's log")
    r = cli(forge, "rollback", "rel-reuse", "--wait")
    assert r.returncode == 0 and r.stdout.strip() == "rel-reuse-3 is Live", r
    assert wait_for(lambda: forge.serves("rel-reuse.localhost", "v1"), 30, "v1 to be served again")
    assert builds(forge, "rel-reuse") == 2, "the rollback rebuilt v1"

    first = running(forge, "rel-reuse", "rel-reuse-3")
    assert len(first) == 1
    pid = first[0]["status"]["pid"]
    ok(forge, "scale", "rel-reuse", "3", "--wait")
    now = running(forge, "rel-reuse", "rel-reuse-3")
    assert len(now) == 3
    assert all(i["status"].get("ready") for i in now)
    same = next(i for i in now if i["metadata"]["name"] == first[0]["metadata"]["name"])
    assert same["status"]["pid"] == pid
    ok(forge, "scale", "rel-reuse", "1", "--wait")
    left = running(forge, "rel-reuse", "rel-reuse-3")
    assert [i["metadata"]["name"] for i in left] == [first[0]["metadata"]["name"]] and left[0]["status"]["pid"] == pid
    assert [d["metadata"]["name"] for d in releases(forge, "rel-reuse")][-1] == "rel-reuse-3"
    assert builds(forge, "rel-reuse") == 2


def test_forge_run_finds_the_release_virtualenv_on_path(forge: Forge) -> None:
    """Every process of a release has the release's .venv/bin first on PATH: ``forge run APP --
    python …`` runs the virtualenv's python (the host has no plain ``python``)."""
    remote = Remote(forge.root, "acme/rel-venv")
    remote.app_release("rel-venv", "v1")
    text = (remote.work / "forge.yaml").read_text().replace(
        'commands: ["echo building v1", "test -f app.py"]',
        'commands: ["python3 -m venv --without-pip .venv", "test -x .venv/bin/python"]')
    sha = remote.commit({"forge.yaml": text}, "with a virtualenv")
    register(forge, "rel-venv", "acme/rel-venv")
    assert push(forge, "acme/rel-venv", sha) == ["rel-venv-1"]
    forge.wait_phase("rel-venv-1", {"Live"}, timeout=120)
    r = cli(forge, "run", "rel-venv", "--", "python", "-c", "import sys; print(sys.prefix)")
    assert r.returncode == 0, r
    assert r.stdout.strip().endswith("/.venv"), r.stdout
