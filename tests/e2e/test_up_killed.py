"""``kill -9`` of ``forge up`` in the middle of a rollout, then ``forge up`` again on the same
data dir: one platform, not two. Its own ``forge up`` (the module fixture is killed here)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from forge.nodeagent.agent import node_cgroup_parent
from forge.upguard import descendants, listeners
from tests.e2e.harness import MANIFEST, Forge, Remote, running_forge, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")]


@pytest.fixture
def forge() -> Iterator[Forge]:
    with running_forge("forge-e2e-kill-") as f:
        yield f


def forge_processes(data: Path) -> set[int]:
    """Every process whose command line names this install's data dir (API, controllers, agent, Caddy)."""
    out = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split()
    return {int(p) for p in out} - {os.getpid()}


def test_sigkill_of_forge_up_mid_rollout_heals_into_one_platform(forge: Forge) -> None:
    """After kill -9 of forge up during a rollout and a new forge up: within 30 s the app serves
    every request, exactly one Caddy listens, the in-flight release ends Live or Failed, and no
    process or cgroup of the old run is left."""
    remote = Remote(forge.root, "acme/phoenix")
    register(forge, "phoenix", "acme/phoenix")
    push(forge, "acme/phoenix", remote.app_release("phoenix", "p1"))
    forge.wait_phase("phoenix-1", {"Live"})
    wait_for(lambda: forge.serves("phoenix.localhost", "p1"), 15, "p1")
    slow = MANIFEST.format(name="phoenix", version="p2", extra="", min_ready="1s").replace(
        '"test -f app.py"', '"sleep 4"')
    push(forge, "acme/phoenix", remote.commit({"forge.yaml": slow, "version.txt": "p2\n"}, "p2, slow build"))
    wait_for(lambda: forge.get("deployments", "phoenix-2")["status"].get("phase") in ("Building", "Starting"),
             30, "phoenix-2 to be in flight")
    old = forge_processes(forge.data)
    assert forge.proc is not None
    os.kill(forge.proc.pid, signal.SIGKILL)
    forge.proc.wait(timeout=10)

    t0 = time.monotonic()
    forge.start()
    up = forge.proc
    assert up is not None

    def serves_every_time() -> bool:
        return all(forge.serves("phoenix.localhost", "p") for _ in range(20))

    wait_for(serves_every_time, max(1.0, 30 - (time.monotonic() - t0)), "the app to serve every request")
    print(f"serving every request {time.monotonic() - t0:.1f}s after the new forge up started")
    http_port = int(forge.http.rsplit(":", 1)[1])
    owners = listeners(http_port)
    assert len(owners) == 1, f"{len(owners)} processes listen on the apps' port: {owners}"
    assert Path(f"/proc/{next(iter(owners))}/comm").read_text().strip() == "caddy"
    dep = forge.wait_phase("phoenix-2", {"Live", "Failed"}, timeout=120)
    assert dep["status"]["phase"] in ("Live", "Failed")
    left = {p for p in old if Path(f"/proc/{p}").exists()} - descendants(up.pid)
    assert not left, f"processes of the killed run survive: {left}"
    mine = descendants(up.pid)
    strays = forge_processes(forge.data) - mine
    assert not strays, f"processes outside the new forge up: {strays}"
    live = {f"inst-{i['metadata']['name']}" for i in forge.list("instances", "forge.dev/app=phoenix")
            if i["spec"]["desired"] == "Running"}
    groups = set()
    for hier in ("memory", "pids", "cpu"):
        base = Path("/sys/fs/cgroup") / hier / node_cgroup_parent(forge.node, forge.data / "node")
        if base.is_dir():
            groups |= {d.name for d in base.iterdir() if d.is_dir()}
    assert groups <= live, f"cgroups no live Instance explains: {groups - live}"
    r = httpx.get(f"{forge.http}/", headers={"Host": "phoenix.localhost"}, timeout=5)
    assert r.status_code == 200
