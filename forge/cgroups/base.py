"""The cgroup driver interface shared by the v1 and v2 implementations.

Forge's groups live under one parent directory (``forge/`` by default) inside every
hierarchy it uses, so Forge never creates, limits, kills or removes anyone else's group.
Group names are single path components (``hello-3-0``, ``build-hello-3``): no ``/``, no
``..``, nothing that could walk out of the parent.

Only ``forge.cgroups`` touches ``/sys/fs/cgroup``; every driver takes the root as a
constructor argument so tests can point it at a temporary directory laid out like cgroupfs.
"""

from __future__ import annotations

import abc
import errno
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from forge.clock import Clock, SystemClock
from forge.errors import Invalid, Unavailable

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
PARENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,127})*$")
KILL_ROUNDS = 50  # × KILL_STEP seconds: a kill_all never waits longer than ~5 s
KILL_STEP = 0.1


@dataclass(frozen=True)
class CgroupStats:
    memory_bytes: int
    cpu_seconds: float
    pids: int
    oom_kills: int
    memory_limit: int | None


def check_name(name: str) -> str:
    """A group name is one path component; raise Invalid otherwise."""
    if not NAME.match(name) or name in (".", "..") or ".." in name:
        raise Invalid(f"{name!r} is not a valid cgroup name (letters, digits, '-', '_', '.'; no '/' or '..')")
    return name


def check_parent(parent: str) -> str:
    parent = parent.strip("/")
    if not PARENT.match(parent) or any(p in (".", "..") or ".." in p for p in parent.split("/")):
        raise Invalid(f"{parent!r} is not a valid cgroup parent path")
    return parent


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist (the group or the file is gone)."""
    try:
        return path.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # the group was removed while we read it
            return None
        raise


def write_text(path: Path, value: str) -> None:
    """Write one value in a single write(2), as cgroupfs wants (O_TRUNC is harmless there;
    O_CREAT lets the same code fill a test directory laid out like cgroupfs)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def parse_int(text: str | None, default: int = 0) -> int:
    if text is None:
        return default
    text = text.strip()
    return int(text) if text.lstrip("-").isdigit() else default


def parse_kv(text: str | None) -> dict[str, int]:
    """``key value`` lines (memory.events, cpu.stat, memory.oom_control) → dict."""
    out: dict[str, int] = {}
    for line in (text or "").splitlines():
        key, _, value = line.strip().partition(" ")
        if value.strip().lstrip("-").isdigit():
            out[key] = int(value.strip())
    return out


def parse_pids(text: str | None) -> list[int]:
    return [int(x) for x in (text or "").split() if x.isdigit()]


def signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            continue


class CgroupDriver(abc.ABC):
    """Create, limit, observe, kill and remove Forge's groups in one cgroup layout."""

    version: Literal["v1", "v2"]

    def __init__(
        self, root: str | Path = "/sys/fs/cgroup", parent: str = "forge", clock: Clock | None = None
    ):
        self.root = Path(root)
        self.parent = check_parent(parent)
        self.clock = clock or SystemClock()

    # ------------------------------------------------------------------ abstract
    @abc.abstractmethod
    def available(self) -> bool:
        """True when this layout exists under root and Forge may create groups in it."""

    @abc.abstractmethod
    def create(self, name: str) -> None:
        """Ensure the group exists in every hierarchy (idempotent)."""

    @abc.abstractmethod
    def set_limits(
        self, name: str, memory_bytes: int | None, cpu_cores: float | None, pids: int | None
    ) -> None:
        """Set memory (no swap), CPU quota and pids limits; None means unlimited."""

    @abc.abstractmethod
    def procs_files(self, name: str) -> list[str]:
        """The files a child writes its own pid into to join the group before it execs."""

    @abc.abstractmethod
    def procs(self, name: str) -> list[int]:
        """Pids in the group ([] when it does not exist)."""

    @abc.abstractmethod
    def stats(self, name: str) -> CgroupStats:
        """Memory, CPU time, process count, OOM kills and memory limit of the group."""

    @abc.abstractmethod
    def group_dirs(self, name: str) -> list[Path]:
        """The group's directory in every hierarchy."""

    @abc.abstractmethod
    def _freeze(self, name: str, frozen: bool) -> bool:
        """Freeze or thaw the group; False when no freezer is available."""

    # ------------------------------------------------------------------ shared
    def add_process(self, name: str, pid: int) -> None:
        """Move a running process into the group (every hierarchy)."""
        for f in self.procs_files(check_name(name)):
            try:
                write_text(Path(f), str(pid))
            except OSError as e:
                if e.errno == errno.ESRCH:
                    raise Invalid(f"process {pid} does not exist") from None
                raise Unavailable(f"cannot move process {pid} into cgroup {name}: {e.strerror}") from None

    def oom_kills(self, name: str) -> int:
        return self.stats(name).oom_kills

    def exists(self, name: str) -> bool:
        return any(d.is_dir() for d in self.group_dirs(check_name(name)))

    def list_groups(self) -> list[str]:
        """Names of Forge's groups (union over hierarchies), sorted."""
        names: set[str] = set()
        for base in self._parent_dirs():
            if base.is_dir():
                names.update(p.name for p in base.iterdir() if p.is_dir() and NAME.match(p.name))
        return sorted(names)

    def kill_all(self, name: str) -> None:
        """SIGKILL every process in the group until it is empty (bounded: ~5 s)."""
        check_name(name)
        # Thaw first: an agent killed between freezing and thawing (below) left the group frozen,
        # its processes asleep with SIGKILL pending; every kill must be safe to resume.
        self.thaw(name)
        for _ in range(KILL_ROUNDS):
            pids = self.procs(name)
            if not pids:
                return
            frozen = self._freeze(name, True)
            signal_all(self.procs(name), signal.SIGKILL)
            if frozen:
                self._freeze(name, False)
            if not self.procs(name):
                return
            self.clock.sleep(KILL_STEP)
        left = self.procs(name)
        if left:
            raise Unavailable(f"cgroup {name} still has processes {left[:10]} after SIGKILL")

    def thaw(self, name: str) -> None:
        """Make sure the group is not frozen (a no-op without a freezer or the group)."""
        if self.exists(name):
            try:
                self._freeze(name, False)
            except OSError:
                pass

    def remove(self, name: str) -> None:
        """Remove the group from every hierarchy (call after kill_all); absent is fine."""
        check_name(name)
        for _ in range(KILL_ROUNDS):
            busy = []
            for d in self.group_dirs(name):
                try:
                    d.rmdir()
                except FileNotFoundError:
                    continue
                except OSError as e:
                    if e.errno not in (errno.EBUSY, errno.ENOTEMPTY):
                        raise Unavailable(f"cannot remove cgroup {d}: {e.strerror}") from None
                    busy.append(d)
            if not busy:
                return
            self.clock.sleep(KILL_STEP)
        raise Unavailable(f"cgroup {name} is still busy: {', '.join(map(str, busy))}")

    def remove_parent(self) -> bool:
        """Remove Forge's (empty) parent group from every hierarchy, e.g. on uninstall or
        after tests; False when some group still lives under it."""
        if self.list_groups():
            return False
        for d in self._parent_dirs():
            try:
                d.rmdir()
            except FileNotFoundError:
                continue
        return True

    def _parent_dirs(self) -> list[Path]:
        return [d.parent for d in self.group_dirs("x")]
