"""The agent is SIGKILLed: apps keep serving, and a restarted agent re-adopts them unchanged.

Also: a control-plane outage loses no log lines (offsets acknowledged only after the POST).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import make_server

import httpx
import pytest

from forge.api import create_app
from forge.cgroups import detect_driver
from forge.errors import NotFound
from tests.nodeagent.test_agent_harness import (
    CLOCK,
    NEEDS,
    Api,
    _QuietHandler,
    _ThreadingWSGIServer,
    make_repo,
    manifest,
    remove_network,
    wait_for,
)

pytestmark = pytest.mark.skipif(not NEEDS, reason="needs root, git and bwrap")
NODE = "node-restart"
ROOT = Path(__file__).resolve().parents[2]


class Rig:
    def __init__(self, tmp: Path, api: Api, commit: str, parent: str) -> None:
        self.tmp, self.api, self.commit, self.parent = tmp, api, commit, parent
        self.token = api.node_token(NODE)
        self.driver = detect_driver(parent=parent)
        self.proc: subprocess.Popen[bytes] | None = None

    def start_agent(self) -> subprocess.Popen[bytes]:
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
               "FORGE_NODE_TOKEN": self.token, "FORGE_GIT_URL_TEMPLATE": f"file://{self.tmp}/repos/{{full_name}}.git"}
        log = open(self.tmp / "agent.out", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forge.nodeagent.agent", "--api", self.api.url, "--name", NODE,
             "--data-dir", str(self.tmp / "agent"), "--metrics-listen", "", "--heartbeat-seconds", "1",
             "--cgroup-parent", self.parent], env=env, stdout=log, stderr=log, cwd=str(ROOT))
        log.close()
        return self.proc


@pytest.fixture
def rig() -> Iterator[Rig]:
    tmp = Path(tempfile.mkdtemp(prefix="forge-agent-restart-"))
    api = Api(tmp)
    r = Rig(tmp, api, make_repo(tmp / "repos"), f"forge-test-agent-{uuid.uuid4().hex[:8]}")
    yield r
    if r.proc is not None and r.proc.poll() is None:
        r.proc.terminate()
        r.proc.wait(timeout=30)
    for group in r.driver.list_groups():
        r.driver.kill_all(group)
        r.driver.remove(group)
    r.driver.remove_parent()
    remove_network(tmp / "agent")
    api.close()
    shutil.rmtree(tmp, ignore_errors=True)


def _lease_renewed(rig: Rig) -> str | None:
    try:
        return rig.api.store.get("Lease", f"node.{NODE}").spec.renew_time
    except NotFound:
        return None


def test_sigkill_agent_apps_keep_serving_and_are_readopted(rig: Rig) -> None:
    """SIGKILL of the agent leaves the app serving; the restarted agent keeps the same pid and restarts."""
    rig.api.create_instance("hello-1-0", NODE, rig.commit, manifest(build=[]))
    agent = rig.start_agent()
    ready = wait_for(lambda: (i := rig.api.instance("hello-1-0")).status.ready and i, timeout=60)
    pid, port, restarts = ready.status.pid, ready.status.port, ready.status.restarts
    addr = ready.status.address
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=10)
    for _ in range(3):
        assert httpx.get(f"http://{addr}:{port}/").status_code == 200
    assert pid in rig.driver.procs("inst-hello-1-0")
    rv_before = rig.api.instance("hello-1-0").metadata.resource_version
    rig.start_agent()
    # Re-adopted: the agent's heartbeat moves on while the Instance keeps pid, port, readiness.
    # (the first agent may have been killed before its first renewal wrote the Lease: wait for it)
    lease = wait_for(lambda: _lease_renewed(rig), timeout=30)
    wait_for(lambda: rig.api.store.get("Lease", f"node.{NODE}").spec.renew_time != lease, timeout=30)
    wait_for(lambda: "re-adopted hello-1-0" in (rig.tmp / "agent.out").read_text(), timeout=30)
    CLOCK.sleep(3)  # a few probe intervals: long enough to notice a wrong restart
    after = rig.api.instance("hello-1-0")
    assert (after.status.pid, after.status.address, after.status.port, after.status.restarts) == (pid, addr, port, restarts)
    assert after.status.ready and after.status.phase == "Running"
    assert after.metadata.resource_version == rv_before, "adoption must not flap the status"
    assert httpx.get(f"http://{addr}:{port}/").status_code == 200


def test_control_plane_outage_loses_no_logs(rig: Rig) -> None:
    """Lines written while the API is down are shipped after it returns, each exactly once."""
    rig.api.create_instance("hello-2-0", NODE, rig.commit, manifest(build=["echo build-before-outage"]))
    rig.start_agent()
    ready = wait_for(lambda: (i := rig.api.instance("hello-2-0")).status.ready and i, timeout=60)
    wait_for(lambda: any(ln.line == "build-before-outage" for ln in rig.api.store.read_logs("hello")))
    rig.api.server.shutdown()  # the control plane goes away; the app keeps running and logging
    rig.api.server.server_close()
    for i in range(5):
        httpx.get(f"http://{ready.status.address}:{ready.status.port}/during-outage-{i}")
    CLOCK.sleep(2)
    # Same store, same port: the API comes back.
    port = int(rig.api.url.rsplit(":", 1)[1])
    server = make_server("127.0.0.1", port, create_app(rig.api.config, store=rig.api.store, clock=CLOCK),
                         server_class=_ThreadingWSGIServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    rig.api.server = server

    def outage_lines() -> list[str]:
        return [ln.line for ln in rig.api.store.read_logs("hello", source="app") if "during-outage" in ln.line]

    got = wait_for(lambda: len(outage_lines()) >= 5 and outage_lines(), timeout=30)
    assert got == [f"request /during-outage-{i}" for i in range(5)]


def test_orphaned_processes_are_stopped_after_first_list(rig: Rig) -> None:
    """A process in a Forge cgroup that no Instance of this node explains (moved away) is stopped."""
    from forge.nodeagent.sandbox import Sandbox, SandboxSpec

    rig.driver.create("inst-ghost-1-0")
    rig.driver.set_limits("inst-ghost-1-0", 64 * 1024 * 1024, 0.2, 32)
    work = rig.tmp / "ghost"
    work.mkdir()
    sandbox = Sandbox(rig.driver)
    pid = sandbox.spawn(SandboxSpec(app="ghost", workdir=str(work), command="sleep 300", env={},
                                    cgroup="inst-ghost-1-0"))
    wait_for(lambda: pid in rig.driver.procs("inst-ghost-1-0"))
    rig.api.create_instance("hello-3-0", NODE, rig.commit, manifest(build=[]))
    rig.start_agent()
    wait_for(lambda: not rig.driver.exists("inst-ghost-1-0"), timeout=30)
    wait_for(lambda: sandbox.poll(pid) is not None, timeout=10)
    wait_for(lambda: rig.api.instance("hello-3-0").status.ready, timeout=60)


def test_one_shot_keeps_its_exit_code_across_an_agent_restart(rig: Rig) -> None:
    """A release command running when its agent is SIGKILLed ends with its own exit code (recorded
    by the root shell in agent territory), and is never run a second time."""
    from forge.models import OneShot

    inst = rig.api.create_instance("hello-3-release", NODE, rig.commit, manifest(build=[]))
    inst.spec.oneshot = OneShot(type="release", command="echo once >> ran-count; sleep 4; exit 5")
    inst.spec.process = "release"
    rig.api.store.update(inst)
    agent = rig.start_agent()
    wait_for(lambda: rig.api.instance("hello-3-release").status.phase == "Running", timeout=60)
    agent.send_signal(signal.SIGKILL)
    agent.wait(timeout=10)
    rig.start_agent()
    done = wait_for(lambda: (i := rig.api.instance("hello-3-release")).status.phase in ("Succeeded", "Failed") and i,
                    timeout=60)
    assert (done.status.phase, done.status.exit_code, done.status.reason) == ("Failed", 5, "Error"), done.status
    release = rig.tmp / "agent" / "releases" / "hello" / "hello-3"
    assert (release / "ran-count").read_text() == "once\n"
