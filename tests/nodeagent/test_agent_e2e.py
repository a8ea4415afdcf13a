"""The agent against the real API with real git, real processes, cgroups and bwrap.

One API and one agent (in a thread) serve every test of the module; each test uses its own
Instances. Root, bwrap and cgroups are required (the dev/CI machines have them).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from forge.cgroups import detect_driver
from forge.nodeagent.agent import run_agent
from tests.nodeagent.test_agent_harness import (
    CLOCK,
    NEEDS,
    Api,
    make_repo,
    manifest,
    remove_network,
    wait_for,
)

pytestmark = pytest.mark.skipif(not NEEDS, reason="needs root, git and bwrap")
NODE = "node-e2e"


class Env:
    def __init__(self, api: Api, commit: str, data_dir: Path, driver: object, metrics: str) -> None:
        self.api, self.commit, self.data_dir, self.driver, self.metrics = api, commit, data_dir, driver, metrics


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    # Not under pytest's basetemp: a concurrent pytest run resets /tmp/pytest-of-root to 0700,
    # which would lock the app uids out of their release dirs mid-test.
    tmp = Path(tempfile.mkdtemp(prefix="forge-agent-e2e-"))
    api = Api(tmp)
    commit = make_repo(tmp / "repos")
    token = api.node_token(NODE)
    parent = f"forge-test-agent-{uuid.uuid4().hex[:8]}"
    driver = detect_driver(parent=parent)
    stop = threading.Event()
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        metrics = f"127.0.0.1:{s.getsockname()[1]}"
    errors: list[BaseException] = []

    def agent() -> None:
        try:
            run_agent(api.url, token, NODE, tmp / "agent", "127.0.0.1", metrics, "dev",
                      f"file://{tmp}/repos/{{full_name}}.git", stop, CLOCK, driver=driver, heartbeat_seconds=1.0)
        except BaseException as exc:  # noqa: BLE001 - surfaced by the tests below
            errors.append(exc)

    t = threading.Thread(target=agent, daemon=True)
    t.start()
    yield Env(api, commit, tmp / "agent", driver, metrics)
    for inst in api.store.list("Instance")[0]:
        if inst.spec.desired == "Running":
            api.set_desired(inst.name, "Stopped")
    wait_for(lambda: not [g for g in driver.list_groups()], timeout=30)
    stop.set()
    t.join(timeout=30)
    driver.remove_parent()
    remove_network(tmp / "agent")
    api.close()
    shutil.rmtree(tmp, ignore_errors=True)
    assert not errors, errors


def wait_running(env: Env, name: str, timeout: float = 60) -> object:
    """Wait until ready; on failure say what the Instance and its logs show."""
    try:
        return wait_for(lambda: running(env, name), timeout=timeout)
    except AssertionError:
        inst = env.api.instance(name)
        logs = [(ln.source, ln.line) for ln in env.api.store.read_logs(inst.spec.app)][-30:]
        raise AssertionError(f"{name} not ready: {inst.status.dump()} logs: {logs}") from None


def running(env: Env, name: str) -> object:
    inst = env.api.instance(name)
    return inst if inst.status.phase == "Running" and inst.status.ready else None


def test_node_registers_and_heartbeats(env: Env) -> None:
    """The agent registers its Node (capacity, isolation, runtimes, Ready) and renews its Lease."""
    # The agent creates its Node, then writes its status: wait for the status (a loaded machine
    # showed the Node between the two, capacity still 0).
    node = wait_for(lambda: env.api.store.get("Node", NODE) if _exists(env, "Node", NODE)
                    and env.api.store.get("Node", NODE).status.phase else None)
    assert node.spec.address == "127.0.0.1"
    assert node.status.capacity.cpu == float(os.cpu_count() or 1) and node.status.capacity.memory > 0
    assert 0 < node.status.allocatable.memory < node.status.capacity.memory
    assert node.status.isolation.cgroups in ("v1", "v2") and node.status.isolation.namespaces
    assert "python3" in node.status.runtimes and node.status.is_true("Ready")
    first = wait_for(lambda: env.api.store.get("Lease", f"node.{NODE}") if _exists(env, "Lease", f"node.{NODE}") else None)
    assert first.spec.holder == NODE
    later = wait_for(lambda: (lease := env.api.store.get("Lease", f"node.{NODE}")).spec.renew_time != first.spec.renew_time
                     and lease)
    assert later.spec.renew_time > first.spec.renew_time


def _exists(env: Env, kind: str, name: str) -> bool:
    try:
        env.api.store.get(kind, name)
        return True
    except Exception as exc:  # noqa: BLE001 - NotFound while the agent is still starting
        assert type(exc).__name__ == "NotFound", exc
        return False


def test_build_run_ready_env_and_secrets(env: Env) -> None:
    """An Instance is built, started in its sandbox with an env from scratch plus secrets, probed ready, and serves."""
    r = env.api.admin.post("/api/v1/secrets", json={"metadata": {"name": "hello"},
                                                    "spec": {"app": "hello", "data": {"DB_PASSWORD": "s3cr3t-value"}}})
    assert r.status_code == 201, r.text
    env.api.create_instance("hello-1-0", NODE, env.commit, manifest(env={"GREETING": "hi"}),
                            env={"APP_LEVEL": "yes"}, secret="hello")
    inst = wait_running(env, "hello-1-0")
    assert 20000 <= inst.status.port <= 39999 and inst.status.pid and inst.status.ready_time
    assert httpx.get(f"http://{inst.status.address}:{inst.status.port}/").text == "hello from forge\n"
    seen = httpx.get(f"http://{inst.status.address}:{inst.status.port}/env").json()
    app_env = seen["env"]
    assert seen["uid"] != 0
    assert app_env["PORT"] == str(inst.status.port) and app_env["FORGE_APP"] == "hello"
    assert app_env["FORGE_DEPLOYMENT"] == "hello-1" and app_env["FORGE_INSTANCE"] == "hello-1-0"
    assert app_env["GREETING"] == "hi" and app_env["APP_LEVEL"] == "yes" and app_env["DB_PASSWORD"] == "s3cr3t-value"
    leaked = {k for k in app_env if k.startswith("FORGE_") and k not in ("FORGE_APP", "FORGE_DEPLOYMENT", "FORGE_INSTANCE")}
    assert not leaked and "PYTEST_CURRENT_TEST" not in app_env
    state = (env.data_dir / "agent-state.json").read_text()
    assert "s3cr3t-value" not in state and json.loads(state)["instances"]["hello-1-0"]["pid"] == inst.status.pid
    assert inst.status.pid in env.driver.procs("inst-hello-1-0")


def test_metrics_per_instance(env: Env) -> None:
    """The metrics endpoint serves node gauges and per-Instance cgroup figures with labels."""
    wait_running(env, "hello-1-0")
    text = httpx.get(f"http://{env.metrics}/metrics").text
    for name in ("forge_agent_cpu_used", "forge_agent_memory_used_bytes", "forge_agent_memory_capacity_bytes",
                 "forge_agent_processes", "forge_agent_last_heartbeat_seconds"):
        assert f"\n{name} " in "\n" + text, name
    labels = 'app="hello",deployment="hello-1",instance="hello-1-0"'
    for name in ("forge_instance_memory_bytes", "forge_instance_cpu_seconds_total", "forge_instance_restarts_total",
                 "forge_instance_oom_kills_total"):
        assert f"{name}{{{labels}}}" in text, name
    mem = next(line for line in text.splitlines() if line.startswith(f"forge_instance_memory_bytes{{{labels}}}"))
    assert float(mem.split()[-1]) > 1_000_000


def test_build_failure_reports_tail(env: Env) -> None:
    """A failing build command fails the Instance with BuildFailed and the tail of its output."""
    env.api.create_instance("hello-2-0", NODE, env.commit,
                            manifest(build=["echo step one", "echo compiling; echo 'error: boom at line 3' >&2; exit 7"]))
    inst = wait_for(lambda: (i := env.api.instance("hello-2-0")).status.phase == "Failed" and i, timeout=60)
    assert inst.status.reason == "BuildFailed"
    assert "error: boom at line 3" in inst.status.message and "exited with code 7" in inst.status.message
    assert len(inst.status.message.encode()) <= 2200 and not env.driver.exists("build-hello-2-0")


def test_crash_loop_backs_off(env: Env) -> None:
    """A process that exits is restarted with back-off: CrashLoopBackOff, restarts rising, exit code kept."""
    env.api.create_instance("hello-3-0", NODE, env.commit, manifest(env={"MODE": "crash"}, build=[]))
    inst = wait_for(lambda: (i := env.api.instance("hello-3-0")).status.restarts >= 3 and i, timeout=60)
    assert inst.status.reason == "CrashLoopBackOff" and inst.status.exit_code == 3 and not inst.status.ready
    # Every restart is history a person can read: one Warning Event, counted.
    evs = wait_for(lambda: [e for e in env.api.store.list("Event")[0] if e.spec.involved_object.name == "hello-3-0"
                            and e.spec.reason == "CrashLoopBackOff"], timeout=10)
    assert evs[0].spec.type == "Warning" and "exited with code 3" in evs[0].spec.message
    assert sum(e.spec.count for e in evs) >= 2 and evs[0].spec.source == f"agent/{NODE}"
    env.api.set_desired("hello-3-0", "Stopped")
    wait_for(lambda: env.api.instance("hello-3-0").status.phase == "Stopped")


def test_oom_kill_is_reported(env: Env) -> None:
    """An app allocating past resources.memory is killed and reported OOMKilled; others carry on."""
    env.api.create_instance("hog-1-0", NODE, env.commit, manifest(env={"MODE": "oom"}, build=[]), app="hog")
    inst = wait_for(lambda: (i := env.api.instance("hog-1-0")).status.reason == "OOMKilled" and i, timeout=60)
    assert inst.status.oom_kills >= 1 and inst.status.restarts >= 1 and not inst.status.ready
    assert running(env, "hello-1-0"), "another app keeps running"
    env.api.set_desired("hog-1-0", "Stopped")
    wait_for(lambda: env.api.instance("hog-1-0").status.phase == "Stopped")


def test_stop_removes_process_and_cgroup(env: Env) -> None:
    """Desired Stopped stops the process tree and removes its cgroup; status says Stopped."""
    env.api.create_instance("hello-4-0", NODE, env.commit, manifest(build=[]))
    inst = wait_running(env, "hello-4-0")
    pid = inst.status.pid
    env.api.set_desired("hello-4-0", "Stopped")
    done = wait_for(lambda: (i := env.api.instance("hello-4-0")).status.phase == "Stopped" and i, timeout=30)
    assert done.status.pid is None and not done.status.ready
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[-1][:3]
    assert not env.driver.exists("inst-hello-4-0")
    wait_for(lambda: "hello-4-0" not in json.loads((env.data_dir / "agent-state.json").read_text())["instances"])


def test_logs_shipped_in_order(env: Env) -> None:
    """Build output then app output reach the control plane's log table in order."""
    env.api.create_instance("logs-1-0", NODE, env.commit, manifest(build=["echo build-line-1", "echo build-line-2"]),
                            app="logs")
    inst = wait_running(env, "logs-1-0")
    httpx.get(f"http://{inst.status.address}:{inst.status.port}/after-ready")

    def lines() -> list[tuple[str, str]]:
        return [(ln.source, ln.line) for ln in env.api.store.read_logs("logs")]

    got = wait_for(lambda: (ls := lines()) and any("/after-ready" in line for _, line in ls) and ls, timeout=30)
    texts = [line for _, line in got]
    assert texts.index("build-line-1") < texts.index("build-line-2") < next(
        i for i, t in enumerate(texts) if t.startswith("app starting on"))
    assert {s for s, t in got if t.startswith("build-line")} == {"build"}
    assert {s for s, t in got if t.startswith("app starting")} == {"app"}
    assert len(texts) == len(set(ln.id for ln in env.api.store.read_logs("logs")))


def test_killed_app_comes_back_at_the_same_address_and_port(env: Env) -> None:
    """SIGKILL of a ready app: the agent restarts it in its namespace at the same address:port,
    so what the store (and the router's map) holds stays right even before the status catches up."""
    import signal

    env.api.create_instance("hello-9-0", NODE, env.commit, manifest())
    first = wait_running(env, "hello-9-0")
    os.kill(first.status.pid, signal.SIGKILL)  # type: ignore[attr-defined]
    again = wait_for(lambda: (i := env.api.instance("hello-9-0")).status.ready and i.status.restarts >= 1 and i,
                     timeout=60)
    assert (again.status.address, again.status.port) == (first.status.address, first.status.port)  # type: ignore[attr-defined]
    assert again.status.pid != first.status.pid  # type: ignore[attr-defined]
    assert httpx.get(f"http://{again.status.address}:{again.status.port}/").status_code == 200
    env.api.set_desired("hello-9-0", "Stopped")
