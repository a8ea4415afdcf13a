"""The agent's resource series (#25): the usage sampler reads each Instance's cgroup through the
real v1 and v2 drivers (over directories laid out like cgroupfs), sends batches to the real API
in process, and ``GET /apps/APP/metrics`` shows the CPU, memory and restarts it measured."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import falcon
import httpx
import pytest

from forge.api import create_app
from forge.cgroups import CgroupV1Driver, CgroupV2Driver
from forge.client import ForgeClient
from forge.clock import FakeClock
from forge.config import Config
from forge.nodeagent.state import AgentState, InstanceState
from forge.nodeagent.usage import MAX_PENDING, UsageSampler
from forge.store.sqlite import SqliteStore

TOKEN = "admin-test-token-0123456789"
T0 = 1_800_000_000
COMMIT = "1" * 40


def v1_driver(root: Path) -> tuple[Any, Callable[[str, float, int], None]]:
    for c in ("memory", "cpu", "cpuacct", "pids", "freezer"):
        (root / c).mkdir(parents=True)
    (root / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    driver = CgroupV1Driver(root, "forge")

    def set_usage(group: str, cpu_seconds: float, memory: int) -> None:
        driver.create(group)
        (root / "cpuacct" / "forge" / group / "cpuacct.usage").write_text(f"{int(cpu_seconds * 1e9)}\n")
        (root / "memory" / "forge" / group / "memory.usage_in_bytes").write_text(f"{memory}\n")

    return driver, set_usage


def v2_driver(root: Path) -> tuple[Any, Callable[[str, float, int], None]]:
    root.mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (root / "cgroup.subtree_control").write_text("")
    driver = CgroupV2Driver(root, "forge")

    def set_usage(group: str, cpu_seconds: float, memory: int) -> None:
        driver.create(group)
        d = root / "forge" / group
        (d / "cpu.stat").write_text(f"usage_usec {int(cpu_seconds * 1e6)}\nuser_usec 0\nsystem_usec 0\n")
        (d / "memory.current").write_text(f"{memory}\n")

    return driver, set_usage


class Switch(httpx.BaseTransport):
    """The in-process API, or a network that refuses connections while ``down``."""

    def __init__(self, app: falcon.App) -> None:
        self.inner = httpx.WSGITransport(app=app)
        self.down = False

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        return self.inner.handle_request(request)


@dataclass
class Node:
    clock: FakeClock
    store: SqliteStore
    admin: ForgeClient
    net: Switch
    sampler: UsageSampler
    state: AgentState
    set_usage: Callable[[str, float, int], None]

    def metrics(self) -> dict[str, Any]:
        return dict(self.admin.request("GET", "/api/v1/apps/hello/metrics", params={"since": "10m"}))

    def at(self, series: str) -> dict[int, Any]:
        return {t: v for t, v in self.metrics()["series"][series] if v is not None}


@pytest.fixture(params=["v1", "v2"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    clock = FakeClock(T0 + 1)
    store = SqliteStore(str(tmp_path / "forge.db"), clock=clock)
    app = create_app(Config(data_dir=tmp_path, admin_token=TOKEN, domain="forge.test"), store, clock)
    net = Switch(app)
    admin = ForgeClient("http://api", TOKEN, transport=httpx.WSGITransport(app=app))
    admin.request(
        "POST", "/api/v1/apps", json={"metadata": {"name": "hello"}, "spec": {"repo": "acme/hello"}}
    )
    for name, node_name in (("hello-1-0", "n1"), ("hello-1-1", "n1"), ("hello-1-2", "n2")):
        labels = {"forge.dev/app": "hello", "forge.dev/node": node_name}
        spec = {
            "app": "hello",
            "deployment": "hello-1",
            "repo": "acme/hello",
            "commit": COMMIT,
            "node": node_name,
        }
        admin.request(
            "POST", "/api/v1/instances", json={"metadata": {"name": name, "labels": labels}, "spec": spec}
        )
    token = admin.request("POST", "/api/v1/nodes/n1/token", json={})["token"]
    driver, set_usage = (v1_driver if request.param == "v1" else v2_driver)(tmp_path / "cg")
    state = AgentState(tmp_path / "agent-state.json")
    client = ForgeClient("http://api", token, transport=net)
    sampler = UsageSampler(client, "n1", state, driver, clock)
    yield Node(clock, store, admin, net, sampler, state, set_usage)
    client.close()
    admin.close()
    store.close()


def run(node: Node, name: str, group: str, started_ago: float | None = None, restarts: int = 0) -> None:
    started = None if started_ago is None else node.clock.monotonic() - started_ago
    with node.state.lock:
        node.state.instances[name] = InstanceState(
            name, "hello", "hello-1", group, "/r", pid=4242, started_mono=started, restarts=restarts
        )


def test_cpu_memory_and_restarts_reach_the_apps_metrics(node: Node) -> None:
    """CPU is cores over the interval, memory the bytes at the sample; two Instances add up."""
    run(node, "hello-1-0", "inst-a", started_ago=None)
    run(node, "hello-1-1", "inst-b", started_ago=5.0)
    node.set_usage("inst-a", 100.0, 50 << 20)
    node.set_usage("inst-b", 1.0, 30 << 20)
    node.sampler.tick()
    first = T0
    assert node.at("memory") == {first: 80 << 20}
    assert node.at("cpu") == {first: pytest.approx(0.2)}  # only inst-b, 1 s of CPU in its 5 s of life
    node.clock.advance(10)
    node.set_usage("inst-a", 102.5, 70 << 20)  # 2.5 s over 10 s: a quarter of a core
    node.set_usage("inst-b", 2.0, 30 << 20)
    with node.state.lock:
        node.state.instances["hello-1-0"].restarts = 2
    node.sampler.tick()
    assert node.at("cpu")[first + 10] == pytest.approx(0.35)
    assert node.at("memory")[first + 10] == 100 << 20
    m = node.metrics()
    assert m["restarts"] == 2 and m["resources"]["memory"] == {"now": 100 << 20, "peak": 100 << 20}


def test_batches_wait_while_the_api_is_down_and_count_once(node: Node) -> None:
    """Unsent batches are kept (bounded) and sent oldest first when the API is back, each once."""
    run(node, "hello-1-0", "inst-a", started_ago=1.0)
    node.set_usage("inst-a", 0.0, 10 << 20)
    node.net.down = True
    for i in range(5):
        node.set_usage("inst-a", float(i), (10 + i) << 20)
        node.sampler.tick()
        node.clock.advance(10)
    assert len(node.sampler.pending) == 5
    node.net.down = False
    node.sampler.flush()
    assert not node.sampler.pending
    node.sampler.flush()  # nothing left to send twice
    mem = node.at("memory")
    assert sorted(mem.values()) == [(10 + i) << 20 for i in range(5)]
    assert sorted(node.at("cpu").values()) == pytest.approx([0.0, 0.1, 0.1, 0.1, 0.1])
    node.net.down = True
    for _ in range(MAX_PENDING + 3):
        node.sampler.tick()
    assert len(node.sampler.pending) == MAX_PENDING and node.sampler.dropped_total == 3


def test_an_instance_without_a_cgroup_or_process_is_not_reported(node: Node) -> None:
    """Nothing to read, nothing sent; the restarts it had while down count when it is back."""
    run(node, "hello-1-0", "inst-a")
    node.set_usage("inst-a", 1.0, 1 << 20)
    node.sampler.tick()
    with node.state.lock:
        node.state.instances["hello-1-0"].pid = None
        node.state.instances["hello-1-0"].restarts = 1
    node.clock.advance(10)
    assert node.sampler.sample() == []
    with node.state.lock:
        node.state.instances["hello-1-0"].pid = 4343
    node.clock.advance(10)
    (s,) = node.sampler.sample()
    assert s.restarts == 1
    run(node, "hello-1-1", "never-made")
    assert [x.instance for x in node.sampler.sample()] == ["hello-1-0"]
