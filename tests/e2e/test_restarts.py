"""Restarts are not crashes: ``forge up`` stopped and started again (Ctrl-C, or ``kill -9``)
brings the same releases back, with no crash counted, no rollback and no failed release.

Each test has its own ``forge up`` (they stop and start it)."""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator

import pytest

from tests.e2e.harness import MANIFEST, Forge, Remote, running_forge, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed"),
]

QUIET_SECONDS = 25.0  # longer than rollback's 10 s window plus a whole default min_ready


@pytest.fixture
def forge() -> Iterator[Forge]:
    with running_forge("forge-e2e-restart-") as f:
        yield f


def names(forge: Forge, app: str) -> list[str]:
    return sorted(d["metadata"]["name"] for d in forge.list("deployments", f"forge.dev/app={app}"))


def crash_words(forge: Forge, app: str) -> list[str]:
    """Events that would mean a restart was read as the app's failure."""
    bad = {"CrashLoopBackOff", "Unhealthy", "RollingBack", "RolledBack", "HealthCheckFailed"}
    return [
        f"{e['spec']['reason']}: {e['spec']['message']}"
        for e in forge.list("events")
        if e["spec"]["reason"] in bad and app in e["spec"]["involvedObject"]["name"]
    ]


def assert_unharmed(forge: Forge, app: str, live: str, version: str, releases: list[str]) -> None:
    """For QUIET_SECONDS: ``live`` stays Live and serves ``version``, no release is added, no
    Instance of it counts a restart, no crash or rollback Event is recorded."""
    deadline = time.monotonic() + QUIET_SECONDS
    while time.monotonic() < deadline:
        assert names(forge, app) == releases, (
            f"a release was added: {names(forge, app)}; {crash_words(forge, app)}"
        )
        dep = forge.get("deployments", live)
        assert dep["status"]["phase"] == "Live", (dep["status"], crash_words(forge, app))
        time.sleep(1.0)
    assert forge.serves(f"{app}.localhost", version)
    insts = [
        i
        for i in forge.list("instances", f"forge.dev/deployment={live}")
        if i["spec"]["desired"] == "Running"
    ]
    assert insts
    for i in insts:
        st = i["status"]
        assert st.get("restarts", 0) == 0 and st.get("reason", "") == "", (i["metadata"]["name"], st)
    assert crash_words(forge, app) == []


def test_forge_up_restart_keeps_the_live_release_with_default_min_ready(forge: Forge) -> None:
    """rb-1 then rb-2 (default health.min_ready 10 s), forge up stopped and started again: rb-2
    stays live on the same code, no crash is counted, nothing is rolled back."""
    remote = Remote(forge.root, "acme/rb")
    register(forge, "rb", "acme/rb")
    push(forge, "acme/rb", remote.app_release("rb", "v1", min_ready="10s"))
    forge.wait_phase("rb-1", {"Live"})
    push(forge, "acme/rb", remote.app_release("rb", "v2", min_ready="10s"))
    forge.wait_phase("rb-2", {"Live"})
    wait_for(lambda: forge.serves("rb.localhost", "v2"), 20, "v2 to serve")
    for _ in range(2):  # the second restart is where a re-judged release used to fail again
        forge.stop()
        forge.start()
        wait_for(lambda: forge.serves("rb.localhost", "v2"), 60, "v2 to serve again")
        assert_unharmed(forge, "rb", "rb-2", "v2", ["rb-1", "rb-2"])


def test_sigkill_of_forge_up_mid_rollout_goes_live_after_restart(forge: Forge) -> None:
    """kill -9 of forge up while a release starts (default min_ready): after a new forge up the
    release goes Live, no crash is counted and nothing is rolled back."""
    remote = Remote(forge.root, "acme/kk")
    register(forge, "kk", "acme/kk")
    push(forge, "acme/kk", remote.app_release("kk", "k1", min_ready="1s"))
    forge.wait_phase("kk-1", {"Live"})
    push(
        forge,
        "acme/kk",
        remote.commit(
            {
                "forge.yaml": MANIFEST.format(name="kk", version="k2", extra="", min_ready="10s"),
                "version.txt": "k2\n",
            },
            "k2",
        ),
    )

    def started() -> bool:
        insts = forge.list("instances", "forge.dev/deployment=kk-2")
        return any(i["status"].get("phase") in ("Starting", "Running") for i in insts)

    wait_for(started, 60, "kk-2 to start its instance")
    assert forge.get("deployments", "kk-2")["status"]["phase"] in ("Building", "Starting")
    assert forge.proc is not None
    os.kill(forge.proc.pid, signal.SIGKILL)
    forge.proc.wait(timeout=10)
    time.sleep(2.0)  # the children notice their parent's death and stop
    forge.start()
    dep = forge.wait_phase("kk-2", {"Live", "Failed", "Cancelled"}, timeout=120)
    assert dep["status"]["phase"] == "Live", (dep["status"], crash_words(forge, "kk"))
    wait_for(lambda: forge.serves("kk.localhost", "k2"), 30, "k2 to serve")
    assert_unharmed(forge, "kk", "kk-2", "k2", ["kk-1", "kk-2"])
