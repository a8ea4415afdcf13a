"""What ``forge up`` (and ``forge agent --stop-apps-on-exit``) removes of a node install on exit:
its apps' processes, its network (namespaces, bridge, table) and its release filesystems."""

from __future__ import annotations

import logging
import threading
from pathlib import Path


def unmount_release_disks(data_dir: Path) -> None:
    """The release filesystems of this node install (``forge up`` on exit; images stay, the next
    start mounts them again)."""
    from forge.nodeagent.diskfence import DiskFence, image_mode_missing

    if image_mode_missing() is None:
        DiskFence(data_dir, mode="image").unmount_all()


def remove_node_network(data_dir: Path) -> None:
    """Namespaces, bridge and nftables table of this node install (``forge up`` on exit)."""
    from forge.nodeagent.network import NodeNetwork
    from forge.proxy.nft import nft_available

    if nft_available() is None:
        NodeNetwork(data_dir).teardown()


def stop_local_apps(data_dir: Path, node: str, grace: float | None = None) -> None:
    """Stop every process the agent's state file lists, all at once: SIGTERM → its own
    ``run.stop_timeout`` (or ``grace``) → SIGKILL of the cgroup. An app that exits on SIGTERM
    costs nothing; the whole stop takes about the longest stop_timeout an app actually needs.

    The state file keeps the entries: the next agent start finds the processes gone and
    starts them again from the stored desired state, which is how ``forge up`` comes back.
    """
    from forge.cgroups import detect_driver
    from forge.clock import SystemClock
    from forge.nodeagent.agent import node_cgroup_parent
    from forge.nodeagent.sandbox import Sandbox
    from forge.nodeagent.state import AgentState
    from forge.nodeagent.supervisor import process_start_ticks

    state = AgentState(data_dir / "agent-state.json").load()
    driver = detect_driver(parent=node_cgroup_parent(node, data_dir))
    sandbox = Sandbox(driver, mode="dev")
    clock = SystemClock()

    def stop_one(cgroup: str | None, pid: int | None, pid_start: int | None, wait: float) -> None:
        if pid and process_start_ticks(pid) != pid_start:
            pid = None  # exited already, and the number may belong to someone else now
        group = cgroup if driver is not None and cgroup and driver.exists(cgroup) else None
        if group or pid:
            sandbox.stop(group, pid, wait, clock)

    waits = {
        name: grace if grace is not None else (st.stop_timeout if st.stop_timeout is not None else 10.0)
        for name, st in state.instances.items()
    }
    threads = [
        threading.Thread(target=stop_one, args=(st.cgroup, st.pid, st.pid_start, waits[name]))
        for name, st in state.instances.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=max(waits.values(), default=0.0) + 15)
    if driver is not None:
        for group in driver.list_groups():  # builds cut short, anything the state did not name
            driver.thaw(group)
            driver.kill_all(group)
            driver.remove(group)
        driver.remove_parent()  # forge/NODE itself: nothing of this node is left in the hierarchy
    logging.getLogger("forge.agent").info("stopped %d app process(es) on exit", len(threads))
