"""Deadlines that fit: a build may use its whole ``build.timeout`` (the progress deadline covers
it), and a release that is cancelled while it builds stops its build within seconds."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Forge, Remote, running_forge, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")]

TICKING = 'for i in $(seq 300); do echo $i > tick; sleep 1; done'


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    with running_forge("forge-e2e-builds-") as f:
        yield f


def with_build(remote: Remote, app: str, version: str, build: str, extra: str = "") -> str:
    """A release of ``app`` whose build runs ``build`` (after the usual check) — the harness app."""
    base = remote.app_release(app, version)  # app.py and a valid forge.yaml on the branch
    del base
    text = (remote.work / "forge.yaml").read_text().replace(
        '"test -f app.py"]', f'"test -f app.py", "{build}"]' + (f"\n  {extra}" if extra else "")
    )
    return remote.commit({"forge.yaml": text, "version.txt": version + "\n"}, f"{version}: build {build!r}")


def release_dir(forge: Forge, app: str, dep: str) -> Path:
    return forge.data / "node" / "releases" / app / dep


def test_cancelled_release_stops_its_build_within_seconds(forge: Forge) -> None:
    """A release still building when a newer push cancels it has its build killed at once (it
    used to run on to its end): the build's tick file stops moving within a few seconds."""
    remote = Remote(forge.root, "acme/slowb")
    register(forge, "slowb", "acme/slowb")
    push(forge, "acme/slowb", with_build(remote, "slowb", "b1", TICKING))
    tick = release_dir(forge, "slowb", "slowb-1") / "tick"
    wait_for(tick.exists, 90, "slowb-1's build to start ticking")
    push(forge, "acme/slowb", remote.app_release("slowb", "b2"))
    forge.wait_phase("slowb-1", {"Cancelled"}, timeout=30)
    cancelled_at = time.monotonic()

    def stopped() -> bool:
        if not tick.exists():
            return True  # the cancelled release's tree is gone with it
        before = tick.read_text()
        time.sleep(2.5)
        return not tick.exists() or tick.read_text() == before

    wait_for(stopped, 15, "the cancelled build to stop", step=0.0)
    print(f"build stopped {time.monotonic() - cancelled_at:.1f}s after the release was cancelled")
    forge.wait_phase("slowb-2", {"Live"}, timeout=120)
    wait_for(lambda: forge.serves("slowb.localhost", "b2"), 20, "b2 to serve")


@pytest.mark.slow
def test_build_longer_than_the_old_deadline_succeeds_within_its_timeout(forge: Forge) -> None:
    """build.commands sleep 150 with build.timeout 5m goes Live (it failed at 120 s,
    ProgressDeadlineExceeded, while its build was still allowed to run)."""
    remote = Remote(forge.root, "acme/longb")
    register(forge, "longb", "acme/longb")
    push(forge, "acme/longb", with_build(remote, "longb", "l1", "sleep 150", extra="timeout: 5m"))
    dep = forge.wait_phase("longb-1", {"Live", "Failed"}, timeout=300)
    assert dep["status"]["phase"] == "Live", dep["status"]
    wait_for(lambda: forge.serves("longb.localhost", "l1"), 20, "l1 to serve")
