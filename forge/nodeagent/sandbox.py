"""Builds and apps as fenced Linux processes: a cgroup, a bubblewrap sandbox, their own uid.

How a process starts (the combination that works as root on cgroup v1 *and* unprivileged):

    /bin/sh -c JOIN  n  cgroup.procs…  --  [setpriv --reuid U --regid U --clear-groups --]
        bwrap --unshare-pid --unshare-ipc --unshare-uts [--unshare-user --disable-userns]
              --new-session  ro system dirs, minimal /etc, --proc /proc --dev /dev, --tmpfs /tmp,
              --bind WORKDIR WORKDIR --chdir WORKDIR  /bin/sh -c COMMAND

1. ``JOIN`` (a few lines of dash) writes its own pid into every cgroup.procs file of the
   group *before* anything execs, so no early child escapes the limits; if a write fails it
   exits 125 rather than run outside the group (fail closed).
2. As root with an app uid, ``setpriv`` drops to that uid/gid with no supplementary groups.
   bwrap then runs unprivileged and builds its namespaces inside a new user namespace
   (unprivileged user namespaces work here), in which the uid maps to itself: the app is
   the same non-root uid inside and outside. (The alternative, root bwrap with ``--uid``,
   leaves the process root outside the namespace — weaker.)
3. The release dir is bound read-write *at its own path* (so venvs and absolute paths made
   during the build stay valid when the app runs) and is the only writable path besides a
   private tmpfs ``/tmp`` (the sandbox root itself is remounted read-only). Nothing else of the agent's data dir (the store, the secret key,
   other releases) exists in the sandbox. No ``--die-with-parent``: apps outlive the agent.
4. With a network namespace (``spec.netns``, made by ``forge.nodeagent.network``), ``nsenter
   --net`` moves the process into it before the uid drop, and the sandbox's ``/etc/resolv.conf``
   is the namespace's own (``spec.resolv_conf``). The namespace belongs to the host's user
   namespace, so the app (no capabilities there) cannot change its addresses, routes or rules.

The app uid needs to *reach* its release dir to bind it, so ``prepare_workdir`` gives its
ancestors the search bit (o+x, never o+r) — directory listings stay closed — except
``releases/APP``, which only the app's own gid may pass (root:GID 0710); every release dir is
0700 owned by its own app uid (``forge.hostperms``: the whole permission model).
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from forge.buildsteps import CACHE_PATH
from forge.cgroups import CgroupDriver
from forge.clock import Clock, SystemClock
from forge.errors import Invalid, TerminalError, Unavailable
from forge.models import Isolation

__all__ = ["Sandbox", "SandboxSpec", "SandboxTimeout", "UidAllocator", "prepare_workdir"]

log = logging.getLogger(__name__)

DEFAULT_PATH: Final[str] = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
JOIN_FAILED: Final[int] = 125
JOIN: Final[str] = (
    'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; n=$((n-1)); shift; done; '
    'shift; exec "$@"'
)
# A one-shot's variant: the root shell stays the parent, and once the command ends writes its exit
# code to an agent-owned file (outside every app tree) — so the code survives an agent restart.
# ``trap true TERM`` (a handler, not an ignore: exec resets it) lets the command take SIGTERM and
# the shell still record how it ended. Builtins only: this shell is root and runs with the app's
# environment, so it must never look anything up on an app-supplied PATH.
JOIN_RECORD: Final[str] = (
    'n=$1; shift; f=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; n=$((n-1)); shift; done; '
    'shift; trap true TERM; "$@"; c=$?; echo "$c" > "$f"; exit "$c"'
)
SYSTEM_DIRS: Final = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES: Final = (
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "mime.types",
    "protocols",
    "services",
    "os-release",
    "debian_version",
    "python3",
    "python3.11",
    "python3.12",
    "pip.conf",
    "gitconfig",
)
STOP_STEP: Final[float] = 0.1
UID_BASE: Final[int] = 200_000
UID_SPAN: Final[int] = 100_000


class SandboxTimeout(TerminalError):
    """``Sandbox.run`` hit its timeout; every process of the run was killed."""

    reason = "DeadlineExceeded"


STORAGE_PATH: Final[str] = "/storage"  # where an app's persistent storage appears in its sandbox
BUILD_CACHE_PATH: Final[str] = CACHE_PATH  # where a build finds its App's build cache (forge.buildsteps)


@dataclass
class SandboxSpec:
    app: str
    workdir: str  # release dir: the only writable path (plus a private /tmp); also $HOME
    command: str  # run with /bin/sh -c inside the sandbox
    env: dict[str, str]  # from scratch; only PATH (and HOME=workdir) are added when missing
    uid: int | None = None  # None = the current user (dev without root)
    gid: int | None = None
    cgroup: str | None = None  # group name under the driver's parent, joined before exec
    stdout_path: str = "/dev/null"  # opened in append mode
    stderr_path: str = "/dev/null"
    netns: str | None = None  # path of a named network namespace (/run/netns/…) to run in
    ro_files: tuple[tuple[str, str], ...] = ()  # (host path, sandbox path) bound read-only (build allowlist)
    output_fd: int | None = None  # stdout+stderr to this fd instead of the paths (builds: a stamping pipe)
    resolv_conf: str | None = None  # the sandbox's /etc/resolv.conf (its netns has its own resolver)
    fsize_limit: int | None = None  # RLIMIT_FSIZE (disk limits in watcher mode: no file outgrows the limit)
    storage: str | None = None  # the app's persistent storage dir: writable, at STORAGE_PATH in the sandbox
    stdin_fd: int | None = None  # the process's stdin (an interactive run's pipe); /dev/null otherwise
    exit_file: str | None = None  # a one-shot: where the root shell records the exit code (agent-owned)
    build_cache: str | None = None  # a build: its App's own cache dir, writable at BUILD_CACHE_PATH


@dataclass
class _Check:
    isolation: Isolation
    warned: bool = False


class Sandbox:
    """Starts, runs and stops sandboxed processes; see the module docstring for the shape."""

    def __init__(
        self,
        driver: CgroupDriver | None,
        mode: str = "dev",
        bwrap: str | None = shutil.which("bwrap"),
        ro_paths: tuple[str, ...] = (),
        clock: Clock | None = None,
    ) -> None:
        self.driver = driver
        self.mode = mode
        self.bwrap = bwrap
        self.ro_paths = ro_paths  # extra read-only paths (e.g. a runtime outside /usr)
        self.setpriv = shutil.which("setpriv")
        self.nsenter = shutil.which("nsenter")
        self.clock = clock or SystemClock()
        self._state: _Check | None = None
        self._children: dict[int, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ capability check
    def check(self) -> Isolation:
        """What isolation this node has; production raises Unavailable when any is missing."""
        if self._state is None:
            self._state = _Check(self._probe())
        iso = self._state.isolation
        if iso.missing and self.mode == "production":
            raise Unavailable(
                "refusing to build or run without isolation (FORGE_MODE=production): missing "
                + "; ".join(iso.missing)
            )
        if iso.missing and not self._state.warned:
            self._state.warned = True
            log.warning("isolation incomplete (dev mode, running anyway): missing %s", "; ".join(iso.missing))
        return iso.model_copy()

    def _probe(self) -> Isolation:
        missing: list[str] = []
        cg: Literal["v1", "v2", "none"] = "none"
        if self.driver is not None and self.driver.available():
            cg = self.driver.version
        else:
            missing.append("cgroups (no usable cgroup v1 or v2 memory/cpu/pids hierarchy)")
        namespaces = False
        if not self.bwrap:
            missing.append("bwrap (install bubblewrap)")
        else:
            # Probe the path apps take: as root that is bwrap after dropping to a non-root uid
            # (so it needs unprivileged user namespaces), as a user plain unprivileged bwrap.
            argv = [self.bwrap, *self._ns_flags(unprivileged=True), "--ro-bind", "/", "/", "true"]
            if os.geteuid() == 0 and self.setpriv:
                argv = [self.setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", "--", *argv]
            elif os.geteuid() == 0:
                argv = [self.bwrap, *self._ns_flags(unprivileged=False), "--ro-bind", "/", "/", "true"]
            done = subprocess.run(
                argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10, check=False, cwd="/", env={}
            )
            namespaces = done.returncode == 0
            if not namespaces:
                err = done.stderr.decode(errors="replace").strip()[:200]
                missing.append(f"namespaces (bwrap cannot create them unprivileged: {err})")
        if os.geteuid() == 0 and not self.setpriv:
            missing.append("setpriv (util-linux; needed to run apps as their own uid)")
        return Isolation(cgroups=cg, namespaces=namespaces, bwrap=bool(self.bwrap), missing=missing)

    # ------------------------------------------------------------------ start
    def spawn(self, spec: SandboxSpec) -> int:
        """Start detached (own session, stdin /dev/null, output appended to the log files,
        in its cgroup before exec); returns the pid of the top process."""
        return self._start(spec).pid

    def run(self, spec: SandboxSpec, timeout: float) -> int:
        """Run in the foreground and return the exit code (negative: killed by that signal;
        a signal death inside bwrap shows as 128+N). On timeout every process of the run
        (its whole cgroup, or its session without one) is killed and SandboxTimeout raised."""
        proc = self._start(spec)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill_now(spec.cgroup, proc.pid)
            proc.wait()
            raise SandboxTimeout(f"{spec.command[:80]!r} did not finish within {timeout:g}s") from None
        finally:
            self._children.pop(proc.pid, None)

    def poll(self, pid: int) -> int | None:
        """Exit code of a process this Sandbox started, once it has exited (reaping it);
        None while it runs or when it is not our child (e.g. adopted after a restart)."""
        proc = self._children.get(pid)
        if proc is None:
            return None
        code = proc.poll()
        if code is not None:
            del self._children[pid]
        return code

    def _start(self, spec: SandboxSpec) -> subprocess.Popen[bytes]:
        iso = self.check()
        unprivileged_agent = os.geteuid() != 0
        if spec.uid is not None and unprivileged_agent and spec.uid != os.geteuid():
            raise Invalid(f"cannot run {spec.app} as uid {spec.uid}: the agent is not root")
        if self.mode == "production" and not unprivileged_agent and spec.uid is None:
            raise Invalid(f"refusing to run {spec.app} as root (FORGE_MODE=production needs an app uid)")
        env = dict(spec.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOME", spec.workdir)
        if spec.storage:  # the fixed path inside the sandbox; the host path where there is none
            env["FORGE_STORAGE_DIR"] = STORAGE_PATH if self.bwrap and iso.namespaces else spec.storage
        files = self.driver.procs_files(spec.cgroup) if self.driver is not None and spec.cgroup else []
        if spec.cgroup and self.driver is not None and not self.driver.exists(spec.cgroup):
            raise Invalid(f"cgroup {spec.cgroup} does not exist (create it and set its limits first)")
        drop: list[str] = []
        if spec.fsize_limit:
            prlimit = shutil.which("prlimit") or "prlimit"
            drop += [prlimit, f"--fsize={int(spec.fsize_limit)}:{int(spec.fsize_limit)}", "--"]
        if spec.netns:
            if unprivileged_agent:
                raise Invalid(
                    f"cannot put {spec.app} in network namespace {spec.netns}: the agent is not root"
                )
            # Before the uid drop: entering a namespace needs CAP_SYS_ADMIN, which the app never has.
            drop += [str(self.nsenter or "nsenter"), f"--net={spec.netns}", "--"]
        if spec.uid is not None and not unprivileged_agent:
            gid = spec.gid if spec.gid is not None else spec.uid
            drop += [
                str(self.setpriv or "setpriv"),
                f"--reuid={spec.uid}",
                f"--regid={gid}",
                "--clear-groups",
                "--",
            ]
        fds: list[int] = []
        try:
            if self.bwrap and iso.namespaces:
                inner = self._bwrap_argv(
                    spec, unprivileged=unprivileged_agent or spec.uid is not None, fds=fds
                )
            else:
                inner = ["/bin/sh", "-c", spec.command]
            if spec.exit_file:
                argv = [
                    "/bin/sh",
                    "-c",
                    JOIN_RECORD,
                    "forge-join",
                    str(len(files)),
                    spec.exit_file,
                    *files,
                    "--",
                    *drop,
                    *inner,
                ]
            else:
                argv = ["/bin/sh", "-c", JOIN, "forge-join", str(len(files)), *files, "--", *drop, *inner]
            if spec.output_fd is not None:
                proc = subprocess.Popen(
                    argv,
                    env=env,
                    cwd=spec.workdir,
                    stdin=_stdin(spec),
                    stdout=spec.output_fd,
                    stderr=spec.output_fd,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=fds,
                )
            else:
                with open(spec.stdout_path, "ab") as out, open(spec.stderr_path, "ab") as err:
                    proc = subprocess.Popen(
                        argv,
                        env=env,
                        cwd=spec.workdir,
                        stdin=_stdin(spec),
                        stdout=out,
                        stderr=err,
                        start_new_session=True,
                        close_fds=True,
                        pass_fds=fds,
                    )
        finally:
            for fd in fds:
                os.close(fd)
        self._children[proc.pid] = proc
        return proc

    @staticmethod
    def _ns_flags(unprivileged: bool) -> list[str]:
        flags = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session"]
        return [*flags, "--unshare-user", "--disable-userns"] if unprivileged else flags

    def _bwrap_argv(self, spec: SandboxSpec, unprivileged: bool, fds: list[int]) -> list[str]:
        assert self.bwrap is not None
        a = [self.bwrap, *self._ns_flags(unprivileged), "--hostname", spec.app[:63] or "forge"]
        for d in SYSTEM_DIRS:
            if os.path.islink(d):
                a += ["--symlink", os.readlink(d), d]
            elif os.path.isdir(d):
                a += ["--ro-bind", d, d]
        for name in ETC_FILES:
            if name == "resolv.conf" and spec.resolv_conf is not None:
                a += [
                    "--perms",
                    "0644",
                    "--ro-bind-data",
                    str(_data_fd(spec.resolv_conf, fds)),
                    "/etc/resolv.conf",
                ]
            else:
                a += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        uid = spec.uid if spec.uid is not None else os.geteuid()
        gid = spec.gid if spec.gid is not None else (spec.uid if spec.uid is not None else os.getegid())
        for dest, text in _user_db(spec.app, uid, gid, spec.workdir):
            a += ["--perms", "0644", "--ro-bind-data", str(_data_fd(text, fds)), dest]
        for p in self.ro_paths:
            a += ["--ro-bind-try", p, p]
        for src, dest in spec.ro_files:
            a += ["--ro-bind-try", src, dest]
        a += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
        a += ["--bind", spec.workdir, spec.workdir]
        if spec.storage:
            a += ["--bind", spec.storage, STORAGE_PATH]
        if spec.build_cache:
            a += ["--bind", spec.build_cache, BUILD_CACHE_PATH]
        # The sandbox root is a tmpfs bwrap fills; without this, /etc and the (empty)
        # ancestors of the release dir would be writable scratch space.
        a += ["--remount-ro", "/", "--chdir", spec.workdir, "/bin/sh", "-c", spec.command]
        return a

    # ------------------------------------------------------------------ stop
    def stop(self, cgroup: str | None, pid: int | None, grace: float, clock: Clock | None = None) -> None:
        """SIGTERM everything → wait up to ``grace`` → SIGKILL every process → remove the
        cgroup. With a cgroup nothing escapes (double-forked daemons included); without one
        the process group and session of ``pid`` are what can be found."""
        clock = clock or self.clock
        self._signal(cgroup, pid, signal.SIGTERM)
        deadline = clock.monotonic() + grace
        while self._alive(cgroup, pid) and clock.monotonic() < deadline:
            clock.sleep(min(STOP_STEP, max(0.0, deadline - clock.monotonic())))
        self._kill_now(cgroup, pid)
        if cgroup and self.driver is not None:
            self.driver.remove(cgroup)

    def _kill_now(self, cgroup: str | None, pid: int | None) -> None:
        self._signal(cgroup, pid, signal.SIGKILL)
        if cgroup and self.driver is not None and self.driver.exists(cgroup):
            self.driver.kill_all(cgroup)
        if pid is not None:
            self.poll(pid)

    def _members(self, cgroup: str | None, pid: int | None) -> Iterator[int]:
        if cgroup and self.driver is not None:
            yield from self.driver.procs(cgroup)
        if pid is not None:
            yield from session_members(pid)

    def _signal(self, cgroup: str | None, pid: int | None, sig: int) -> None:
        for p in set(self._members(cgroup, pid)):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                continue
        if pid is not None:
            self.poll(pid)

    def _alive(self, cgroup: str | None, pid: int | None) -> bool:
        if pid is not None:
            self.poll(pid)
        return any(True for _ in self._members(cgroup, pid))


def _stdin(spec: SandboxSpec) -> int:
    return spec.stdin_fd if spec.stdin_fd is not None else subprocess.DEVNULL


def _data_fd(text: str, fds: list[int]) -> int:
    """A pipe already holding ``text`` (tiny, fits the pipe buffer) for bwrap to read."""
    r, w = os.pipe()
    try:
        os.write(w, text.encode())
    finally:
        os.close(w)
    fds.append(r)
    return r


def _user_db(app: str, uid: int, gid: int, home: str) -> list[tuple[str, str]]:
    """/etc/passwd and /etc/group naming only root, nobody and this app's user."""
    name = "root" if uid == 0 else _user_name(uid, app)
    users = [
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin",
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin",
    ]
    groups = ["root:x:0:", "nogroup:x:65534:"]
    if uid not in (0, 65534):
        users.append(f"{name}:x:{uid}:{gid}:{app}:{home}:/bin/sh")
    if gid not in (0, 65534):
        groups.append(f"{name}:x:{gid}:")
    return [("/etc/passwd", "\n".join(users) + "\n"), ("/etc/group", "\n".join(groups) + "\n")]


def _user_name(uid: int, app: str) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return shlex.quote(f"app-{app}")[:32].strip("'") or "app"


# ---------------------------------------------------------------------- uids and dirs


class UidAllocator:
    """A stable unprivileged uid (= gid) per app: ``200000 + crc32(salt/app) % 100000``, moved
    to the next free one on a collision; the map lives in a small JSON file (0600). The salt is
    the install's identity, so an app named ``hello`` in two installs on one machine runs as two
    different uids (never one uid that could reach the other's files or processes).

    When an app is gone and its files here are deleted, its uid is *retired* (``retire``): never
    handed to any app again, so a new app of the same name can never own a file of the old one
    that was missed. (The file: ``{"apps": {APP: UID}, "retired": [UID…]}``; the flat
    ``{APP: UID}`` of older installs is read as apps.)"""

    def __init__(self, path: str | Path, salt: str = "") -> None:
        self.path = Path(path)
        self.salt = salt
        self._lock = threading.Lock()

    def uid_for(self, app: str) -> int:
        with self._lock:
            table, retired = self._load()
            if app in table:
                return table[app]
            used = set(table.values()) | retired
            uid = (
                UID_BASE + zlib.crc32(f"{self.salt}/{app}".encode() if self.salt else app.encode()) % UID_SPAN
            )
            for _ in range(UID_SPAN):
                if uid not in used:
                    break
                uid = UID_BASE + (uid - UID_BASE + 1) % UID_SPAN
            else:
                raise Unavailable(f"no free app uid left in {UID_BASE}..{UID_BASE + UID_SPAN - 1}")
            table[app] = uid
            self._save(table, retired)
            return uid

    def known(self) -> dict[str, int]:
        with self._lock:
            return dict(self._load()[0])

    def retire(self, app: str) -> int | None:
        """Forget ``app`` (gone, its files deleted) and never hand its uid out again; the uid."""
        with self._lock:
            table, retired = self._load()
            uid = table.pop(app, None)
            if uid is None:
                return None
            self._save(table, retired | {uid})
            return uid

    def _load(self) -> tuple[dict[str, int], set[int]]:
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}, set()
        except (OSError, ValueError) as e:
            raise Unavailable(f"cannot read the app uid map {self.path}: {e}") from None
        if isinstance(raw.get("apps"), dict):
            return {str(k): int(v) for k, v in raw["apps"].items()}, {
                int(u) for u in raw.get("retired") or []
            }
        return {str(k): int(v) for k, v in raw.items()}, set()

    def _save(self, table: dict[str, int], retired: set[int]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"apps": table, "retired": sorted(retired)}, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def prepare_workdir(workdir: str | Path, uid: int, gid: int) -> None:
    """Hand a release dir to its app uid: chown the tree (never following symlinks), make the
    top 0700, its parent (``releases/APP``) passable by the app's gid only (root:GID 0710), and
    give each further ancestor the search bit (o+x only) so the app uid can reach it."""
    top = Path(workdir).resolve()
    app_dir = top.parent
    for parent in app_dir.parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            # Only where it is missing (and never o+r): a data dir under a private directory
            # (a home dir) needs it; the default /var/lib/forge never does.
            log.warning(
                "giving %s the search bit (o+x) so app uids can reach their release dirs "
                "(FORGE_DATA_DIR under /var/lib avoids this)",
                parent,
            )
            os.chmod(parent, stat.S_IMODE(mode) | stat.S_IXOTH)
    st = os.lstat(app_dir)
    if st.st_gid != gid:
        os.lchown(app_dir, -1, gid)
    if stat.S_IMODE(st.st_mode) != 0o710:
        os.chmod(app_dir, 0o710)  # not o+x: other apps' uids cannot even pass
    os.lchown(top, uid, gid)
    os.chmod(top, 0o700)
    for dirpath, dirnames, filenames in os.walk(top):
        for n in (*dirnames, *filenames):
            os.lchown(os.path.join(dirpath, n), uid, gid)


def session_members(pid: int) -> list[int]:
    """Processes whose process group or session is ``pid`` (the session leader we started)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        # fields: state ppid pgrp session ...; zombies are already dead.
        if fields[0] != b"Z" and (int(fields[2]) == pid or int(fields[3]) == pid):
            out.append(int(entry.name))
    return out
