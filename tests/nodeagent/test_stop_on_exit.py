"""forge up's stop of a node's apps on exit: all at once, each with its own run.stop_timeout."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from forge.nodeagent.state import AgentState, InstanceState
from forge.nodeagent.supervisor import process_start_ticks
from forge.nodeagent.teardown import stop_local_apps

POLITE = "import time; print('up', flush=True); time.sleep(60)"
STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(60)"


def spawn(code: str, ended: dict[int, float]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    assert proc.stdout is not None and proc.stdout.readline() == b"up\n"

    def reap() -> None:  # what the agent's exit watcher does: no zombie looks alive
        proc.wait()
        ended[proc.pid] = time.monotonic()

    threading.Thread(target=reap, daemon=True).start()
    return proc


def test_each_app_gets_its_own_stop_timeout_and_all_stop_at_once(tmp_path: Path) -> None:
    """Five apps that exit on SIGTERM and one that ignores it (stop_timeout 1s): the polite ones
    end at once, the stubborn one is killed after its own 1 s — not after the 10 s default."""
    ended: dict[int, float] = {}
    state = AgentState(tmp_path / "agent-state.json")
    procs = {f"polite-{i}": spawn(POLITE, ended) for i in range(5)}
    procs["stubborn"] = spawn(STUBBORN, ended)
    for name, p in procs.items():
        state.put(
            InstanceState(
                name=name,
                app="a",
                deployment="a-1",
                cgroup=f"inst-nope-{tmp_path.name}-{name}",
                release_dir="/",
                pid=p.pid,
                pid_start=process_start_ticks(p.pid),
                stop_timeout=1.0 if name == "stubborn" else 10.0,
            )
        )
    state.save()
    t0 = time.monotonic()
    try:
        stop_local_apps(tmp_path, f"stoptest-{tmp_path.name}"[:40])
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    for p in procs.values():
        p.wait(timeout=5)
    assert all(procs[f"polite-{i}"].returncode == -signal.SIGTERM for i in range(5))
    assert procs["stubborn"].returncode == -signal.SIGKILL
    stubborn_after = ended[procs["stubborn"].pid] - t0
    assert 0.9 <= stubborn_after < 8.0, stubborn_after  # its own 1 s, not 10 s nor 6 × anything
    assert max(ended[procs[f"polite-{i}"].pid] for i in range(5)) < ended[procs["stubborn"].pid]


def test_state_without_stop_timeout_still_loads(tmp_path: Path) -> None:
    """A state file written before stop_timeout was recorded loads with None (the 10 s default applies)."""
    path = tmp_path / "agent-state.json"
    path.write_text(
        '{"version": 1, "instances": {"x": {"name": "x", "app": "a", "deployment": "a-1", '
        '"cgroup": "inst-x", "release_dir": "/"}}}'
    )
    assert AgentState(path).load().instances["x"].stop_timeout is None
