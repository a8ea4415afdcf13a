"""cgroup v2 (unified hierarchy) driver.

Layout: ``ROOT/PARENT/NAME`` with ``memory.max``, ``memory.swap.max`` (0, so swap cannot
dodge the limit), ``cpu.max`` (``quota period``), ``pids.max``; stats from
``memory.current``, ``cpu.stat`` (``usage_usec``), ``pids.current`` and ``memory.events``
(``oom_kill``). Controllers are enabled in every ancestor's ``cgroup.subtree_control``.
``kill_all`` writes ``cgroup.kill`` when the kernel has it (5.14+), else freezes the group
and SIGKILLs each process.
"""

from __future__ import annotations

import errno
from pathlib import Path
from typing import Literal

from forge.cgroups.base import (
    KILL_ROUNDS,
    KILL_STEP,
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

CONTROLLERS = ("memory", "cpu", "pids")
CPU_PERIOD_US = 100_000
CPU_MIN_QUOTA_US = 1_000


class CgroupV2Driver(CgroupDriver):
    version: Literal["v1", "v2"] = "v2"

    def available(self) -> bool:
        text = read_text(self.root / "cgroup.controllers")
        return text is not None and "memory" in text.split()

    def group_dirs(self, name: str) -> list[Path]:
        return [self.root / self.parent / check_name(name)]

    def _dir(self, name: str) -> Path:
        return self.group_dirs(name)[0]

    def create(self, name: str) -> None:
        check_name(name)
        cur = self.root
        for part in [*self.parent.split("/"), name]:
            self._enable_controllers(cur)
            cur = cur / part
            try:
                cur.mkdir(exist_ok=True)
            except OSError as e:
                raise Unavailable(f"cannot create cgroup {cur}: {e.strerror}") from None

    def _enable_controllers(self, d: Path) -> None:
        """Delegate memory/cpu/pids to children of ``d`` (what this kernel offers)."""
        offered = (read_text(d / "cgroup.controllers") or "").split()
        enabled = (read_text(d / "cgroup.subtree_control") or "").split()
        want = [c for c in CONTROLLERS if c in offered and c not in enabled]
        if not want:
            return
        try:
            write_text(d / "cgroup.subtree_control", " ".join(f"+{c}" for c in want))
        except OSError as e:
            # EBUSY: d has processes of its own (the "no internal processes" rule).
            raise Unavailable(
                f"cannot enable {', '.join(want)} in {d}: {e.strerror}"
                + (" (the cgroup has processes of its own)" if e.errno == errno.EBUSY else "")
            ) from None

    def set_limits(
        self, name: str, memory_bytes: int | None, cpu_cores: float | None, pids: int | None
    ) -> None:
        d = self._dir(name)
        if not d.is_dir():
            raise Unavailable(f"cgroup {name} does not exist")
        write_text(d / "memory.max", "max" if memory_bytes is None else str(int(memory_bytes)))
        if (d / "memory.swap.max").exists():
            write_text(d / "memory.swap.max", "max" if memory_bytes is None else "0")
        if cpu_cores is None or cpu_cores <= 0:
            write_text(d / "cpu.max", f"max {CPU_PERIOD_US}")
        else:
            quota = max(CPU_MIN_QUOTA_US, int(round(cpu_cores * CPU_PERIOD_US)))
            write_text(d / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        write_text(d / "pids.max", "max" if pids is None else str(int(pids)))

    def procs_files(self, name: str) -> list[str]:
        return [str(self._dir(name) / "cgroup.procs")]

    def procs(self, name: str) -> list[int]:
        return parse_pids(read_text(self._dir(name) / "cgroup.procs"))

    def stats(self, name: str) -> CgroupStats:
        d = self._dir(name)
        cpu = parse_kv(read_text(d / "cpu.stat"))
        events = parse_kv(read_text(d / "memory.events"))
        limit = (read_text(d / "memory.max") or "max").strip()
        pids_text = read_text(d / "pids.current")
        return CgroupStats(
            memory_bytes=parse_int(read_text(d / "memory.current")),
            cpu_seconds=cpu.get("usage_usec", 0) / 1e6,
            pids=parse_int(pids_text) if pids_text is not None else len(self.procs(name)),
            oom_kills=events.get("oom_kill", 0),
            memory_limit=None if limit == "max" or not limit.isdigit() else int(limit),
        )

    def _freeze(self, name: str, frozen: bool) -> bool:
        f = self._dir(name) / "cgroup.freeze"
        if not f.exists():
            return False
        write_text(f, "1" if frozen else "0")
        return True

    def kill_all(self, name: str) -> None:
        kill = self._dir(name) / "cgroup.kill"
        if not kill.exists():
            super().kill_all(name)
            return
        for _ in range(KILL_ROUNDS):
            # cgroup.kill also reaches processes forked while the kill is in flight.
            write_text(kill, "1")
            if not self.procs(name):
                return
            self.clock.sleep(KILL_STEP)
        super().kill_all(name)
