"""Each App's build cache on this node (``DATA/buildcache/APP``): made for builds, bounded by disk GC.

What lives inside an App's dir (installed dependency sets keyed by lockfile + interpreter +
platform, the tools' download caches) is ``forge.buildsteps``' business; this module owns the
dirs themselves:

- ``ensure_app_dir`` makes ``DATA/buildcache`` (0711: reachable, not listable) and the App's
  dir (0700, owned by the App's uid), marks it used, and returns the path the builder binds
  into that App's builds — the only cache a build ever sees, so it can never write another's.
- ``entries_to_remove`` is the pure LRU rule: when all Apps' caches together hold more than
  the node's limit, the least recently used entries go first until they fit. An entry is one
  ``env/KEY`` dependency set (touched on every hit) or one download cache / tool dir (used
  whenever its App builds).
- ``prune`` is the thin shell disk GC runs: it measures with lstat (never following a link the
  App's build planted), deletes with ``shutil.rmtree`` (which does not follow links either) and
  only paths directly under an App's dir.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

CACHE_DIR: Final[str] = "buildcache"
DEFAULT_LIMIT: Final[int] = 4 * 2**30  # per node, all Apps together


@dataclass(frozen=True)
class Entry:
    path: str  # APP/env/KEY or APP/pip
    last_used: float
    size: int


def ensure_app_dir(data_dir: Path, app: str, uid: int | None, gid: int | None) -> str:
    """The App's cache dir, made if missing, owned by its uid, marked used now."""
    root = Path(data_dir) / CACHE_DIR
    root.mkdir(mode=0o701, parents=True, exist_ok=True)
    os.chmod(root, 0o701)  # search-only, as forge.hostperms has every shared dir: never listable
    path = root / app
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()  # never the agent's to follow
    path.mkdir(mode=0o700, exist_ok=True)
    if uid is not None and os.geteuid() == 0:
        os.lchown(path, uid, gid if gid is not None else uid)
    os.utime(path, follow_symlinks=False)
    return str(path)


def entries_to_remove(entries: list[Entry], limit: int) -> list[Entry]:
    """Least recently used first, until what stays is at most ``limit`` bytes."""
    total = sum(e.size for e in entries)
    out: list[Entry] = []
    for e in sorted(entries, key=lambda e: (e.last_used, e.path)):
        if total <= limit:
            break
        out.append(e)
        total -= e.size
    return out


def _bytes(path: str) -> int:
    total = 0
    for top, dirs, files in os.walk(path, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(top, d))]:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                continue
    return total


def scan(root: Path) -> list[Entry]:
    """Every entry under ``root`` (``DATA/buildcache``)."""
    out: list[Entry] = []
    if not root.is_dir():
        return out
    for app in sorted(os.listdir(root)):
        app_dir = root / app
        if app_dir.is_symlink() or not app_dir.is_dir():
            continue
        app_used = os.lstat(app_dir).st_mtime
        for name in sorted(os.listdir(app_dir)):
            sub = app_dir / name
            if sub.is_symlink() or not sub.is_dir():
                continue
            if name == "env":
                for key in sorted(os.listdir(sub)):
                    p = sub / key
                    if not p.is_symlink() and p.is_dir():
                        out.append(Entry(f"{app}/env/{key}", os.lstat(p).st_mtime, _bytes(str(p))))
            else:
                out.append(Entry(f"{app}/{name}", app_used, _bytes(str(sub))))
    return out


def prune(root: Path, limit: int = DEFAULT_LIMIT) -> list[Entry]:
    """Remove least recently used entries until the node's build caches fit ``limit``."""
    removed = entries_to_remove(scan(root), limit)
    for e in removed:
        path = root / e.path
        if os.path.realpath(path) != str(path.absolute()):
            continue  # a component became a link since the scan: not ours to follow
        shutil.rmtree(path, ignore_errors=True)
        log.info("build cache: removed %s (%d MiB, least recently used)", e.path, e.size // 2**20)
    return removed
