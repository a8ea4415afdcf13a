"""Resource series end to end (#25): a real app under ``forge up``; its node agent samples the
Instance's cgroup and ``GET /api/v1/apps/APP/metrics`` (and ``forge metrics APP``) show CPU and
memory series for it. The sampler runs every second here (``FORGE_TEST_USAGE_SECONDS``) so
the test needs no 10 s waits; production samples every 10 s."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.harness import ADMIN_TOKEN, Forge, Remote, running_forge, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed"),
]


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    with running_forge("forge-e2e-metrics-", FORGE_TEST_USAGE_SECONDS="1") as f:
        yield f


def app_metrics(forge: Forge, app: str, since: str = "10m") -> dict:
    with forge.client as c:
        r = c.get(f"/api/v1/apps/{app}/metrics", params={"since": since})
        r.raise_for_status()
        return r.json()


@pytest.mark.timeout(150)
def test_cpu_and_memory_series_of_a_running_app(forge: Forge) -> None:
    """The live Instance's memory (bytes its cgroup uses) and CPU (cores) appear as series."""
    remote = Remote(forge.root, "acme/gauges")
    register(forge, "gauges", "acme/gauges")
    assert push(forge, "acme/gauges", remote.app_release("gauges", "v1")) == ["gauges-1"]
    dep = forge.wait_phase("gauges-1", {"Live", "Failed"})
    assert dep["status"]["phase"] == "Live", dep["status"]
    for _ in range(20):  # some work for its CPU figure
        assert forge.serves("gauges.localhost", "v1")

    def measured() -> dict | None:
        m = app_metrics(forge, "gauges")
        mem = [v for _, v in m["series"]["memory"] if v is not None]
        cpu = [v for _, v in m["series"]["cpu"] if v is not None]
        return m if len(mem) >= 2 and len(cpu) >= 2 else None

    m = wait_for(measured, 45, "CPU and memory points of gauges", step=0.5)
    mem = [v for _, v in m["series"]["memory"] if v is not None]
    # A Python http.server: a few MiB at least, and inside its 128M limit.
    assert all(2 << 20 < v <= 128 << 20 for v in mem), mem
    assert all(v >= 0 for _, v in m["series"]["cpu"] if v is not None)
    assert m["resources"]["memory"]["now"] == mem[-1] and m["resources"]["memory"]["peak"] >= max(mem)
    assert [name for _, name in m["releases"]] == ["gauges-1"]
    assert m["step"] == 10 and len(m["series"]["cpu"]) == len(m["series"]["requests"])
    assert m["restarts"] == 0

    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env.update(FORGE_URL=forge.api, FORGE_ADMIN_TOKEN=ADMIN_TOKEN, FORGE_DATA_DIR=str(forge.data))
    out = subprocess.run(
        [sys.executable, "-m", "forge", "metrics", "gauges", "--since", "10m"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0 and "memory    now" in out.stdout and "MiB" in out.stdout, out
    as_json = subprocess.run(
        [sys.executable, "-m", "forge", "metrics", "gauges", "--json"], env=env, capture_output=True, text=True, timeout=60
    )
    assert json.loads(as_json.stdout)["resources"]["memory"]["now"] is not None

    with httpx.Client(base_url=forge.api, timeout=10) as anon:
        assert anon.get("/api/v1/apps/gauges/metrics").status_code == 401
