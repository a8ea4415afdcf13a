"""Agent footprint: RSS and idle CPU of the node agent supervising 20 Instances.

Runs the real API (in this process, a threading wsgiref server over a temp SQLite store), the
agent as a subprocess (``python -m forge.nodeagent.agent``), and 20 tiny http.server apps built
from a real git repo. Once every Instance is ready and the agent is idle (nothing changes; it
only probes every 10 s and renews its Lease every 5 s), it samples /proc/PID/status VmRSS and
the utime+stime delta of /proc/PID/stat over a window, beside a baseline measured in the same
run: an idle ``python3 -c 'import time; time.sleep(…)'``. Targets: ≤ 60 MB RSS, ≤ 1 % of a core.

    sudo .venv/bin/python bench/agent_footprint.py [--instances 20] [--window 10] [--chatty] [--drain]

``--drain`` adds a log drain (syslog over TCP to a receiver in this process) to the 20 Instances'
App before the agent starts, so the figures include the drain's worker, notifier and marks;
with ``--chatty`` every probe's request line goes through it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from forge.cgroups import detect_driver  # noqa: E402
from tests.nodeagent.test_agent_harness import CLOCK, Api, make_repo, manifest, wait_for  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def writers_pss(data_dir: Path) -> tuple[int, int]:
    """How many log writer processes serve this agent's Instances, and their summed PSS (bytes)."""
    count, pss = 0, 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            if b"forge.nodeagent.logpump" not in cmd or str(data_dir).encode() not in cmd:
                continue
            for line in Path(f"/proc/{entry}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1]) * 1024
            count += 1
        except OSError:
            continue
    return count, pss


def measure(pids: dict[str, int], window: float) -> dict[str, tuple[int, float]]:
    """RSS at the end and CPU fraction of one core over ``window`` seconds, per process."""
    start = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = CLOCK.monotonic()
    CLOCK.sleep(window)
    elapsed = CLOCK.monotonic() - t0
    return {k: (rss_bytes(p), (cpu_seconds(p) - start[k]) / elapsed) for k, p in pids.items()}


def start_drain(api: Api) -> list[int]:
    """An App record for the bench Instances, a syslog+tcp receiver here, and a drain to it."""
    import socket
    import threading

    from forge.models import App

    api.store.create(App.model_validate({"metadata": {"name": "bench"}, "spec": {"repo": "acme/bench"}}))
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    count = [0]

    def serve() -> None:
        while True:
            conn, _ = srv.accept()
            threading.Thread(target=read, args=(conn,), daemon=True).start()

    def read(conn: socket.socket) -> None:
        from forge.nodeagent.drains.syslog import unframe

        rest = b""
        while data := conn.recv(65536):
            msgs, rest = unframe(rest + data)
            count[0] += len(msgs)

    threading.Thread(target=serve, daemon=True).start()
    r = api.admin.post("/api/v1/apps/bench/drains", json={"url": f"syslog+tcp://127.0.0.1:{srv.getsockname()[1]}"})
    assert r.status_code == 201, r.text
    return count


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--instances", type=int, default=20)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--chatty", action="store_true", help="apps log every request (each probe ships a line)")
    ap.add_argument("--drain", action="store_true", help="the app has a log drain (syslog+tcp, local receiver)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="forge-bench-agent-"))
    api = Api(tmp)
    commit = make_repo(tmp / "repos")
    node = "bench-node"
    parent = f"forge-bench-{uuid.uuid4().hex[:8]}"
    driver = detect_driver(parent=parent)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT),
           "FORGE_NODE_TOKEN": api.node_token(node), "FORGE_LOG_LEVEL": "WARNING",
           "FORGE_GIT_URL_TEMPLATE": f"file://{tmp}/repos/{{full_name}}.git"}
    m = manifest(build=[], env={} if args.chatty else {"QUIET": "1"})
    m["health"]["intervalSeconds"] = 10.0
    names = [f"bench-1-{i}" for i in range(args.instances)]
    for n in names:
        api.create_instance(n, node, commit, m, app="bench")
    received = start_drain(api) if args.drain else None
    with open(tmp / "agent.out", "ab") as out:
        agent = subprocess.Popen(
            [sys.executable, "-m", "forge.nodeagent.agent", "--api", api.url, "--name", node,
             "--data-dir", str(tmp / "agent"), "--metrics-listen", "127.0.0.1:0", "--cgroup-parent", parent],
            env=env, stdout=out, stderr=out, cwd=str(ROOT))
    baseline = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
    try:
        t0 = CLOCK.monotonic()
        wait_for(lambda: all(api.instance(n).status.ready for n in names), timeout=180, step=0.5)
        print(f"{args.instances} Instances ({'chatty' if args.chatty else 'quiet'} apps) ready after {CLOCK.monotonic() - t0:.1f}s; settling 3s, "
              f"then measuring {args.window:g}s of idle")
        CLOCK.sleep(3)
        got = measure({"agent": agent.pid, "baseline": baseline.pid}, args.window)
        (a_rss, a_cpu), (b_rss, b_cpu) = got["agent"], got["baseline"]
        print(f"agent    RSS {a_rss / 2**20:6.1f} MB   idle CPU {a_cpu * 100:5.2f} % of a core")
        print(f"baseline RSS {b_rss / 2**20:6.1f} MB   idle CPU {b_cpu * 100:5.2f} % of a core  "
              f"(python3 -c 'import time; time.sleep(…)')")
        print(f"ratio    RSS x{a_rss / max(b_rss, 1):.2f}   agent RSS - baseline = {(a_rss - b_rss) / 2**20:.1f} MB")
        n_writers, w_pss = writers_pss(tmp / "agent")
        print(f"log writers {n_writers} processes (one per Instance, in its cgroup, outside the agent): "
              f"PSS {w_pss / 2**20:.1f} MB in all, {w_pss / max(n_writers, 1) / 2**20:.1f} MB each")
        if received is not None:
            print(f"drain    {received[0]} messages received by the syslog receiver so far")
        print(f"targets  RSS <= 60 MB: {'met' if a_rss <= 60 * 2**20 else 'MISSED'};  "
              f"idle CPU <= 1 %: {'met' if a_cpu <= 0.01 else 'MISSED'}")
    finally:
        baseline.kill()
        baseline.wait()
        for n in names:
            api.set_desired(n, "Stopped")
        try:
            wait_for(lambda: not driver.list_groups(), timeout=60, step=0.5)
        finally:
            agent.terminate()
            agent.wait(timeout=30)
            for g in driver.list_groups():
                driver.kill_all(g)
                driver.remove(g)
            driver.remove_parent()
            api.close()
            from forge.nodeagent.teardown import unmount_release_disks

            unmount_release_disks(tmp / "agent")  # else each run leaves a loop mount behind
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
