"""Two ``forge up`` installs on one machine, each with its own data dir and ports but the
*default* node name (the hostname), each running an app called ``hello``, side by side for a
minute: neither sweeps, restarts or reaches the other's, and their apps run as different uids."""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Forge, Remote, new_forge, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")]
SIDE_BY_SIDE_SECONDS = 60


@pytest.fixture
def pair() -> Iterator[list[Forge]]:
    roots = [Path(tempfile.mkdtemp(prefix=f"forge-e2e-pair{i}-")) for i in range(2)]
    forges = [new_forge(r) for r in roots]
    for f in forges:
        f.default_node_name = True
    try:
        for f in forges:
            f.start()
        yield forges
    finally:
        for f in forges:
            f.stop()
        for r in roots:
            shutil.rmtree(r, ignore_errors=True)


def uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError(f"no Uid line for {pid}")


def app_uid(forge: Forge) -> int:
    """The uid the app's server process runs as (the deepest process of its Instance)."""
    inst = next(i for i in forge.list("instances", "forge.dev/app=hello") if i["spec"]["desired"] == "Running")
    from forge.upguard import descendants

    pids = sorted(descendants(inst["status"]["pid"]))
    return uid_of(pids[-1])


def test_two_installs_with_the_default_node_name_never_touch_each_other(pair: list[Forge]) -> None:
    a, b = pair
    assert a.node == b.node, "both installs use the hostname as node name"
    for f, version in ((a, "a1"), (b, "b1")):
        remote = Remote(f.root, "acme/hello")
        register(f, "hello", "acme/hello")
        push(f, "acme/hello", remote.app_release("hello", version))
        f.wait_phase("hello-1", {"Live"})
        wait_for(lambda f=f, v=version: f.serves("hello.localhost", v), 15, f"{version} to serve")
    misses = 0
    deadline = time.monotonic() + SIDE_BY_SIDE_SECONDS
    while time.monotonic() < deadline:
        misses += (not a.serves("hello.localhost", "a1")) + (not b.serves("hello.localhost", "b1"))
        time.sleep(0.5)
    assert misses == 0, f"{misses} requests failed while the two installs ran side by side"
    for f in pair:
        inst = next(i for i in f.list("instances", "forge.dev/app=hello") if i["spec"]["desired"] == "Running")
        assert inst["status"]["restarts"] == 0, inst["status"]
        swept = [e for e in f.list("events") if e["spec"]["reason"] == "OrphanStopped"]
        assert not swept, swept
    assert app_uid(a) != app_uid(b), "the same app name in two installs must run as two uids"
    assert a.get("apps", "hello")["status"]["serviceAddress"] != b.get("apps", "hello")["status"]["serviceAddress"]
