"""Who may read what under a data dir: the permission model (README "Permissions").

* Every Forge daemon runs with umask 077 (``private_umask``): the records (``forge.db``), the
  logs database (``forge-logs.db``, which holds the stdin of ``forge run -i``), the metrics
  database (``forge-metrics.db``), their -wal/-shm,
  ``api-url``, ``logs/``, ``node/logs/``, ``source-cache/``, ``node/git/``, keys and tokens are
  created readable by Forge's own user (root, or its service user) only.
* An install made before that is fixed when it starts (``secure_data_dir``,
  ``secure_agent_dir``): group and other bits are cleared everywhere except inside the trees
  apps own.
* An app's uid reaches only its own release tree and storage. The directories on the way are
  search-only for others (``DATA``, ``DATA/node``, ``releases/``, ``storage/``: 0701, never
  readable), ``releases/APP`` is ``root:APP_GID 0710`` (only that app's gid may pass), and
  ``releases/APP/DEPLOYMENT`` and ``storage/APP`` are 0700, owned by the app's uid.

Connections to instance and service addresses are the kernel's to refuse (an owner match in
the output hook: ``forge.nodeagent.network`` and ``forge.proxy.servicemap``): only root, Forge's own
user and group, and the ``forge`` group (Caddy's, under systemd) pass; see ``owner_refused``.
"""

from __future__ import annotations

import grp
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

UMASK: Final[int] = 0o077
SERVICE_GROUP: Final[str] = "forge"
APP_TREES: Final = ("releases", "storage")  # under an agent's data dir: the apps' own
SEARCH_ONLY: Final[int] = 0o701
APP_DIR_MODE: Final[int] = 0o710  # releases/APP: root and the app's gid


def private_umask() -> None:
    """Every file a Forge daemon (and whatever it spawns: sqlite, git, Caddy) creates is private."""
    os.umask(UMASK)


def allowed_uids() -> tuple[int, ...]:
    """The uids that may open connections to instance and service addresses: root (the agent's
    probes, Caddy under ``forge up``) and the user Forge runs as."""
    return tuple(sorted({0, os.geteuid()}))


def allowed_gids() -> tuple[int, ...]:
    """And the groups: root's, Forge's own, and the ``forge`` group where it exists (the systemd
    units run Forge's daemons and Caddy, as user ``caddy``, with ``Group=forge``)."""
    gids = {0, os.getegid()}
    try:
        gids.add(grp.getgrnam(SERVICE_GROUP).gr_gid)
    except KeyError:
        pass
    return tuple(sorted(gids))


def owner_refused() -> str:
    """The nftables match for a socket of anyone else: ``meta skuid != … meta skgid != …``."""
    return f"meta skuid != {nft_uids(allowed_uids())} meta skgid != {nft_uids(allowed_gids())}"


def nft_uids(uids: Iterable[int]) -> str:
    """``0`` or ``{ 0, 1000 }``: an nftables ``meta skuid`` operand."""
    items = sorted(set(uids))
    return str(items[0]) if len(items) == 1 else "{ " + ", ".join(map(str, items)) + " }"


def _strip(path: str, st: os.stat_result) -> bool:
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return False
    try:
        os.chmod(path, mode & ~0o077)
    except OSError as exc:
        log.warning("cannot make %s private: %s", path, exc)
        return False
    return True


def make_private(root: Path, skip: Iterable[Path] = ()) -> int:
    """Clear group/other bits on ``root``'s tree (never following symlinks, never entering
    ``skip``); how many entries changed."""
    skipped = {str(p) for p in skip}
    changed = 0
    for top, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if os.path.join(top, d) not in skipped]
        for name in dirs + files:
            path = os.path.join(top, name)
            if path in skipped:
                continue
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISLNK(st.st_mode) and _strip(path, st):
                changed += 1
    return changed


def _set_mode(path: Path, mode: int, gid: int | None = None) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return
    if gid is not None and st.st_gid != gid:
        os.lchown(path, -1, gid)
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def _subdirs(path: Path) -> list[Path]:
    try:
        return [Path(e.path) for e in os.scandir(path) if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []


def secure_data_dir(data_dir: Path, agent_dir: Path | None = None) -> int:
    """A control plane's data dir (``forge up``, ``forge server``): private, except the agent's
    data dir under it (``agent_dir``, which ``secure_agent_dir`` handles) and the search bit on
    the way to it."""
    data_dir = Path(data_dir).resolve()
    agent = Path(agent_dir).resolve() if agent_dir is not None else None
    changed = make_private(data_dir, skip=[agent] if agent is not None else [])
    inside = agent is not None and data_dir in agent.parents
    _set_mode(data_dir, SEARCH_ONLY if inside else 0o700)
    if changed:
        log.info("made %d entries of %s readable by Forge's user only", changed, data_dir)
    return changed


def secure_agent_dir(agent_dir: Path, app_gids: Mapping[str, int]) -> int:
    """An agent's data dir: private, except the apps' own trees; ``releases/APP`` is passable by
    that app's gid only (an app without a known gid: by nobody but root)."""
    agent_dir = Path(agent_dir).resolve()
    trees = [agent_dir / t for t in APP_TREES]
    changed = make_private(agent_dir, skip=trees)
    _set_mode(agent_dir, SEARCH_ONLY)
    for tree in trees:
        _set_mode(tree, SEARCH_ONLY)
    try:
        apps = [e for e in os.scandir(agent_dir / "releases") if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        apps = []
    for entry in apps:
        gid = app_gids.get(entry.name)
        _set_mode(Path(entry.path), APP_DIR_MODE if gid is not None else 0o700, gid if gid is not None else 0)
        for release in _subdirs(Path(entry.path)):
            _set_mode(release, 0o700)  # the app's own tree: its top is closed, inside is the app's
    for storage in _subdirs(agent_dir / "storage"):
        _set_mode(storage, 0o700)
    if changed:
        log.info("made %d entries of %s readable by Forge's user only", changed, agent_dir)
    return changed
