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

In both modes the agent's disk check (``exceeded``) sees a release at its limit and stops its
Instances with reason ``DiskLimitExceeded`` and an Event; the full tree is discarded and the
next start rebuilds it fresh (an Instance's files are scratch space, as on any PaaS).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path
from typing import Final, Literal

from forge import errors
from forge.nodeagent.diskgc import tree_bytes

log = logging.getLogger(__name__)

REASON_DISK_LIMIT: Final[str] = "DiskLimitExceeded"
IMAGES_DIR = "images"
STORAGE_DIR = "storage"  # DATA/storage/APP: mount points of apps' persistent storage
STORAGE_IMAGES = "_storage"
FULL_FREE_BYTES = 1024 * 1024  # a filesystem with less than this free is at its limit
FULL_FREE_INODES = 16
TOOL_TIMEOUT = 60.0
Mode = Literal["image", "watcher"]


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


def _run(argv: list[str]) -> None:
    env = {"PATH": "/usr/sbin:/sbin:/usr/bin:/bin", "LC_ALL": "C"}
    try:
        proc = subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=TOOL_TIMEOUT, check=False
        )
    except subprocess.TimeoutExpired:
        raise errors.Unavailable(f"{argv[0]} timed out") from None
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).decode("utf-8", "replace").strip()[-300:]
        raise errors.Unavailable(f"{argv[0]} failed: {detail}")


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

    def image(self, release: Path) -> Path:
        return self.images / release.parent.name / f"{release.name}.img"

    # -- an app's persistent storage (forge.yaml ``storage``) ---------------------------
    def storage_dir(self, app: str) -> Path:
        return self.data_dir / STORAGE_DIR / app

    def storage_image(self, app: str) -> Path:
        return self.images / STORAGE_IMAGES / f"{app}.img"  # "_storage" is no app name

    def ensure_storage(self, app: str, size: int, uid: int | None, gid: int | None) -> Path:
        """The app's persistent dir, mounted (made the first time: an ext4 image *with* a journal,
        its data must survive a crash), owned by the app's uid; it outlives every release."""
        path = self.storage_dir(app)
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o701)  # search only: storage/APP is 0700, the app's uid's
        if path.is_symlink():
            path.unlink()
        path.mkdir(exist_ok=True)
        if self.mode == "image" and not self.mounted(path):
            img = self.storage_image(app)
            img.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.images, 0o700)
            if not img.exists():
                fd = os.open(img, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                try:
                    os.ftruncate(fd, max(int(size), 32 * 1024 * 1024))
                finally:
                    os.close(fd)
                owner = f"{uid if uid is not None else 0}:{gid if gid is not None else 0}"
                try:
                    _run(
                        ["mkfs.ext4", "-q", "-F", "-m", "0", "-E", f"nodiscard,root_owner={owner}", str(img)]
                    )
                except errors.Unavailable:
                    img.unlink(missing_ok=True)
                    raise
            elif img.stat().st_size < size:  # storage.size grew: the filesystem grows with it
                os.truncate(img, size)
                _run(["e2fsck", "-p", "-f", str(img)])
                _run(["resize2fs", str(img)])
            self._mount(img, path)
            try:
                os.rmdir(path / "lost+found")
            except OSError:
                pass
        st = os.lstat(path)
        if uid is not None and (st.st_uid, st.st_gid) != (uid, gid if gid is not None else uid):
            os.lchown(path, uid, gid if gid is not None else uid)
        os.chmod(path, 0o700)
        return path

    def remove_storage(self, app: str) -> None:
        """Delete an app's storage for good (the app was deleted)."""
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

    def _mount(self, img: Path, release: Path) -> None:
        _run(["mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noatime", str(img), str(release)])

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
