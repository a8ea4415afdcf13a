"""One ``forge up`` per data dir, children that never outlive it, readiness that checks *who* answers.

* **The lock.** ``DATA/forge-up.lock`` is ``flock``-ed before anything starts, and every child
  inherits the locked descriptor: the lock is free only when the supervisor *and all of its
  children* are gone. A second ``forge up`` on the same data dir refuses while the first lives;
  after a SIGKILL of the first, it stops the children the first recorded (``DATA/run/forge-up.json``:
  pid and start time of each, so a reused pid is never signalled) and then takes the lock.
* **Children end with their parent.** Each child is started with ``PR_SET_PDEATHSIG`` = SIGTERM:
  when the supervisor dies, however it dies, the kernel asks each child to stop (the agent then
  stops the apps and removes the data plane, as on Ctrl-C).
* **Readiness checks the answerer.** A port that answers is not proof: a leftover of an earlier
  run may hold it (SO_REUSEPORT even lets two Caddies share one). ``listeners(port)`` names the
  processes listening there, and readiness requires them all to be the child or its descendants.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from forge.clock import Clock
from forge.errors import Unavailable
from forge.nodeagent.supervisor import process_start_ticks as start_ticks

log = logging.getLogger("forge.up")

PR_SET_PDEATHSIG: Final[int] = 1
LOCK_NAME: Final[str] = "forge-up.lock"
RECORD: Final[str] = "run/forge-up.json"
# Loaded here, in the parent: the child of a threaded process must not import or load anything
# between fork and exec (another thread may hold a lock it would need), it only calls prctl.
_LIBC: Final[Any] = ctypes.CDLL(None, use_errno=True)


def die_with_parent() -> None:
    """``preexec_fn`` of every child: SIGTERM when the process that started it dies."""
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def alive(pid: int, ticks: int | None) -> bool:
    now = start_ticks(pid)
    return now is not None and (ticks is None or now == ticks)


class UpLock:
    """The data dir's lock and the record of who holds it."""

    def __init__(self, data: Path, clock: Clock) -> None:
        self.data, self.clock = data, clock
        self.path = data / LOCK_NAME
        self.record_path = data / RECORD
        self.fd: int | None = None
        self.children: dict[str, tuple[int, int | None]] = {}

    def acquire(self, wait_children: float = 60.0) -> int:
        """Take the lock (the fd children must inherit); Unavailable when another forge up runs."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if not self._try(fd):
                prev = self._read()
                pid, ticks = int(prev.get("pid") or 0), prev.get("start")
                if pid and alive(pid, ticks):
                    raise Unavailable(
                        f"another forge up (pid {pid}) is running on {self.data}; stop it first"
                    )
                self._stop_leftovers(prev, wait_children)
                deadline = self.clock.monotonic() + wait_children
                while not self._try(fd):
                    if self.clock.monotonic() > deadline:
                        raise Unavailable(
                            f"{self.path} is still locked by processes of an earlier forge up; "
                            f"see `fuser -v {self.path}`"
                        )
                    self.clock.sleep(0.1)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.children = {}
        self._write()
        return fd

    @staticmethod
    def _try(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                return False
            raise
        return True

    def _stop_leftovers(self, prev: dict[str, Any], wait: float) -> None:
        """SIGTERM the children an earlier (dead) forge up recorded, SIGKILL what stays."""
        kids = {n: (int(p), t) for n, (p, t) in (prev.get("children") or {}).items()}
        live = {n: pt for n, pt in kids.items() if alive(*pt)}
        if not live:
            return
        log.warning(
            "an earlier forge up on %s died; stopping its children %s",
            self.data,
            ", ".join(f"{n} (pid {p})" for n, (p, _) in sorted(live.items())),
        )
        for _, (pid, _t) in live.items():
            _signal(pid, signal.SIGTERM)
        deadline = self.clock.monotonic() + wait
        while any(alive(*pt) for pt in live.values()) and self.clock.monotonic() < deadline:
            self.clock.sleep(0.1)
        for name, (pid, t) in live.items():
            if alive(pid, t):
                log.warning("%s (pid %d) did not stop; killing it", name, pid)
                _signal(pid, signal.SIGKILL)

    def child_started(self, name: str, pid: int) -> None:
        self.children[name] = (pid, start_ticks(pid))
        self._write()

    def release(self) -> None:
        if self.fd is not None:
            try:
                self.record_path.unlink(missing_ok=True)
            finally:
                os.close(self.fd)
                self.fd = None

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write(self) -> None:
        self.record_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        body = {
            "pid": os.getpid(),
            "start": start_ticks(os.getpid()),
            "children": {n: [p, t] for n, (p, t) in self.children.items()},
        }
        tmp = self.record_path.with_name(self.record_path.name + ".tmp")
        tmp.write_text(json.dumps(body))
        os.replace(tmp, self.record_path)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------- who listens


def listeners(port: int, proc: str = "/proc") -> set[int]:
    """Pids with a TCP socket listening on ``port`` (any address, IPv4 or IPv6) in this netns."""
    inodes: set[str] = set()
    for table in ("net/tcp", "net/tcp6"):
        try:
            lines = Path(proc, table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) > 9 and parts[3] == "0A" and int(parts[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{parts[9]}]")
    pids: set[int] = set()
    if not inodes:
        return pids
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            for fd in os.scandir(f"{proc}/{entry.name}/fd"):
                try:
                    if os.readlink(fd.path) in inodes:
                        pids.add(int(entry.name))
                        break
                except OSError:
                    continue
        except OSError:
            continue
    return pids


def descendants(pid: int, proc: str = "/proc") -> set[int]:
    """``pid`` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"{proc}/{entry.name}/stat").read_text()
        except OSError:
            continue
        ppid = int(raw[raw.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = {pid}, [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def owned_by(pid: int, port: int, find: Callable[[int], set[int]] = listeners) -> bool:
    """Something listens on ``port`` and every listener is ``pid`` or one of its descendants."""
    found = find(port)
    return bool(found) and found <= descendants(pid)
