"""Starting, watching and stopping app processes; the pure rules they follow.

Pure parts: ``choose_port`` (a free port in 20000–39999 no other Instance here holds),
``backoff_delay`` (1 s, 2 s, 4 s … capped at 60 s) and ``build_env`` (built from scratch:
nothing of the agent's own environment reaches an app). The shell: ``Supervisor`` spawns
through the sandbox into cgroup ``inst-NAME`` with its output going to the Instance's log
writer (``forge.nodeagent.logwriter``: a process in the same cgroup that owns the pipe, bounds
what reaches the disk and outlives the agent), tells whether a recorded pid is still the
process it started (alive, same start time, and in its cgroup) and stops through the sandbox.
"""

from __future__ import annotations

import errno
import os
import random
import select
import signal
import socket
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from forge.clock import Clock
from forge.nodeagent import logwriter
from forge.nodeagent.spec import RunSpec
from forge.nodeagent.state import InstanceState

PORT_MIN, PORT_MAX = 20000, 39999
BACKOFF_BASE, BACKOFF_CAP = 1.0, 60.0
JOIN_GRACE = 10.0
DRAIN_SECONDS = 5.0  # how long an ended app's log writer may take to write what is left in its pipe
DRAIN_STEP = 0.02
SANE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def backoff_delay(streak: int, base: float = BACKOFF_BASE, cap: float = BACKOFF_CAP) -> float:
    """Delay before restart number ``streak`` of a crash streak (1 → 1 s, 2 → 2 s, … ≤ cap)."""
    if streak <= 0:
        return 0.0
    return min(cap, base * (2 ** min(streak - 1, 16)))


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def choose_port(
    held: Iterable[int],
    rng: random.Random | None = None,
    is_free: Callable[[int], bool] = port_is_free,
    lo: int = PORT_MIN,
    hi: int = PORT_MAX,
    attempts: int = 200,
) -> int:
    """A port in [lo, hi] that no Instance here holds and that binds; OSError when none is found."""
    taken = set(held)
    r = rng or random.Random()
    for _ in range(attempts):
        port = r.randint(lo, hi)
        if port not in taken and is_free(port):
            return port
    for port in range(lo, hi + 1):  # a crowded range: walk it once before giving up
        if port not in taken and is_free(port):
            return port
    raise OSError(errno.EADDRINUSE, f"no free port in {lo}-{hi}")


RELEASE_TOOL_DIRS: tuple[str, ...] = (".venv/bin", "venv/bin", "node_modules/.bin", "bin")


def build_env(
    app: str,
    deployment: str,
    instance: str,
    home: str,
    port: int | None,
    manifest_env: dict[str, str],
    app_env: dict[str, str],
    secrets: dict[str, str] | None = None,
) -> dict[str, str]:
    """The complete environment of a build or an app; later sources win, platform keys last.

    The release's own tool directories lead ``PATH`` (like Heroku's ``.profile.d``), so every
    process of a release — ``forge run APP -- python …`` too — finds its virtualenv's ``python``
    and ``node_modules/.bin``; a ``PATH`` the app sets replaces the whole of it."""
    tools = [f"{home}/{d}" for d in RELEASE_TOOL_DIRS] if home else []
    path = ":".join([*tools, SANE_PATH])
    env: dict[str, str] = {"PATH": path, "HOME": home, "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1"}
    env.update(manifest_env)
    env.update(app_env)
    env.update(secrets or {})
    env.update({"FORGE_APP": app, "FORGE_DEPLOYMENT": deployment, "FORGE_INSTANCE": instance})
    if port is not None:
        env["PORT"] = str(port)
    return env


def is_log_writer(pid: int) -> bool:
    """Is ``pid`` an Instance's log writer (``forge.nodeagent.logpump``)?"""
    try:
        return b"forge.nodeagent.logpump" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def process_start_ticks(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None when gone or a zombie."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def descendants(pid: int, proc: Path = Path("/proc")) -> list[int]:
    """Every live descendant of ``pid`` (children, grandchildren …), from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 10000:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


class Supervisor:
    def __init__(
        self,
        sandbox: Any,
        driver: Any,
        clock: Clock,
        spec_factory: Callable[..., Any],
        owner_for: Callable[[str], tuple[int | None, int | None]],
        log_cap: int = logwriter.DEFAULT_CAP,
    ) -> None:
        self.sandbox, self.driver, self.clock = sandbox, driver, clock
        self.spec_factory, self.owner_for = spec_factory, owner_for
        self.log_cap = log_cap  # bytes of an Instance's app log kept on this node
        self._writers: list[subprocess.Popen[bytes]] = []  # started in this agent's lifetime: reaped here

    def start(
        self,
        st: InstanceState,
        run: RunSpec,
        env: dict[str, str],
        limits: tuple[int, float, int],
        app_log: Path,
        net: dict[str, str] | None = None,
        fsize_limit: int | None = None,
        storage: str | None = None,
        stdin_fd: int | None = None,
        exit_file: str | None = None,
    ) -> None:
        """Spawn the app detached into its cgroup (and its network namespace when ``net`` names
        one: ``{"netns": path, "resolv_conf": text}``), its output piped to a log writer in the
        same cgroup that writes ``app_log``'s segments; fills pid, start time and pid_start."""
        self.reap_writers()
        app_log.parent.mkdir(parents=True, exist_ok=True)
        for legacy in (app_log, app_log.with_name(app_log.name + ".1")):
            legacy.unlink(missing_ok=True)  # a plain file from before log writers: never shipped again
        if self.driver is not None:
            if self.driver.exists(st.cgroup):
                self.driver.kill_all(st.cgroup)
                self.driver.remove(st.cgroup)
            self.driver.create(st.cgroup)
            self.driver.set_limits(st.cgroup, *limits)
        uid, gid = self.owner_for(st.app)
        r, w = os.pipe()
        try:
            files = self.driver.procs_files(st.cgroup) if self.driver is not None else []
            self._writers.append(
                logwriter.spawn(
                    r,
                    app_log.parent,
                    app_log.name.removesuffix(".log"),
                    self.log_cap,
                    cgroup_files=files,
                    first=st.cursor("app").shipped,
                )
            )
            os.close(r)
            r = -1
            pid = self._spawn_app(st, run, env, uid, gid, w, fsize_limit, storage, stdin_fd, exit_file, net)
        finally:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)  # the app and its writer have their own copies; the agent keeps none
        st.pid, st.pid_start = pid, process_start_ticks(pid)
        st.stop_timeout = run.stop_timeout
        st.started_time, st.started_mono = self.clock.now(), self.clock.monotonic()
        st.exit_code = None

    def _spawn_app(
        self,
        st: InstanceState,
        run: RunSpec,
        env: dict[str, str],
        uid: int | None,
        gid: int | None,
        output_fd: int,
        fsize_limit: int | None,
        storage: str | None,
        stdin_fd: int | None,
        exit_file: str | None,
        net: dict[str, str] | None,
    ) -> int:
        spec = self.spec_factory(
            app=st.app,
            workdir=st.release_dir,
            command=run.command,
            env=env,
            uid=uid,
            gid=gid,
            cgroup=st.cgroup if self.driver is not None else None,
            fsize_limit=fsize_limit,
            storage=storage,
            stdin_fd=stdin_fd,
            exit_file=exit_file,
            **(net or {}),
        )
        spec.output_fd = output_fd
        return int(self.sandbox.spawn(spec))

    def reap_writers(self) -> None:
        """Collect log writers of this agent's lifetime that have ended (each ends at its EOF)."""
        self._writers = [w for w in self._writers if w.poll() is None]

    def is_running(self, st: InstanceState) -> bool:
        """The recorded pid is still the process we started (not a reused pid, not a zombie)."""
        if not st.pid:
            return False
        ticks = process_start_ticks(st.pid)
        if ticks is None or (st.pid_start is not None and ticks != st.pid_start):
            return False
        if self.driver is None:
            return True
        if st.pid in set(self.driver.procs(st.cgroup)):
            return True
        # Just spawned: the join shim writes itself into the group a moment after fork (and
        # exits 125 if it cannot), so a young live process outside the group is still joining.
        return bool(st.started_time) and self.clock.now() - (st.started_time or 0.0) < JOIN_GRACE

    def app_pids(self, st: InstanceState) -> list[int]:
        """The Instance's processes, its main one first: its cgroup's, or (no cgroups) the
        recorded pid and its descendants."""
        if not st.pid:
            return []
        if self.driver is not None and self.driver.exists(st.cgroup):
            return [st.pid, *(p for p in self.driver.procs(st.cgroup) if p != st.pid)]
        return [st.pid, *descendants(st.pid)]

    def oom_kills(self, cgroup: str) -> int:
        if self.driver is None or not self.driver.exists(cgroup):
            return 0
        return int(self.driver.oom_kills(cgroup))

    def stop(self, st: InstanceState, grace: float) -> int | None:
        """SIGTERM → grace → SIGKILL of the whole cgroup, which is then removed; the exit code if ours."""
        cgroup = st.cgroup if self.driver is not None else None
        if st.pid or (cgroup and self.driver.exists(cgroup)):
            self.sandbox.stop(cgroup, st.pid, grace, self.clock)
        code = self.sandbox.poll(st.pid) if st.pid else None
        self.remove_cgroup(st.cgroup)
        self.reap_writers()
        return code

    def exit_code(self, pid: int | None, wait: float = 1.0) -> int | None:
        """Exit code of a process we spawned in this agent's lifetime (reaps it); else None.

        A process leaves its cgroup a moment before it turns into a zombie, so when it is
        seen gone but not yet reapable, wait (bounded) on its pidfd for the exit to land."""
        if not pid:
            return None
        code = self.sandbox.poll(pid)
        if code is not None:
            return code
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            return None
        try:
            select.select([fd], [], [], wait)
        finally:
            os.close(fd)
        return self.sandbox.poll(pid)

    def remove_cgroup(self, cgroup: str) -> None:
        """Kill what is left in the group and remove it — the log writer last, once it has
        written what the app printed before it ended (its crash trace is in the pipe)."""
        if self.driver is not None and self.driver.exists(cgroup):
            self._drain_writers(cgroup)
            self.driver.kill_all(cgroup)
            self.driver.remove(cgroup)
        self.reap_writers()

    def _drain_writers(self, cgroup: str) -> None:
        """SIGKILL every process of the group but its log writers, then give those (bounded)
        time to reach EOF and end by themselves."""
        procs = set(self.driver.procs(cgroup))
        writers = {p for p in procs if is_log_writer(p)}
        for pid in procs - writers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        deadline = self.clock.monotonic() + DRAIN_SECONDS
        while writers and self.clock.monotonic() < deadline:
            self.reap_writers()
            writers &= set(self.driver.procs(cgroup))
            if writers:
                self.clock.sleep(DRAIN_STEP)
