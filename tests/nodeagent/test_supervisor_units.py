"""Pure rules of the supervisor: port choice, crash back-off, environment from scratch, state file."""

from __future__ import annotations

import json
import os
import random
import socket
from pathlib import Path

import pytest

from forge.nodeagent.state import AgentState, InstanceState, LogCursor
from forge.nodeagent.supervisor import (
    PORT_MAX,
    PORT_MIN,
    backoff_delay,
    build_env,
    choose_port,
    port_is_free,
    process_start_ticks,
)


@pytest.mark.parametrize(
    ("streak", "delay"),
    [(0, 0.0), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (6, 32.0), (7, 60.0), (50, 60.0)],
    ids=["none", "first", "second", "third", "fourth", "sixth", "capped", "long-streak"],
)
def test_backoff_schedule(streak: int, delay: float) -> None:
    """Crash back-off doubles from 1 s and is capped at 60 s."""
    assert backoff_delay(streak) == delay


def test_choose_port_in_range_and_not_held() -> None:
    """A chosen port is in 20000-39999 and never one another Instance holds."""
    rng = random.Random(7)
    held = {rng.randint(PORT_MIN, PORT_MAX) for _ in range(50)}
    for _ in range(200):
        port = choose_port(held, rng=random.Random(7), is_free=lambda p: True)
        assert PORT_MIN <= port <= PORT_MAX and port not in held
        held.add(port)


def test_choose_port_skips_ports_that_do_not_bind() -> None:
    """A port some other process listens on is bind-tested and skipped."""
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        busy = s.getsockname()[1]
        assert not port_is_free(busy)
        port = choose_port(set(), lo=busy, hi=busy + 1)
        assert port == busy + 1


def test_choose_port_exhausted_range_raises() -> None:
    """When every port is held the allocation fails instead of double-booking."""
    with pytest.raises(OSError):
        choose_port({30000, 30001}, lo=30000, hi=30001, is_free=lambda p: True)


def test_env_is_built_from_scratch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing of the agent's environment (token, FORGE_* settings) reaches an app."""
    monkeypatch.setenv("FORGE_ADMIN_TOKEN", "agent-secret-token")
    monkeypatch.setenv("FORGE_NODE_TOKEN", "forge-node.n1.xyz")
    monkeypatch.setenv("SOME_AGENT_VAR", "leak")
    env = build_env("hello", "hello-3", "hello-3-0", "/rel", 23456, {"A": "manifest", "B": "manifest"},
                    {"B": "app"}, {"SECRET": "s3cr3t"})
    assert set(env) == {"PATH", "HOME", "LANG", "PYTHONUNBUFFERED", "A", "B", "SECRET", "FORGE_APP",
                        "FORGE_DEPLOYMENT", "FORGE_INSTANCE", "PORT"}
    assert "agent-secret-token" not in env.values() and "forge-node.n1.xyz" not in env.values()
    assert "FORGE_ADMIN_TOKEN" not in env and "FORGE_NODE_TOKEN" not in env and "SOME_AGENT_VAR" not in env
    assert env["PORT"] == "23456" and env["HOME"] == "/rel"
    assert (env["FORGE_APP"], env["FORGE_DEPLOYMENT"], env["FORGE_INSTANCE"]) == ("hello", "hello-3", "hello-3-0")
    assert env["A"] == "manifest" and env["B"] == "app" and env["SECRET"] == "s3cr3t"


def test_env_platform_keys_win_over_app_env() -> None:
    """An App env cannot override PORT or the FORGE_ identity variables."""
    env = build_env("a", "a-1", "a-1-0", "/r", 20001, {}, {"PORT": "1", "FORGE_APP": "evil"})
    assert env["PORT"] == "20001" and env["FORGE_APP"] == "a"


def test_state_round_trip(tmp_path: Path) -> None:
    """The state file survives a reload with every field and log cursor intact."""
    st = AgentState(tmp_path / "agent-state.json")
    inst = InstanceState(name="hello-1-0", app="hello", deployment="hello-1", cgroup="inst-hello-1-0",
                         release_dir="/r", port=23000, pid=1234, pid_start=99, started_time=1.5, ready=True,
                         restarts=2, logs={"app": LogCursor(shipped=10)})
    st.put(inst)
    again = AgentState(tmp_path / "agent-state.json").load()
    assert again.get("hello-1-0") == inst
    assert again.ports_held() == {23000} and again.ports_held(exclude="hello-1-0") == set()
    again.remove("hello-1-0")
    assert AgentState(tmp_path / "agent-state.json").load().names() == []


def test_state_file_is_private_and_has_no_leftover_tmp(tmp_path: Path) -> None:
    """Atomic writes leave a 0600 file and no temporary file behind."""
    st = AgentState(tmp_path / "agent-state.json")
    st.put(InstanceState(name="a-1-0", app="a", deployment="a-1", cgroup="inst-a-1-0", release_dir="/r"))
    assert (tmp_path / "agent-state.json").stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["agent-state.json"]
    assert json.loads((tmp_path / "agent-state.json").read_text())["instances"]["a-1-0"]["app"] == "a"


def test_unreadable_state_is_empty(tmp_path: Path) -> None:
    """A corrupt state file loads as empty (orphans are then found through their cgroups)."""
    (tmp_path / "s.json").write_text("{not json")
    assert AgentState(tmp_path / "s.json").load().names() == []


def test_process_start_ticks_tells_live_from_gone() -> None:
    """Our own pid has a start time; a pid that does not exist has none."""
    assert process_start_ticks(os.getpid()) is not None
    assert process_start_ticks(2**22 + 12345) is None
