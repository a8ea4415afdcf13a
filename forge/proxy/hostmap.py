"""The host map on disk: which address each served host dials, outside Caddy's config.

Caddy 2.6 closes every hijacked connection (websockets, other upgraded streams) of every app
when its config is loaded again, and any change to a host map held *in* the config is such a
load. So the config holds no host at all (``forge.proxy.caddy``): a ``file`` matcher looks up
``HOSTS/{http.request.host}/*`` on every request, and the one file in a host's directory is
named after what to dial::

    HOSTS/hello.localhost/198.18.7.3:10001                  kernel mode: the service address
    HOSTS/hello.localhost/10.0.0.5:20001 10.0.0.6:20007     caddy mode: the ready dials, packed

Adding or removing a host, a domain or an app is then a mkdir and a file, a switch of a
host's dials one ``rename(2)`` (atomic: a request sees the old name or the new one), and no
connection of any app notices. A Caddy that restarts reads the same directory: it serves
every host at once, before any proxy has reconciled. Per request the lookup is one
``readdir`` of one small directory (Caddy escapes glob characters in the Host it expands).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Final

from forge.atomicfile import fsync_dir
from forge.errors import Invalid

log = logging.getLogger(__name__)

Routes = dict[str, list[str]]  # host -> dials
SLOTS: Final[int] = 12  # at most this many dials per host (forge.proxy.caddy.UPSTREAM_SLOTS)


def pack(dials: list[str], slots: int = SLOTS) -> str:
    """One host's entry: its (first ``slots``) dials, sorted and space-separated."""
    return " ".join(sorted(dials)[:slots])


def check_host(host: str) -> str:
    """A host as a directory name: no separators, no dot-only names, no NUL (never a path out)."""
    if not host or "/" in host or "\0" in host or host.strip(".") == "" or len(host) > 253:
        raise Invalid(f"host {host!r} cannot be served (not a DNS name)")
    return host


class HostMap:
    """``root``/HOST/PACKED files; ``apply`` makes the directory equal a routing table."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._applied: dict[str, str] | None = None

    def ensure(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # Caddy (maybe another user) reads it; nothing secret in it

    def read(self) -> dict[str, str]:
        """host → packed entry, as the directory holds it now (a host with several files: the
        first by name, which is the one Caddy's matcher takes)."""
        out: dict[str, str] = {}
        try:
            hosts = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return out
        for host in hosts:
            try:
                names = sorted(n for n in os.listdir(self.root / host) if not n.startswith("."))
            except (NotADirectoryError, FileNotFoundError):
                continue
            if names:
                out[host] = names[0]
        return out

    def apply(self, routes: Routes, verify: bool = False) -> list[str]:
        """Make the directory serve ``routes`` (hosts with no dials are removed); the hosts changed.
        ``verify``: compare with the directory itself, not with what was applied last."""
        want = {check_host(h): pack(d) for h, d in routes.items() if d}
        with self._lock:
            if self._applied is None or verify:
                self.ensure()
                self._applied = self._read_exact()
            have = self._applied
            changed = [h for h, p in want.items() if have.get(h) != p] + [h for h in have if h not in want]
            for host in changed:
                self._set(host, have.get(host), want.get(host))
                if host in want:
                    have[host] = want[host]
                else:
                    have.pop(host, None)
            if changed:
                fsync_dir(self.root)
            return sorted(changed)

    def _read_exact(self) -> dict[str, str]:
        """Like ``read``, but a host directory holding anything but exactly one entry is
        recorded as needing a rewrite (an empty marker that no want equals)."""
        out: dict[str, str] = {}
        try:
            hosts = os.listdir(self.root)
        except FileNotFoundError:
            return out
        for host in hosts:
            path = self.root / host
            if not path.is_dir() or path.is_symlink():
                out[host] = "\0"
                continue
            names = os.listdir(path)
            out[host] = names[0] if len(names) == 1 and not names[0].startswith(".") else "\0"
        return out

    def _set(self, host: str, old: str | None, new: str | None) -> None:
        path = self.root / host
        if new is None:
            shutil.rmtree(path, ignore_errors=True)
            if path.exists() or path.is_symlink():
                path.unlink(missing_ok=True)
            return
        if old is not None and old != "\0" and (path / old).is_file():
            os.rename(path / old, path / new)  # atomic: a request sees the old dials or the new ones
            return
        if path.is_symlink() or (path.exists() and not path.is_dir()):
            path.unlink()
        path.mkdir(exist_ok=True)
        (path / new).touch()  # first the new entry, then the strays: never an empty moment
        for stale in os.listdir(path):
            if stale != new:
                target = path / stale
                shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
