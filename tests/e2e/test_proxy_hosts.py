"""Two control-plane hosts on one PostgreSQL store, each with its own Caddy and ``forge proxy``
(``forge up --no-agent`` on each, ``tests/e2e/multihost.py``), two workers, and clients spreading
their requests over both hosts. Through deploys, a SIGKILLed leader and a SIGSTOPped one: no
request fails, and each host serves every new release within 2 s of it going Live — the
standby's proxy programs its host from the records exactly as the leader's does (before, only the
leader's router programmed a proxy: the standby served stale or stopped backends).
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import ADMIN_TOKEN, Remote, github_delivery, push_payload, wait_for
from tests.e2e.multihost import Cluster

LEASE = 6.0
APP = "two"
HOST = f"{APP}.localhost"

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(
    shutil.which("caddy") is None or os.geteuid() != 0 or shutil.which("nft") is None,
    reason="needs root, nftables and caddy (make setup)")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    from tests.pgcluster import PgCluster

    pg = PgCluster.start()
    root = Path(tempfile.mkdtemp(prefix="forge-proxies-"))
    c = Cluster(root, workers=2, control_planes=2)
    try:
        url = pg.url(pg.create_database())
        shared = {"FORGE_STORE_URL": url, "FORGE_LEADER_LEASE_SECONDS": str(LEASE),
                  "FORGE_SECRET_KEY": base64.b64encode(b"k" * 32).decode()}
        c.build()
        c.start_control_plane("cp", **shared)
        c.start_control_plane("cp2", **shared)
        for w in ("w1", "w2"):
            c.start_agent(w)
        yield c
    except BaseException:
        print(c.logs())
        raise
    finally:
        c.stop()
        pg.stop()
        if os.environ.get("FORGE_E2E_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def api(c: Cluster, name: str = "cp2") -> httpx.Client:
    return httpx.Client(base_url=c.api_of(name), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)


def get(c: Cluster, path: str) -> dict:
    with api(c) as a:
        r = a.get(path)
        r.raise_for_status()
        return r.json()


def lease_holder_pid(c: Cluster) -> int:
    return int(get(c, "/api/v1/leases/controllers-leader")["spec"]["holder"].rsplit("-", 2)[1])


class Load(threading.Thread):
    """Requests to the app over both hosts, alternating (keep-alive per host), every 10 ms."""

    def __init__(self, c: Cluster, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.c, self.stop = c, stop
        self.ok = {name: 0 for name in c.cps}
        self.failures: list[str] = []

    def run(self) -> None:
        clients = {name: httpx.Client(base_url=self.c.http_of(name), timeout=10) for name in self.c.cps}
        try:
            for i in range(200_000):
                if self.stop.is_set():
                    return
                name = self.c.cps[i % len(self.c.cps)]
                try:
                    r = clients[name].get("/", headers={"Host": HOST})
                    if r.status_code == 200:
                        self.ok[name] += 1
                    else:
                        self.failures.append(f"{time.strftime('%H:%M:%S')} {name} HTTP {r.status_code} {r.text[:60]!r}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{time.strftime('%H:%M:%S')} {name} {type(exc).__name__}: {exc}")
                time.sleep(0.01)
        finally:
            for cl in clients.values():
                cl.close()


def serves(c: Cluster, name: str, text: str) -> bool:
    try:
        r = httpx.get(c.http_of(name), headers={"Host": HOST}, timeout=2)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and text in r.text


def deploy(c: Cluster, remote: Remote, version: str, lags: dict[str, list[float]]) -> None:
    """Push ``version``; once the test sees its Deployment Live, time each host until it serves it."""
    sha = remote.app_release(APP, version)
    r = github_delivery(c.api_of("cp"), "push", push_payload(f"acme/{APP}", "refs/heads/main", sha))
    assert r.status_code in (200, 202), r.text
    name = r.json()["created"][0]

    def live() -> bool:
        dep = get(c, f"/api/v1/deployments/{name}")
        assert dep["status"].get("phase") not in ("Failed", "Cancelled"), dep["status"]
        return dep["status"].get("phase") == "Live"

    wait_for(live, 180, f"{name} Live", step=0.05)
    seen = time.monotonic()
    waiting = set(c.cps)
    deadline = seen + 30
    while waiting and time.monotonic() < deadline:
        for host in sorted(waiting):
            if serves(c, host, version):
                lags[host].append(time.monotonic() - seen)
                waiting.discard(host)
        time.sleep(0.02)
    assert not waiting, f"{sorted(waiting)} never served {version}"


def test_two_proxy_hosts_serve_every_release_through_leader_failures(cluster: Cluster) -> None:
    """Deploys, a SIGKILLed leader, a SIGSTOPped one: 0 failed requests over both hosts, and both
    hosts serve each new release within 2 s of it going Live."""
    c = cluster
    remote = Remote(c.root, f"acme/{APP}")
    with api(c, "cp") as a:  # registered through one host's API, served by both
        r = a.post("/api/v1/apps", json={"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": APP},
                                         "spec": {"repo": f"acme/{APP}", "branches": ["main"], "replicas": 2}})
        assert r.status_code == 201, r.text
    lags: dict[str, list[float]] = {name: [] for name in c.cps}
    deploy(c, remote, "v1", lags)

    stop = threading.Event()
    load = Load(c, stop)
    load.start()
    events: list[str] = []
    try:
        deploy(c, remote, "v2", lags)

        leader = lease_holder_pid(c)  # SIGKILL the leading controllers, then deploy through the standby
        os.kill(leader, signal.SIGKILL)
        events.append(f"SIGKILL leader pid {leader}")
        deploy(c, remote, "v3", lags)

        paused = lease_holder_pid(c)  # SIGSTOP the (new) leader past its lease
        os.kill(paused, signal.SIGSTOP)
        events.append(f"SIGSTOP leader pid {paused}")
        try:
            deploy(c, remote, "v4", lags)
        finally:
            os.kill(paused, signal.SIGCONT)
        deploy(c, remote, "v5", lags)
        time.sleep(2.0)  # the last release's predecessor drains and stops under load
    finally:
        stop.set()
        load.join(timeout=30)
    print(f"{events}; requests ok per host {load.ok}, failed {len(load.failures)}; "
          f"seconds from Live to served per host: "
          + ", ".join(f"{h} {' '.join(f'{x:.2f}' for x in v)}" for h, v in lags.items()))
    assert not load.failures, load.failures[:10]
    assert all(n > 200 for n in load.ok.values()), load.ok
    assert all(x <= 2.0 for v in lags.values() for x in v), lags
