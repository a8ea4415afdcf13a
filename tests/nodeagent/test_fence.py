"""The agent's fence: after a start or a lapsed lease it renews nothing until every process it
runs belongs to an Instance still assigned to it (a Lost Instance never runs here again)."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge import errors
from forge.client import ForgeClient
from forge.clock import FakeClock
from forge.models import LABEL_APP, LABEL_DEPLOYMENT, LABEL_NODE, Instance
from forge.nodeagent.agent import FENCE_RETRY_SECONDS, Agent, is_assigned
from forge.nodeagent.state import InstanceState


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    """A real Agent (dev mode, no cgroups, fake clock), never started; its API is unreachable."""
    a = Agent(ForgeClient("http://127.0.0.1:9", "t"), "n1", tmp_path / "agent", "127.0.0.1", None, "dev",
              "file:///nowhere/{full_name}.git", threading.Event(), FakeClock(), driver=None, disk_fence=None,
              network=None)
    yield a
    a.client.close()


def _instance(name: str, phase: str = "Running", node: str = "n1", desired: str = "Running") -> Instance:
    dep = name.rsplit("-", 1)[0]
    return Instance.model_validate({
        "metadata": {"name": name, "labels": {LABEL_APP: "hello", LABEL_DEPLOYMENT: dep, LABEL_NODE: node}},
        "spec": {"app": "hello", "deployment": dep, "node": node, "desired": desired, "repo": "acme/hello",
                 "commit": "a" * 40, "manifest": {}, "env": {}},
        "status": {"phase": phase},
    })


@pytest.mark.parametrize(("phase", "node", "desired", "assigned"), [
    ("Running", "n1", "Running", True),
    ("Lost", "n1", "Running", False),
    ("Running", "n2", "Running", False),
    ("Running", "n1", "Stopped", False),
], ids=["ours", "lost", "moved", "stopped"])
def test_is_assigned(phase: str, node: str, desired: str, assigned: bool) -> None:
    """Only a Running-desired, not-Lost Instance bound to this node is this node's to run."""
    assert is_assigned(_instance("hello-1-0", phase, node, desired), "n1") is assigned


def test_lost_instance_is_stopped_before_the_lease_is_renewed(agent: Agent, tmp_path: Path) -> None:
    """A process of a Lost Instance holds the heartbeat back; once stopped, the renewal goes out."""
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)  # as the agent starts apps
    try:
        agent.synced.set()
        agent.cache["hello-1-0"] = _instance("hello-1-0", phase="Lost")
        agent.state.put(InstanceState("hello-1-0", "hello", "hello-1", "inst-hello-1-0", str(tmp_path / "rel"),
                                      pid=proc.pid))
        assert agent.fencing
        assert agent._heartbeat() == FENCE_RETRY_SECONDS
        assert agent.queue.get(timeout=0) == "hello-1-0"
        agent.process("hello-1-0")
        assert proc.wait(timeout=15) is not None
        with pytest.raises(errors.Unavailable):  # past the fence: it tries to renew (no API here)
            agent._heartbeat()
        assert not agent.fencing
    finally:
        proc.kill()
        proc.wait()
