"""Who a process is — machine, boot, pid namespace, pid, start time — and whether one is gone.

A restarted ``forge controllers`` (or ``forge up``) must not wait out the leader Lease its own
dead predecessor held: the Lease names the holder's process (``HolderProcess``), and a contender
takes over at once when it can *prove* that process gone (``gone``):

- the same machine (hostname and machine id) booted since: every process of the earlier boot
  is gone, whatever its pid;
- the same machine and boot, and pid namespace (pids mean the same thing there): the pid is
  not running, or runs a process that started at another time (the pid was reused).

Anything else — another machine, a container whose pids it cannot see, a missing machine id —
proves nothing: the contender waits the Lease out as before, so a live leader elsewhere is
never pre-empted. ``Processes`` is the seam: ``LocalProcesses`` reads this machine; the
simulator models its hosts' process tables behind the same two methods.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Protocol

from forge.models import HolderProcess
from forge.nodeagent.supervisor import process_start_ticks as start_ticks

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


class Processes(Protocol):
    def me(self) -> HolderProcess:
        """This process."""
        ...

    def alive(self, pid: int, start_ticks: int | None) -> bool:
        """``pid`` runs, and (when given) started at ``start_ticks`` — on this machine and boot."""
        ...


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


class LocalProcesses:
    """This machine's processes, read from /proc."""

    def me(self) -> HolderProcess:
        pid = os.getpid()
        try:
            pidns = str(os.stat("/proc/self/ns/pid").st_ino)
        except OSError:
            pidns = ""
        machine = next((m for m in (_read(p) for p in MACHINE_ID_FILES) if m), "")
        return HolderProcess(
            host=socket.gethostname(),
            machine_id=machine,
            boot_id=_read(BOOT_ID_FILE),
            pid_namespace=pidns,
            pid=pid,
            start_ticks=start_ticks(pid),
        )

    def alive(self, pid: int, ticks: int | None) -> bool:
        now = start_ticks(pid)
        return now is not None and (ticks is None or now == ticks)


def gone(holder: HolderProcess, me: HolderProcess, processes: Processes) -> str | None:
    """Why ``holder`` is provably gone, seen from ``me`` on this machine (None: it may be alive)."""
    if not holder.host or holder.host != me.host or not holder.boot_id or not me.boot_id:
        return None
    if holder.boot_id != me.boot_id:
        if holder.machine_id and holder.machine_id == me.machine_id:
            return f"{holder.host} booted again since process {holder.pid} held it"
        return None  # another machine of the same name, or one without a machine id: unknown
    if not holder.pid_namespace or holder.pid_namespace != me.pid_namespace or holder.pid <= 0:
        return None  # its pids are not ours to look up
    if holder.pid == me.pid and holder.start_ticks == me.start_ticks:
        return None  # this very process (another elector in it): alive
    if not processes.alive(holder.pid, holder.start_ticks):
        return f"process {holder.pid} on {holder.host} has exited"
    return None
