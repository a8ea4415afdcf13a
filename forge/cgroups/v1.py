"""cgroup v1 driver: one directory per controller hierarchy.

``ROOT/{memory,cpu,cpuacct,pids[,freezer]}/PARENT/NAME``. Limits: ``memory.limit_in_bytes``
plus ``memory.memsw.limit_in_bytes`` when swap accounting exists (so swap cannot dodge
the limit), ``cpu.cfs_quota_us``/``cpu.cfs_period_us``, ``pids.max``. Stats:
``memory.usage_in_bytes``, ``cpuacct.usage`` (ns), ``pids.current``, OOM kills from the
``oom_kill`` line of ``memory.oom_control`` (kernel 4.13+; older kernels fall back to
``memory.failcnt`` > 0 counting as one). Co-mounted hierarchies (``cpu,cpuacct``) are
handled by resolving each directory once.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Literal

from forge.cgroups.base import (
    CgroupDriver,
    CgroupStats,
    check_name,
    parse_int,
    parse_kv,
    parse_pids,
    read_text,
    write_text,
)
from forge.errors import Unavailable

REQUIRED = ("memory", "cpu", "cpuacct", "pids")
OPTIONAL = ("freezer",)
CPU_PERIOD_US = 100_000
CPU_MIN_QUOTA_US = 1_000
UNLIMITED_FROM = 1 << 62  # v1 reports "no limit" as a huge page-aligned number


class CgroupV1Driver(CgroupDriver):
    version: Literal["v1", "v2"] = "v1"

    def _hier(self) -> dict[str, Path]:
        """controller → hierarchy mount dir, for the controllers mounted under root."""
        return {c: self.root / c for c in (*REQUIRED, *OPTIONAL) if (self.root / c).is_dir()}

    def available(self) -> bool:
        h = self._hier()
        return all(c in h for c in REQUIRED) and (h["memory"] / "memory.limit_in_bytes").exists()

    def _ctl(self, controller: str, name: str) -> Path:
        return self.root / controller / self.parent / check_name(name)

    def group_dirs(self, name: str) -> list[Path]:
        seen: set[str] = set()
        out = []
        for c in self._hier():
            real = os.path.realpath(self.root / c)  # cpu and cpuacct may share one mount
            if real not in seen:
                seen.add(real)
                out.append(self._ctl(c, name))
        return out

    def create(self, name: str) -> None:
        for d in self.group_dirs(name):
            try:
                d.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise Unavailable(f"cannot create cgroup {d}: {e.strerror}") from None

    def set_limits(
        self, name: str, memory_bytes: int | None, cpu_cores: float | None, pids: int | None
    ) -> None:
        if not self.exists(name):
            raise Unavailable(f"cgroup {name} does not exist")
        self._set_memory(self._ctl("memory", name), memory_bytes)
        cpu = self._ctl("cpu", name)
        write_text(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        quota = (
            -1
            if cpu_cores is None or cpu_cores <= 0
            else max(CPU_MIN_QUOTA_US, round(cpu_cores * CPU_PERIOD_US))
        )
        write_text(cpu / "cpu.cfs_quota_us", str(quota))
        write_text(self._ctl("pids", name) / "pids.max", "max" if pids is None else str(int(pids)))

    @staticmethod
    def _set_memory(d: Path, memory_bytes: int | None) -> None:
        value = "-1" if memory_bytes is None else str(int(memory_bytes))
        memsw = d / "memory.memsw.limit_in_bytes"
        if not memsw.exists():
            write_text(d / "memory.limit_in_bytes", value)
            if (d / "memory.swappiness").exists() and memory_bytes is not None:
                write_text(d / "memory.swappiness", "0")
            return
        # The kernel keeps memsw >= limit at every step, so the order depends on direction.
        try:
            write_text(d / "memory.limit_in_bytes", value)
            write_text(memsw, value)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            write_text(memsw, value)
            write_text(d / "memory.limit_in_bytes", value)

    def procs_files(self, name: str) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.group_dirs(name)]

    def procs(self, name: str) -> list[int]:
        pids: set[int] = set()
        for d in self.group_dirs(name):
            pids.update(parse_pids(read_text(d / "cgroup.procs")))
        return sorted(pids)

    def stats(self, name: str) -> CgroupStats:
        mem = self._ctl("memory", name)
        oom = parse_kv(read_text(mem / "memory.oom_control"))
        if "oom_kill" in oom:
            kills = oom["oom_kill"]
        else:
            kills = 1 if parse_int(read_text(mem / "memory.failcnt")) > 0 else 0
        limit = parse_int(read_text(mem / "memory.limit_in_bytes"), default=-1)
        pids_text = read_text(self._ctl("pids", name) / "pids.current")
        return CgroupStats(
            memory_bytes=parse_int(read_text(mem / "memory.usage_in_bytes")),
            cpu_seconds=parse_int(read_text(self._ctl("cpuacct", name) / "cpuacct.usage")) / 1e9,
            pids=parse_int(pids_text) if pids_text is not None else len(self.procs(name)),
            oom_kills=kills,
            memory_limit=None if limit < 0 or limit >= UNLIMITED_FROM else limit,
        )

    def _freeze(self, name: str, frozen: bool) -> bool:
        if "freezer" not in self._hier():
            return False
        state = self._ctl("freezer", name) / "freezer.state"
        if not state.exists():
            return False
        write_text(state, "FROZEN" if frozen else "THAWED")
        return True
