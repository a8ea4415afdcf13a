"""Garbage-collects release dirs on this node (``DATA/releases/APP/DEPLOYMENT``): the agent owns its disk.

A dir is a *build*, named after the first release that made it (``Instance.spec.build``): config
releases, rollbacks and repeated pushes of that commit run it too, so keeping the newest few
dirs keeps the last few distinct builds of an app.

The decision is a pure function of (dirs on disk, releases in use, keep, apps gone): per app the ``keep``
newest finished builds by release number stay so a rollback reuses its build, every release an
Instance of this node uses (the agent state or the watched Instances) stays however old, the
rest goes. A dir without the builder's marker ``DATA/built/APP/DEPLOYMENT`` (a build that failed, was
interrupted, or is running) goes only when it is not in use and older than the kept ones — or
when it is not among the ``keep`` newest dirs at all, so an app whose every push fails cannot
fill the disk. An app that was deleted keeps nothing (its images are unmounted and removed too).

The shell is thin and careful: it runs from the agent's work queue (the ``~diskgc`` timer),
deletes only paths whose realpath is exactly ``DATA/releases/APP/DEPLOYMENT`` (no symlink
leads it outside), holds the builder's per-release lock while deleting (a dir whose lock is
held is being built: skipped until the next pass), re-reads what is in use under that lock,
and removes app dirs left empty. Each pass also bounds the Apps' build caches
(``forge.nodeagent.buildcache.prune``: least recently used first, beyond a per-node size).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forge.models import deployment_number
from forge.nodeagent import buildcache
from forge.nodeagent.builder import BUILT_DIR

log = logging.getLogger(__name__)

DEFAULT_KEEP = 3
Release = tuple[str, str]  # (app, deployment)


def _newest_first(names: Iterable[str]) -> list[str]:
    """Release names newest first: by release number, unnumbered names last, ties by name."""
    return sorted(names, key=lambda n: (deployment_number(n), n), reverse=True)


def releases_to_remove(
    release_dirs: dict[str, list[str]],
    in_use: set[Release],
    keep: int = DEFAULT_KEEP,
    unfinished: set[Release] | frozenset[Release] = frozenset(),
    gone: set[str] | frozenset[str] = frozenset(),
) -> list[Release]:
    """The (app, deployment) release dirs to delete, oldest first within each app, apps sorted.
    An app in ``gone`` (deleted) keeps nothing but what an Instance here still uses."""
    remove: list[Release] = []
    for app in sorted(release_dirs):
        ordered = _newest_first(set(release_dirs[app]))
        if app in gone:
            remove += [(app, d) for d in reversed(ordered) if (app, d) not in in_use]
            continue
        finished = [d for d in ordered if (app, d) not in unfinished]
        kept = set(finished[: max(keep, 0)])
        newest_overall = set(ordered[: max(keep, 0)])
        oldest_kept = min((deployment_number(d) for d in kept), default=None)
        for dep in reversed(ordered):
            if (app, dep) in in_use or dep in kept:
                continue
            if (app, dep) in unfinished:
                older = oldest_kept is not None and deployment_number(dep) < oldest_kept
                if not older and dep in newest_overall:
                    continue  # maybe a build still running or about to be retried
            remove.append((app, dep))
    return remove


@dataclass(frozen=True)
class Removed:
    app: str
    deployment: str
    bytes_freed: int


def scan(root: Path, built: Path | None = None) -> tuple[dict[str, list[str]], set[Release]]:
    """Release dirs under ``root`` (symlinks are skipped, never followed) and which lack their
    marker under ``built`` (default: ``root``'s sibling ``built``)."""
    built = built if built is not None else Path(root).parent / BUILT_DIR
    dirs: dict[str, list[str]] = {}
    unfinished: set[Release] = set()
    try:
        with os.scandir(root) as it:
            apps = sorted((e for e in it if e.is_dir(follow_symlinks=False)), key=lambda e: e.name)
    except FileNotFoundError:
        return dirs, unfinished
    for app in apps:
        try:
            with os.scandir(app.path) as it:
                entries = [e for e in it if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            continue
        deps = dirs.setdefault(app.name, [])
        for dep in entries:
            deps.append(dep.name)
            if not (built / app.name / dep.name).is_file():
                unfinished.add((app.name, dep.name))
    return dirs, unfinished


def tree_bytes(path: str) -> int:
    """Bytes of the files under ``path`` (lstat: symlinks count as themselves, never followed)."""
    total = 0
    for top, dirs, files in os.walk(path, followlinks=False):
        links = [d for d in dirs if os.path.islink(os.path.join(top, d))]
        for name in files + links:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                continue
    return total


class DiskGC:
    """One pass per ``run()``; ``removed_total`` feeds ``forge_agent_release_dirs_removed_total``."""

    def __init__(
        self,
        releases_root: Path,
        in_use: Callable[[], set[Release]],
        lock_for: Callable[[str, str], threading.Lock],
        keep: int = DEFAULT_KEEP,
        fence: Any = None,
        build_cache_limit: int = buildcache.DEFAULT_LIMIT,
    ) -> None:
        self.build_cache_limit = build_cache_limit  # all Apps' build caches together (LRU beyond it)
        self.fence = fence  # DiskFence: a release dir may be its own filesystem (unmounted first)
        self.root = Path(releases_root)
        self.in_use, self.lock_for, self.keep = in_use, lock_for, keep
        self.removed_total = 0

    def run(self, gone: set[str] | frozenset[str] = frozenset()) -> list[Removed]:
        """One pass; the apps in ``gone`` (deleted) lose every release dir no Instance uses."""
        dirs, unfinished = scan(self.root)
        removed: list[Removed] = []
        for app, dep in releases_to_remove(dirs, self.in_use(), self.keep, unfinished, gone):
            done = self._remove(app, dep)
            if done is not None:
                removed.append(done)
        self._remove_empty_apps()
        buildcache.prune(self.root.parent / buildcache.CACHE_DIR, self.build_cache_limit)
        return removed

    def purge(self, app: str) -> bool:
        """Every release dir of ``app`` (deleted; its last Instance here has stopped), in use or
        not; True when none is left."""
        dirs, _ = scan(self.root)
        for dep in dirs.get(app, []):
            self._remove(app, dep, force=True)
        self._remove_empty_apps()
        return not os.path.lexists(os.path.join(self.root, app))

    def _safe_path(self, app: str, dep: str) -> str | None:
        """``ROOT/APP/DEP`` when its realpath is exactly that (no component is a symlink)."""
        root = os.path.realpath(self.root)
        path = os.path.join(root, app, dep)
        if (
            os.path.realpath(path) != path
            or os.path.dirname(path) != os.path.join(root, app)
            or "/" in app + dep
        ):
            log.warning("not removing release dir %s/%s: it resolves outside %s", app, dep, root)
            return None
        return path

    def _remove(self, app: str, dep: str, force: bool = False) -> Removed | None:
        path = self._safe_path(app, dep)
        if path is None:
            return None
        lock = self.lock_for(app, dep)
        if not lock.acquire(blocking=False):
            log.info("release dir %s/%s is being built; leaving it for the next pass", app, dep)
            return None
        try:
            if not force and (app, dep) in self.in_use():  # an Instance arrived since the scan
                return None
            size = tree_bytes(path)
            if self.fence is not None:
                self.fence.discard(Path(path))  # unmount + delete its image; the mount point stays
            failed: list[str] = []

            def onerror(func: Any, target: str, exc_info: Any) -> None:
                failed.append(target)
                log.warning(
                    "removing %s: %s failed: %s", target, getattr(func, "__name__", func), exc_info[1]
                )

            shutil.rmtree(path, onerror=onerror)
        finally:
            lock.release()
        if failed:
            return None
        (self.root.parent / BUILT_DIR / app / dep).unlink(missing_ok=True)
        self.removed_total += 1
        log.info("removed release dir app=%s deployment=%s freed=%d bytes", app, dep, size)
        return Removed(app, dep, size)

    def _remove_empty_apps(self) -> None:
        try:
            with os.scandir(self.root) as it:
                apps = [e for e in it if e.is_dir(follow_symlinks=False)]
        except FileNotFoundError:
            return
        for app in apps:
            try:
                with os.scandir(app.path) as it:
                    empty = next(it, None) is None
                if empty:
                    os.rmdir(app.path)
                    log.info("removed empty release dir for app %s", app.name)
            except OSError as exc:  # a build created a release meanwhile: keep it
                log.debug("keeping %s: %s", app.path, exc)
