"""A highly available control plane on PostgreSQL: two API servers and two controller managers
on one (throwaway) PostgreSQL, with a real agent and Caddy (``forge up --store-url`` plus a second
``forge server`` and ``forge controllers``).

* An app registered through one API server is deployed through the other.
* SIGKILL of the leading controllers mid-rollout: the standby takes over within the lease and
  the release goes Live exactly as it would have.
* A leader paused (SIGSTOP) past its lease is deposed; resumed (SIGCONT) it does not act again —
  its election round says so. (That its in-flight writes are refused by the fence is shown
  deterministically in tests/store/test_fence.py and tests/controllers/test_leader.py: here the
  timing of a write in flight at the SIGSTOP cannot be controlled.)
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ADMIN_TOKEN, Forge, Remote, free_port, running_forge, wait_for
from tests.e2e.test_push_to_live import push

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0 or shutil.which("caddy") is None,
                                                  reason="needs root and caddy")]

LEASE = 6.0


class ControlPlane:
    def __init__(self, forge: Forge, url: str) -> None:
        self.forge, self.url = forge, url
        self.procs: list[subprocess.Popen[bytes]] = []
        self.api2 = f"http://127.0.0.1:{free_port()}"

    def spawn(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        log = (self.forge.root / f"{name}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "forge", *args], env=self.forge.env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def start_second(self) -> subprocess.Popen[bytes]:
        data = str(self.forge.data)
        self.spawn("api2", "server", "--listen", self.api2.removeprefix("http://"), "--data-dir", data)
        wait_for(lambda: _ok(f"{self.api2}/readyz"), 60, "the second API server")
        return self.spawn("controllers2", "controllers", "--data-dir", data, "--domain", "localhost",
                          "--caddy-admin", f"unix/{self.forge.data}/caddy/admin.sock", "--tls", "off",
                          "--http-listen", self.forge.http.removeprefix("http://"),
                          "--api-listen", self.forge.api.removeprefix("http://"))

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGCONT)
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def lease(api: str) -> dict:
    r = httpx.get(f"{api}/api/v1/leases/controllers-leader", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                  timeout=5)
    r.raise_for_status()
    return r.json()["spec"]


def holder_pid(api: str) -> int:
    """Controllers identities are HOST-PID-RANDOM."""
    return int(lease(api)["holder"].rsplit("-", 2)[1])


@pytest.fixture(scope="module")
def plane() -> Iterator[ControlPlane]:
    from tests.pgcluster import PgCluster

    cluster = PgCluster.start()
    try:
        url = cluster.url(cluster.create_database())
        with running_forge("forge-e2e-ha-", FORGE_STORE_URL=url, FORGE_LEADER_LEASE_SECONDS=str(LEASE)) as f:
            cp = ControlPlane(f, url)
            try:
                cp.start_second()
                yield cp
            finally:
                cp.stop()
    finally:
        cluster.stop()


def register_via(api: str, name: str, repo: str) -> None:
    body = {"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": name}, "spec": {"repo": repo}}
    r = httpx.post(f"{api}/api/v1/apps", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
    assert r.status_code == 201, r.text


def slow_release(remote: Remote, version: str) -> str:
    return remote.app_release("ha", version, extra="") if version == "v1" else remote.commit({
        "forge.yaml": (Path(remote.work) / "forge.yaml").read_text().replace(
            '"test -f app.py"]', '"test -f app.py", "sleep 4"]'),
        "version.txt": version + "\n"}, version)


def test_sigkill_of_the_leader_mid_rollout_and_a_paused_leader_is_fenced(plane: ControlPlane) -> None:
    forge = plane.forge
    assert not (forge.data / "forge.db").exists()  # every record is in PostgreSQL
    register_via(plane.api2, "ha", "acme/ha")  # written through the second API server ...
    remote = Remote(forge.root, "acme/ha")
    push(forge, "acme/ha", slow_release(remote, "v1"))  # ... deployed through the first
    assert forge.wait_phase("ha-1", {"Live", "Failed"}, timeout=120)["status"]["phase"] == "Live"
    wait_for(lambda: forge.serves("ha.localhost", "v1"), 20, "v1")

    # SIGKILL the leader while v2 builds (its build sleeps 4 s)
    before = lease(forge.api)
    push(forge, "acme/ha", slow_release(remote, "v2"))
    wait_for(lambda: httpx.get(f"{plane.api2}/api/v1/deployments/ha-2",
                               headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()
             .get("status", {}).get("phase") in ("Building", "Starting"), 30, "v2 in flight")
    leader = holder_pid(forge.api)
    killed_at = time.monotonic()
    os.kill(leader, signal.SIGKILL)
    wait_for(lambda: lease(forge.api)["holder"] != before["holder"] and holder_pid(forge.api) != leader, 3 * LEASE + 10,
             "a standby to take over", step=0.2)
    took = time.monotonic() - killed_at
    after = lease(forge.api)
    assert after["transitions"] > before["transitions"]
    assert took <= LEASE + 2 * LEASE / 3 + 2, took  # within the lease (plus one renew interval of the standby)
    dep = forge.wait_phase("ha-2", {"Live", "Failed"}, timeout=120)
    assert dep["status"]["phase"] == "Live", dep["status"]
    wait_for(lambda: forge.serves("ha.localhost", "v2"), 20, "v2 after the takeover")
    print(f"takeover after SIGKILL of the leader: {took:.1f}s (lease {LEASE:g}s)")

    # pause the (new) leader past its lease: deposed, and fenced when it wakes up
    paused = holder_pid(forge.api)
    generation = lease(forge.api)["transitions"]
    os.kill(paused, signal.SIGSTOP)
    try:
        wait_for(lambda: holder_pid(forge.api) != paused, 4 * LEASE + 10, "the other to take over", step=0.2)
    finally:
        os.kill(paused, signal.SIGCONT)
    assert lease(forge.api)["transitions"] > generation
    push(forge, "acme/ha", slow_release(remote, "v3"))
    dep = forge.wait_phase("ha-3", {"Live", "Failed"}, timeout=120)
    assert dep["status"]["phase"] == "Live", dep["status"]
    time.sleep(LEASE)  # the resumed one had every chance to act
    logs = "".join(p.read_text(errors="replace") for p in forge.root.glob("*.log")) + \
        "".join(p.read_text(errors="replace") for p in (forge.data / "logs").glob("controllers*.log"))
    assert "lost leadership" in logs
    assert holder_pid(forge.api) != paused
