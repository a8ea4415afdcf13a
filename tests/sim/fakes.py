"""The simulator's stand-ins for what lies outside the control plane: GitHub's repositories, Caddy's
admin API, the kernel's service map, every machine's clock, and the store's disk (crashes at a
write, a full disk). Each records what it was asked, so invariants can judge what traffic reached.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forge.clock import FakeClock
from forge.errors import Unavailable
from forge.gitsource import GitError
from forge.models import Resource
from forge.store.base import Fence, Store


class SimClock(FakeClock):
    """The control plane's clock: the simulator jumps it to the next timer; ``step_wall`` moves
    only the wall clock (an NTP step), never the monotonic one."""

    def step_wall(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


class SkewedClock(FakeClock):
    """A node's clock: the control plane's monotonic time, its wall time off by ``skew``."""

    def __init__(self, base: FakeClock, skew: float = 0.0) -> None:
        super().__init__()
        self.base, self.skew = base, skew

    def now(self) -> float:
        return self.base.now() + self.skew

    def monotonic(self) -> float:
        return self.base.monotonic()

    def advance(self, seconds: float) -> None:
        raise RuntimeError("a node's clock moves with the simulator's")


# ---------------------------------------------------------------------------------------- git


@dataclass
class Commit:
    sha: str
    parent: str | None
    manifest: str
    behavior: dict[str, Any]


def sha_for(*parts: object) -> str:
    return hashlib.sha1("/".join(str(p) for p in parts).encode()).hexdigest()


@dataclass
class FakeGithub:
    """Repositories as histories of commits; ``heads`` is what each branch points at now."""

    commits: dict[str, Commit] = field(default_factory=dict)
    heads: dict[tuple[str, str], str] = field(default_factory=dict)  # (repo, ref) → sha
    down: bool = False

    def commit(self, repo: str, ref: str, manifest: str, behavior: dict[str, Any]) -> Commit:
        parent = self.heads.get((repo, ref))
        c = Commit(sha_for(repo, ref, len(self.commits), parent), parent, manifest, behavior)
        self.commits[c.sha] = c
        self.heads[(repo, ref)] = c.sha
        return c

    def is_ancestor(self, older: str, newer: str) -> bool:
        cur: str | None = newer
        while cur is not None:
            if cur == older:
                return True
            cur = self.commits[cur].parent if cur in self.commits else None
        return False


class FakeGitSource:
    """``forge.gitsource.GitSource``'s interface over ``FakeGithub`` (no processes, no disk)."""

    def __init__(self, github: FakeGithub) -> None:
        self.github = github

    def _repo(self, url: str) -> str:
        return url.removeprefix("sim://").removesuffix(".git")

    def cache_path(self, repo: str) -> Path:
        return Path("/nonexistent/sim") / repo

    def has_commit(self, cache: Path, commit: str) -> bool:
        return commit in self.github.commits

    def fetch(
        self, repo: str, url: str, commit: str, token: str | None = None, ref: str | None = None
    ) -> Path:
        if self.github.down:
            raise GitError("github.sim: connection refused", transient=True)
        if commit not in self.github.commits:
            raise GitError(f"commit {commit[:12]} not found", transient=False)
        return self.cache_path(repo)

    def show(self, cache: Path, commit: str, path: str) -> bytes | None:
        c = self.github.commits.get(commit)
        if c is None or path != "forge.yaml":
            return None
        return c.manifest.encode()

    def resolve_ref(self, url: str, ref: str, token: str | None = None, *_: Any, **__: Any) -> str:
        if self.github.down:
            raise GitError("github.sim: connection refused", transient=True)
        head = self.github.heads.get((self._repo(url), ref))
        if head is None:
            raise GitError(f"{ref} not found", transient=False)
        return head

    def is_ancestor(self, url: str, older: str, newer: str, *_: Any, **__: Any) -> bool:
        return self.github.is_ancestor(older, newer)

    def descends_from(
        self, repo: str, url: str, commit: str, ancestor: str, token: str | None = None
    ) -> bool:
        for sha in (ancestor, commit):
            self.fetch(repo, url, sha, token)
        return self.github.is_ancestor(ancestor, commit)


# ---------------------------------------------------------------------------------------- router


class FakeCaddy:
    """Caddy's admin API as the router uses it in kernel mode: a config that can be loaded and read."""

    admin_url = "http://caddy.sim"

    def __init__(self) -> None:
        self.cfg: dict[str, Any] | None = None
        self.loads = 0

    def config(self) -> dict[str, Any] | None:
        return self.cfg

    def load(self, cfg: dict[str, Any]) -> None:
        self.cfg, self.loads = cfg, self.loads + 1

    def get_id(self, ident: str, path: str = "") -> Any:
        return None if self.cfg is None else _find_id(self.cfg, ident, path)

    def close(self) -> None:
        pass


def _find_id(node: Any, ident: str, path: str) -> Any:
    if isinstance(node, dict):
        if node.get("@id") == ident:
            cur: Any = node
            for part in [p for p in path.split("/") if p]:
                if isinstance(cur, list):
                    idx = int(part)
                    cur = cur[idx] if idx < len(cur) else None
                elif isinstance(cur, dict):
                    cur = cur.get(part)
                if cur is None:
                    return None
            return cur
        for v in node.values():
            got = _find_id(v, ident, path)
            if got is not None:
                return got
    elif isinstance(node, list):
        for v in node:
            got = _find_id(v, ident, path)
            if got is not None:
                return got
    return None


class FakeServiceMap:
    """The kernel's service map: service port → backend dials, as the router last applied it.
    ``on_apply`` lets the simulator judge each change the moment traffic would follow it."""

    def __init__(self, address: str = "10.253.0.1") -> None:
        self.address = address
        self.table = "forge_sim"
        self.backends: dict[int, list[str]] = {}
        self.on_apply: Any = None
        self.fail = False

    def ensure(self) -> bool:
        return False

    def apply(self, desired: dict[int, list[str]]) -> list[int]:
        if self.fail:
            from forge.proxy.nft import NetError

            raise NetError("nft: simulated failure")
        changed = sorted(
            p for p in set(desired) | set(self.backends) if desired.get(p) != self.backends.get(p)
        )
        self.backends = {p: list(v) for p, v in desired.items() if v}
        if changed and self.on_apply is not None:
            self.on_apply(self)
        return changed

    def update(self, entries: dict[int, list[str]]) -> list[int]:
        """Some ports' entries (an empty list removes the port), the rest as it is."""
        desired = {p: list(v) for p, v in self.backends.items()}
        for port, dials in entries.items():
            desired[port] = list(dials)
        return self.apply(desired)

    def verify(self, desired: dict[int, list[str]]) -> bool:
        return bool(self.apply(desired))

    def read(self) -> dict[int, list[str]]:
        return dict(self.backends)

    def teardown(self) -> None:
        self.backends = {}


# ---------------------------------------------------------------------------------------- store


class ControllerCrash(BaseException):
    """The control plane process died at a store write (BaseException: no boundary catches it)."""


WRITES = ("create", "update", "update_status", "delete")


class SimStore:
    """A real store as one process writes to it, with the disk's and the process's faults:

    * ``crash_at``: the write number at which the process dies — before it (``crash_after``
      False) or right after it committed (a crash *between* two writes);
    * ``full``: a callable saying the disk is full now (writes fail Unavailable);
    * ``on_write``: told (store, method, before, after) of every write that committed."""

    def __init__(self, inner: Store, name: str) -> None:
        self.inner, self.name = inner, name
        self.writes = 0
        self.crash_at: int | None = None
        self.crash_after = False
        self.full: Any = None
        self.on_write: Any = None
        self.actor = ""  # who is writing now (a controller's name), for the ownership check
        self.transform: Any = None  # a planted fault: how a broken caller would have written a record

    @property
    def fence(self) -> Fence | None:
        return self.inner.fence

    @fence.setter
    def fence(self, value: Fence | None) -> None:
        self.inner.fence = value

    def __getattr__(self, attr: str) -> Any:
        target = getattr(self.inner, attr)
        if attr not in WRITES:
            return target

        def write(*args: Any, **kwargs: Any) -> Any:
            self.writes += 1
            if self.crash_at is not None and self.writes == self.crash_at and not self.crash_after:
                raise ControllerCrash(f"{self.name} died before write {self.writes} ({attr})")
            if self.full is not None and self.full():
                raise Unavailable("database or disk is full")
            if attr == "create" and self.transform is not None:
                args = (self.transform(args[0]), *args[1:])
            before = None
            if attr in ("update", "update_status") and self.on_write is not None:
                obj = args[0]
                try:
                    before = self.inner.get(obj.kind, obj.metadata.name)
                except Exception:  # noqa: BLE001 - only for the record: the write itself decides
                    before = None
            out = target(*args, **kwargs)
            if self.on_write is not None:
                self.on_write(self, attr, before, out)
            if self.crash_at is not None and self.writes == self.crash_at and self.crash_after:
                raise ControllerCrash(f"{self.name} died after write {self.writes} ({attr})")
            return out

        return write


def diff_paths(before: Any, after: Any, prefix: str = "") -> list[str]:
    """Dotted paths of the leaves that differ between two JSON values (lists compared whole)."""
    if isinstance(before, dict) and isinstance(after, dict):
        out: list[str] = []
        for k in sorted(set(before) | set(after)):
            out += diff_paths(before.get(k), after.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if before == after else [prefix]


def status_paths(before: Resource | None, after: Resource) -> list[str]:
    b = before.dump().get("status", {}) if before is not None else {}
    a = after.dump().get("status", {})
    return [p for p in diff_paths(b, a) if not p.startswith("conditions")]
