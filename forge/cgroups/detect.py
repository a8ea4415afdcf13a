"""Pick the cgroup driver for this machine."""

from __future__ import annotations

from pathlib import Path

from forge.cgroups.base import CgroupDriver
from forge.cgroups.v1 import CgroupV1Driver
from forge.cgroups.v2 import CgroupV2Driver
from forge.clock import Clock


def detect_driver(
    root: str | Path = "/sys/fs/cgroup", parent: str = "forge", clock: Clock | None = None
) -> CgroupDriver | None:
    """v2 when root is a cgroup2 mount offering memory, else v1 when the memory, cpu,
    cpuacct and pids hierarchies are mounted under root, else None (no isolation)."""
    v2 = CgroupV2Driver(root, parent, clock)
    if v2.available():
        return v2
    v1 = CgroupV1Driver(root, parent, clock)
    if v1.available():
        return v1
    return None
