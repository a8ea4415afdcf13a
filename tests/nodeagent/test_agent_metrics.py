"""The agent's /metrics (``forge agent --metrics-listen``) is promtool-clean, with and without Instances."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.cgroups import CgroupV1Driver
from forge.nodeagent.metrics import AgentCollector, serve_metrics
from forge.nodeagent.state import AgentState, InstanceState
from tests.metrics_helpers import assert_promtool_clean, needs_promtool, parse_exposition

KERNEL_FILES = {  # what a v1 cgroupfs shows for a group using 5 MiB, 1.5 s of CPU, 3 pids, 1 OOM kill
    "memory/memory.usage_in_bytes": "5242880\n", "memory/memory.oom_control": "oom_kill_disable 0\noom_kill 1\n",
    "memory/memory.limit_in_bytes": "268435456\n", "cpuacct/cpuacct.usage": "1500000000\n",
    "pids/pids.current": "3\n",
}


@pytest.fixture
def driver(tmp_path: Path) -> CgroupV1Driver:
    """The real v1 driver over a directory laid out like v1 cgroupfs."""
    root = tmp_path / "cg"
    for c in ("memory", "cpu", "cpuacct", "pids", "freezer"):
        (root / c).mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    d = CgroupV1Driver(root, "forge")
    d.create("hello-1-0")
    for rel, text in KERNEL_FILES.items():
        ctl, _, name = rel.partition("/")
        (root / ctl / "forge" / "hello-1-0" / name).write_text(text)
    return d


@pytest.fixture
def scrape(tmp_path: Path, driver: CgroupV1Driver) -> Iterator[tuple[AgentState, str]]:
    """An agent state plus the URL its metrics server answers on."""
    state = AgentState(tmp_path / "agent-state.json")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server, thread = serve_metrics(f"127.0.0.1:{port}", AgentCollector(state, driver, lambda: 1_900_000_000.0))
    yield state, f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    server.server_close()
    thread.join(5)


@needs_promtool
@pytest.mark.parametrize("with_instances", [False, True], ids=["idle-node", "two-instances"])
def test_agent_metrics_pass_promtool(scrape: tuple[AgentState, str], with_instances: bool) -> None:
    """Node gauges and per-Instance cgroup figures pass promtool; counters end in _total."""
    state, url = scrape
    if with_instances:
        with state.lock:
            state.instances["hello-1-0"] = InstanceState("hello-1-0", "hello", "hello-1", "hello-1-0", "/r", restarts=2)
            state.instances["hello-1-1"] = InstanceState("hello-1-1", "hello", "hello-1", "hello-1-1", "/r", pid=4242)
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    assert_promtool_clean(text)
    exp = parse_exposition(text)
    for name in ("forge_agent_cpu_used", "forge_agent_memory_used_bytes", "forge_agent_memory_capacity_bytes",
                 "forge_agent_last_heartbeat_seconds", "forge_agent_processes", "forge_instance_memory_bytes"):
        assert exp.types[name] == "gauge"
    for name in ("forge_instance_cpu_seconds_total", "forge_instance_restarts_total", "forge_instance_oom_kills_total"):
        assert exp.types[name] == "counter"
    assert exp.value("forge_agent_last_heartbeat_seconds") == 1_900_000_000.0
    if with_instances:
        one = {"app": "hello", "deployment": "hello-1", "instance": "hello-1-0"}
        assert exp.value("forge_instance_memory_bytes", **one) == 5242880.0
        assert exp.value("forge_instance_cpu_seconds_total", **one) == 1.5
        assert exp.value("forge_instance_restarts_total", **one) == 2.0
        assert exp.value("forge_instance_oom_kills_total", **one) == 1.0
        assert exp.value("forge_agent_processes") == 4.0  # 3 in the cgroup + the one without a cgroup
    else:
        assert exp.value("forge_agent_processes") == 0.0
