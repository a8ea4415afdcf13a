"""The disk limit of a release on this node (``resources.disk``): what one app may write.

**Image mode** (root, ``mkfs.ext4``, loop devices — every production node): each release dir
``DATA/releases/APP/DEPLOYMENT`` is the mount point of its own ext4 filesystem, a sparse image
``DATA/images/APP/DEPLOYMENT.img`` of exactly the limit, made fresh before the commit is
exported. The build and every Instance of that release on this node write into it and nowhere
else (``/tmp`` is a tmpfs charged to the memory cgroup), so the kernel enforces the limit: a
write past it gets ENOSPC, the node's disk never sees it. Project quotas would do the same
without loop devices but need a filesystem mounted with ``prjquota`` (XFS, or ext4 made with
the quota feature) — not something we can ask of every node; an image works on any filesystem
that can hold a sparse file. No journal: a release tree is rebuilt, never repaired. Mounted
``nosuid,nodev``; the image lives outside every tree an app can write, and the mount point's
parent (``releases/APP``) is root's, so an app cannot swap the mount point for a symlink.

**Watcher mode** (a dev install without root): nothing can mount, so the agent measures the
tree (``lstat`` walk, never following links) and every process runs with ``RLIMIT_FSIZE`` at
the limit so no single file outgrows it; the Node's ``isolation.disk`` says which mode runs.

**Persistent storage** (``storage: {size}``, image mode) is an ext4 image *with* a journal whose
blocks are all allocated when it is made (``posix_fallocate``; growing it allocates the new
range): a full host filesystem can never refuse a write the app's filesystem already accepted
(a sparse image would make the kernel abort its journal and leave it read-only for good).
Making one that does not fit — its size plus ``STORAGE_HEADROOM`` over the free space — is
refused (``StorageUnavailable``, reason ``InsufficientStorage``, naming both). It is mounted
``errors=remount-ro``, checked with ``e2fsck -p`` before every mount, and an image found
read-only or with recorded errors when its app starts again is unmounted, repaired with
``e2fsck -fy`` and mounted again (an Event ``StorageRepaired``) — unless another process of the
app still has it open, then it waits (``StorageDamaged``). Release images stay sparse: a release
tree is scratch, rebuilt rather than repaired, and reserving every kept release's full limit
would cost more disk than it protects.

In both modes the agent's disk check (``exceeded``) sees a release at its limit and stops its
Instances with reason ``DiskLimitExceeded`` and an Event; the full tree is discarded and the
next start rebuilds it fresh (an Instance's files are scratch space, as on any PaaS).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final, Literal

from forge import errors
from forge.nodeagent.diskgc import tree_bytes

log = logging.getLogger(__name__)

REASON_DISK_LIMIT: Final[str] = "DiskLimitExceeded"
REASON_STORAGE_REPAIRED: Final[str] = "StorageRepaired"
REASON_STORAGE_DAMAGED: Final[str] = "StorageDamaged"
REASON_INSUFFICIENT_STORAGE: Final[str] = "InsufficientStorage"
RELEASE_OPTIONS: Final[str] = "loop,nosuid,nodev,noatime"
# Storage: an error makes it read-only (never carry on writing over damage); repaired by e2fsck.
STORAGE_OPTIONS: Final[str] = "loop,nosuid,nodev,noatime,errors=remount-ro"
STORAGE_HEADROOM = 128 * 2**20  # creating storage leaves the node at least this much free
IMAGES_DIR = "images"
STORAGE_DIR = "storage"  # DATA/storage/APP: mount points of apps' persistent storage
STORAGE_IMAGES = "_storage"
FULL_FREE_BYTES = 1024 * 1024  # a filesystem with less than this free is at its limit
FULL_FREE_INODES = 16
TOOL_TIMEOUT = 60.0
Mode = Literal["image", "watcher"]
Report = Callable[[str], None]  # hears of a repair (the agent records it as an Event)


def image_mode_missing() -> str | None:
    """Why image mode cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "not root (cannot mount release filesystems)"
    for tool in ("mkfs.ext4", "mount", "umount"):
        if shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin") is None:
            return f"{tool} not found (apt install e2fsprogs mount)"
    if not os.path.exists("/dev/loop-control"):
        return "no /dev/loop-control (loop devices unavailable)"
    return None


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal ``\\NNN``."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points(under: Path) -> list[str]:
    """Mount points at or below ``under`` in this mount namespace, deepest first."""
    prefix = str(under).rstrip("/") + "/"
    found = []
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                parts = line.split(" ")
                if len(parts) > 4:
                    point = _unescape(parts[4])
                    if point.startswith(prefix) or point == str(under):
                        found.append(point)
    except OSError:
        return []
    return sorted(set(found), key=len, reverse=True)


def _run_code(argv: list[str]) -> tuple[int, str]:
    env = {"PATH": "/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL": "C"}
    try:
        proc = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=TOOL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise errors.Unavailable(f"{argv[0]} timed out") from None
    return proc.returncode, (proc.stderr + proc.stdout).decode("utf-8", "replace").strip()


def _run(argv: list[str]) -> None:
    code, out = _run_code(argv)
    if code != 0:
        raise errors.Unavailable(f"{argv[0]} failed: {out[-300:]}")


def loop_devices(img: Path) -> list[str]:
    """Loop devices backed by ``img`` — one stays attached while the image is mounted in any mount
    namespace (a sandbox's included), so none means nobody has it mounted. Read from sysfs; an
    unreadable ``/sys/block`` raises (a repair must never run on a filesystem still in use)."""
    want = {str(img), os.path.realpath(img)}
    found = []
    with os.scandir("/sys/block") as it:
        for e in it:
            if not e.name.startswith("loop"):
                continue
            try:
                with open(
                    os.path.join(e.path, "loop", "backing_file"), encoding="utf-8", errors="replace"
                ) as f:
                    backing = f.read().rstrip("\n").removesuffix(" (deleted)")
            except FileNotFoundError:
                continue  # not attached
            if backing in want:
                found.append(f"/dev/{e.name}")
    return found


def mount_source(point: Path) -> str | None:
    """The device mounted at ``point`` (this mount namespace), None when nothing is."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            found = None
            for line in f:
                parts = line.split(" ")
                if len(parts) > 4 and _unescape(parts[4]) == str(point):
                    rest = line.split(" - ", 1)[1].split(" ") if " - " in line else []
                    found = _unescape(rest[1]) if len(rest) > 1 else None
            return found
    except OSError:
        return None


class StorageUnavailable(errors.Unavailable):
    """An app's persistent storage cannot be given to it now (no room, damaged, busy)."""

    reason = "InsufficientStorage"


class StorageDamaged(StorageUnavailable):
    """The storage is read-only or damaged after an I/O error and cannot be repaired now."""

    reason = REASON_STORAGE_DAMAGED


class DiskFence:
    """Per-release disk limits for one agent data dir (see the module docstring)."""

    def __init__(self, data_dir: Path, mode: Mode | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.releases = self.data_dir / "releases"
        self.images = self.data_dir / IMAGES_DIR
        if mode is None:
            missing = image_mode_missing()
            mode = "image" if missing is None else "watcher"
            if missing is not None:
                log.warning("disk limits are watched, not enforced by the kernel: %s", missing)
        self.mode: Mode = mode
        self._storage_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def _storage_lock(self, app: str) -> threading.Lock:
        """One per app: two Instances of an app starting at once (a rollout, a node restart) must
        never mount, check or repair its storage at the same time (two e2fsck, or one on a mounted
        image, would destroy it)."""
        with self._locks_guard:
            return self._storage_locks.setdefault(app, threading.Lock())

    def image(self, release: Path) -> Path:
        return self.images / release.parent.name / f"{release.name}.img"

    # -- an app's persistent storage (forge.yaml ``storage``) ---------------------------
    def storage_dir(self, app: str) -> Path:
        return self.data_dir / STORAGE_DIR / app

    def storage_image(self, app: str) -> Path:
        return self.images / STORAGE_IMAGES / f"{app}.img"  # "_storage" is no app name

    def ensure_storage(
        self, app: str, size: int, uid: int | None, gid: int | None, report: Report | None = None
    ) -> Path:
        """The app's persistent dir, mounted (made the first time: an ext4 image *with* a journal,
        its data must survive a crash, its blocks allocated up front), owned by the app's uid; it
        outlives every release. A filesystem found read-only or with errors is repaired first
        (``report`` hears of it: the caller's Event); ``StorageUnavailable`` when it cannot be."""
        with self._storage_lock(app):
            return self._ensure_storage(app, size, uid, gid, report)

    def _ensure_storage(
        self, app: str, size: int, uid: int | None, gid: int | None, report: Report | None
    ) -> Path:
        path = self.storage_dir(app)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o701)  # search only: storage/APP is 0700, the app's uid's
        if path.is_symlink():
            path.unlink()
        path.mkdir(exist_ok=True)
        img = self.storage_image(app)
        if self.mode == "image" and self.mounted(path) and not self._healthy(path):
            self._repair(app, img, path, report)
        if self.mode == "image" and not self.mounted(path):
            img.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.images, 0o700)
            if not img.exists():
                self._create_storage(app, img, max(int(size), 32 * 1024 * 1024), uid, gid)
            else:
                if img.stat().st_size < size:  # storage.size grew: the filesystem grows with it
                    self._allocate(app, img, size, grow=True)
                    _run(["e2fsck", "-p", "-f", str(img)])
                    _run(["resize2fs", str(img)])
                if not loop_devices(img):  # attached still (a sandbox lives on): mount reuses it, no fsck
                    self._check(app, img, report)
            self._mount(img, path, STORAGE_OPTIONS)
            try:
                os.rmdir(path / "lost+found")
            except OSError:
                pass
        st = os.lstat(path)
        if uid is not None and (st.st_uid, st.st_gid) != (uid, gid if gid is not None else uid):
            os.lchown(path, uid, gid if gid is not None else uid)
        os.chmod(path, 0o700)
        return path

    def _create_storage(self, app: str, img: Path, size: int, uid: int | None, gid: int | None) -> None:
        fd = os.open(img, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        os.close(fd)
        try:
            self._allocate(app, img, size, grow=False)
            owner = f"{uid if uid is not None else 0}:{gid if gid is not None else 0}"
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", f"nodiscard,root_owner={owner}", str(img)])
        except BaseException:
            img.unlink(missing_ok=True)
            raise

    def _allocate(self, app: str, img: Path, size: int, grow: bool) -> None:
        """Every block of the image, allocated now (no holes the host's disk could refuse later),
        leaving the node ``STORAGE_HEADROOM`` free; ``StorageUnavailable`` naming size and room."""
        have = img.stat().st_size
        st = os.statvfs(img.parent)
        free = st.f_bavail * st.f_frsize
        need = int(size) - (have if grow else 0)
        what = (
            f"{'growing' if grow else 'creating'} the persistent storage of app {app} ({size // 2**20} MiB)"
        )
        if need + STORAGE_HEADROOM > free:
            raise StorageUnavailable(
                f"{what} does not fit on this node: it needs {need // 2**20} MiB and the node's data dir "
                f"has {free // 2**20} MiB free ({STORAGE_HEADROOM // 2**20} MiB must stay free)"
            )
        fd = os.open(img, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            os.posix_fallocate(fd, 0, int(size))
            os.fsync(fd)
        except OSError as exc:
            if not grow:
                os.ftruncate(fd, 0)
            raise StorageUnavailable(
                f"{what} failed: {exc.strerror} ({free // 2**20} MiB were free)"
            ) from None
        finally:
            os.close(fd)

    def storage_damaged(self, app: str) -> bool:
        """Is the app's mounted storage read-only or with recorded errors (the agent's periodic
        check: no write, a statvfs and a sysfs read)?"""
        path = self.storage_dir(app)
        return self.mode == "image" and self.mounted(path) and not self._healthy(path, write=False)

    def _healthy(self, path: Path, write: bool = True) -> bool:
        """Writable and without recorded errors: ext4 counts no error on the device, the mount is
        not read-only, and (``write``) a write and fsync of a fresh file goes through."""
        dev = mount_source(path)
        if dev and dev.startswith("/dev/"):
            try:
                if int(Path(f"/sys/fs/ext4/{dev[5:]}/errors_count").read_text().strip() or 0) > 0:
                    return False
            except (OSError, ValueError):
                pass
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return False
        if not write:
            return True
        probe = path / f".forge-write-check-{os.getpid()}-{threading.get_ident()}"
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            return exc.errno not in (errno.EROFS, errno.EIO)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
            return True
        except OSError as exc:
            return exc.errno not in (errno.EROFS, errno.EIO)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                probe.unlink()

    def _repair(self, app: str, img: Path, path: Path, report: Report | None) -> None:
        """Unmount a damaged storage filesystem, repair it with e2fsck and mount it again — only
        when nothing else still has it mounted (a running Instance's sandbox): then it waits."""
        _run(["umount", str(path)])
        if loop_devices(img):
            raise StorageDamaged(
                f"the persistent storage of app {app} is read-only after an I/O error and another "
                "process of the app still has it open; it is repaired once they have stopped",
            )
        self._check(app, img, report, force=True)

    def _check(self, app: str, img: Path, report: Report | None, force: bool = False) -> None:
        """e2fsck before a mount: ``-p`` (a journal replay, safe fixes) or, forced after an error,
        ``-fy``; what it fixed goes to ``report``; it cannot fix it: StorageUnavailable."""
        argv = ["e2fsck", "-f", "-y", str(img)] if force else ["e2fsck", "-p", str(img)]
        code, out = _run_code(argv)
        if code >= 4 and not force:
            argv = ["e2fsck", "-f", "-y", str(img)]
            code, out = _run_code(argv)
        if code >= 4:
            raise StorageDamaged(
                f"the persistent storage of app {app} is damaged and e2fsck cannot repair it "
                f"(exit {code}): {out[-300:]}",
            )
        if force or code:
            msg = (
                f"the persistent storage of app {app} was found read-only or with errors after an I/O "
                f"error; e2fsck repaired it (exit {code}) and it is mounted again"
                if force
                else f"e2fsck fixed the persistent storage of app {app} before mounting it (exit {code})"
            )
            log.warning("%s: %s", msg, out[-1500:])
            if report is not None:
                report(msg)

    def remove_storage(self, app: str) -> None:
        """Delete an app's storage for good (the app was deleted)."""
        with self._storage_lock(app):
            self._remove_storage(app)

    def _remove_storage(self, app: str) -> None:
        path = self.storage_dir(app)
        for point in mount_points(path):
            _run(["umount", "-l", point])
        self.storage_image(app).unlink(missing_ok=True)
        if path.exists() and not path.is_symlink():
            shutil.rmtree(path)

    # -- lifecycle of one release's filesystem -------------------------------------
    def prepare(self, release: Path, limit: int) -> None:
        """An empty ``release`` dir limited to ``limit`` bytes (whatever was there is gone)."""
        self.discard(release)
        if release.exists() or release.is_symlink():
            shutil.rmtree(release)  # never follows links
        release.mkdir(parents=True)
        if self.mode != "image":
            return
        img = self.image(release)
        img.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.images, 0o700)
        fd = os.open(img, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, max(int(limit), 8 * 1024 * 1024))  # sparse: only what is written takes space
        finally:
            os.close(fd)
        try:
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-O", "^has_journal", "-E", "nodiscard", str(img)])
            self._mount(img, release)
        except errors.Unavailable:
            img.unlink(missing_ok=True)
            raise
        try:
            os.rmdir(release / "lost+found")  # not the app's business; e2fsck recreates it if needed
        except OSError:
            pass

    def _mount(self, img: Path, release: Path, options: str = RELEASE_OPTIONS) -> None:
        _run(["mount", "-t", "ext4", "-o", options, str(img), str(release)])

    def mounted(self, release: Path) -> bool:
        return str(release) in mount_points(release)

    def ready(self, release: Path) -> bool:
        """Is ``release`` its limited filesystem (mounting its image again after a node restart)?"""
        if self.mode != "image":
            return True
        if self.mounted(release):
            return True
        img = self.image(release)
        if not img.is_file() or img.is_symlink() or not release.is_dir() or release.is_symlink():
            return False
        try:
            self._mount(img, release)
            return True
        except errors.Unavailable as exc:
            log.warning("cannot mount %s again (%s); the release is rebuilt", img, exc.message)
            return False

    def discard(self, release: Path) -> None:
        """Unmount the release's filesystem (lazily: a process still inside keeps its view until
        it exits) and delete its image."""
        if self.mode == "image":
            for point in mount_points(release):
                try:
                    _run(["umount", "-l", point])
                except errors.Unavailable as exc:
                    log.warning("cannot unmount %s: %s", point, exc.message)
        self.image(release).unlink(missing_ok=True)

    def unmount_all(self) -> int:
        """Unmount every release filesystem of this data dir (the node stops: images stay)."""
        points = mount_points(self.releases) + mount_points(self.data_dir / STORAGE_DIR)
        for point in points:
            try:
                _run(["umount", "-l", point])
            except errors.Unavailable as exc:
                log.warning("cannot unmount %s: %s", point, exc.message)
        return len(points)

    # -- usage ----------------------------------------------------------------------
    def usage(self, release: Path) -> int:
        """Bytes the release uses on its filesystem (image mode) or in its tree (watcher mode)."""
        if self.mode == "image" and self.mounted(release):
            st = os.statvfs(release)
            return (st.f_blocks - st.f_bfree) * st.f_frsize
        return tree_bytes(str(release))

    def exceeded(self, release: Path, limit: int) -> bool:
        """Has the release reached its limit (nothing more can be written)?"""
        if self.mode == "image" and self.mounted(release):
            st = os.statvfs(release)
            return st.f_bavail * st.f_frsize < FULL_FREE_BYTES or st.f_favail < FULL_FREE_INODES
        return limit > 0 and tree_bytes(str(release)) >= limit
