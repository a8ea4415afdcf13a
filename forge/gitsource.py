"""Git plumbing for the source controller: a bare cache per repository, fetch one commit, read
one file at it.

Tokens for private repositories never reach a process argument: ``forge.gitauth`` hands them
to git through the environment and a ``GIT_ASKPASS`` script in a private temporary directory,
with inherited credential helpers switched off. Everything git prints is scrubbed of the token
before it becomes part of an error message. ``GIT_TERMINAL_PROMPT=0`` and timeouts keep a dead
remote from hanging a worker.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import ClassVar

from forge.errors import ForgeError
from forge.gitauth import git_auth

FETCH_TIMEOUT = 120.0
LOCAL_TIMEOUT = 30.0
LS_REMOTE_TIMEOUT = 15.0
HISTORY_DEPTH = 200  # how far back a push's history is read to order it against the branch's head
_SHA_WANT_REFUSED = re.compile(
    r"not our ref|unadvertised object|couldn't find remote ref|no such remote ref|"
    r"upload-pack: not our|Server does not allow request for unadvertised",
    re.I,
)


class GitError(ForgeError):
    """A git command failed; ``transient`` says whether trying again may help."""

    reason: ClassVar[str] = "FetchFailed"

    def __init__(self, message: str, transient: bool = True) -> None:
        super().__init__(message)
        self.transient = transient


class GitSource:
    """Bare repositories under ``root`` (``root/OWNER/NAME.git``), safe to share between threads
    only per repository (the caller serialises work on one repository)."""

    def __init__(self, root: Path, fetch_timeout: float = FETCH_TIMEOUT) -> None:
        self.root = Path(root)
        self.fetch_timeout = fetch_timeout

    def cache_path(self, repo: str) -> Path:
        owner, _, name = repo.partition("/")
        return self.root / owner.lower() / f"{name.lower()}.git"

    def git_argv(self, args: list[str], cwd: Path | None, auth_args: list[str]) -> list[str]:
        """The argv of one git run (``auth_args`` from ``forge.gitauth``: never the token)."""
        return ["git", *auth_args, *(["-C", str(cwd)] if cwd is not None else []), *args]

    def _git(self, args: list[str], cwd: Path | None, token: str | None, timeout: float) -> str:
        base = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
        base["LC_ALL"] = "C"
        with git_auth(token, self.root) as auth:
            try:
                proc = subprocess.run(
                    self.git_argv(args, cwd, auth.args),
                    env=auth.apply(base),
                    capture_output=True,
                    timeout=timeout,
                    stdin=subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                raise GitError(f"git {args[0]} timed out after {timeout:.0f}s") from None
            except OSError as exc:
                raise GitError(f"git could not run: {exc.strerror}") from None
        if proc.returncode != 0:
            err = auth.scrub(proc.stderr.decode("utf-8", "replace")).strip()
            raise GitError(err[-600:] or f"git {args[0]} exited with {proc.returncode}")
        return auth.scrub(proc.stdout.decode("utf-8", "replace"))

    def has_commit(self, cache: Path, commit: str) -> bool:
        try:
            self._git(["cat-file", "-e", f"{commit}^{{commit}}"], cache, None, LOCAL_TIMEOUT)
            return True
        except GitError:
            return False

    def fetch(
        self, repo: str, url: str, commit: str, token: str | None = None, ref: str | None = None
    ) -> Path:
        """Make ``commit`` present in the cache of ``repo``; ``GitError(transient=False)`` when the
        remote answered but does not have it. A pull request's head (``ref`` =
        ``refs/pull/N/head``) is fetched by that ref first: a fork's commits live in the base
        repository only under it."""
        cache = self.cache_path(repo)
        if not (cache / "HEAD").exists():
            cache.parent.mkdir(parents=True, exist_ok=True)
            self._git(["init", "--bare", "--quiet", str(cache)], None, None, LOCAL_TIMEOUT)
        if self.has_commit(cache, commit):
            return cache
        if ref is not None and re.fullmatch(r"refs/pull/\d+/head", ref):
            self._git(
                ["fetch", "--quiet", "--no-tags", "--depth", "1", url, f"+{ref}:refs/forge/{ref[5:]}"],
                cache,
                token,
                self.fetch_timeout,
            )
            if self.has_commit(cache, commit):
                return cache  # else the pull request moved on meanwhile: ask for the commit itself
        self._fetch_sha(cache, url, commit, token, "--depth=1")
        if not self.has_commit(cache, commit):
            raise GitError(f"commit {commit} not found in {repo}", transient=False)
        return cache

    def _fetch_sha(self, cache: Path, url: str, commit: str, token: str | None, depth: str) -> None:
        """Fetch ``commit`` by its sha to ``depth`` (``--depth=N``); a remote that refuses wants
        by sha (or lacks it) gets every branch fetched instead, and the caller looks again."""
        try:
            self._git(["fetch", "--quiet", "--no-tags", depth, url, commit], cache, token, self.fetch_timeout)
        except GitError as exc:
            if not _SHA_WANT_REFUSED.search(exc.message):
                raise
            self._git(
                ["fetch", "--quiet", "--no-tags", url, "+refs/heads/*:refs/remotes/origin/*"],
                cache,
                token,
                self.fetch_timeout,
            )

    def resolve_ref(
        self, url: str, ref: str, token: str | None = None, timeout: float = LS_REMOTE_TIMEOUT
    ) -> str:
        """The commit a branch or tag names on the remote (``git ls-remote``; nothing is fetched).

        ``main`` tries ``refs/heads/main``, then the tag ``main`` (peeled to its commit);
        ``refs/...`` is taken as written. ``GitError(transient=False)`` when the remote answered
        but has no such ref."""
        if not ref or ref.startswith("-") or any(c in ref for c in " \t\n\\~^:?*[") or ".." in ref:
            raise GitError(f"{ref!r} is not a branch or tag name", transient=False)
        names = (
            [ref]
            if ref.startswith("refs/")
            else [f"refs/heads/{ref}", f"refs/tags/{ref}^{{}}", f"refs/tags/{ref}"]
        )
        out = self._git(["ls-remote", "--", url, *names], None, token, timeout)
        found = dict(line.split("\t", 1)[::-1] for line in out.splitlines() if "\t" in line)
        for name in names:
            sha = found.get(name, "")
            if re.fullmatch(r"[0-9a-f]{40}", sha):
                return sha
        raise GitError(f"{ref!r} is not a branch or tag of the repository", transient=False)

    def show(self, cache: Path, commit: str, path: str) -> bytes | None:
        """The bytes of ``path`` at ``commit``; None only when git says the commit has no such
        file. Any other failure (a missing object, a timeout, a broken cache) is a transient
        ``GitError``: it is never read as "the file is not there"."""
        listed = self._git(["ls-tree", "--name-only", commit, "--", path], cache, None, LOCAL_TIMEOUT)
        if path not in listed.splitlines():
            return None
        cmd = ["git", "-C", str(cache), "cat-file", "blob", f"{commit}:{path}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, timeout=LOCAL_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise GitError(f"reading {path} timed out") from None
        if proc.returncode != 0:
            raise GitError(
                f"reading {path} at {commit[:12]} failed: {proc.stderr.decode(errors='replace')[-300:]}"
            )
        return proc.stdout

    def descends_from(
        self, repo: str, url: str, commit: str, ancestor: str, token: str | None = None
    ) -> bool:
        """Whether ``ancestor`` is in ``commit``'s history (within ``HISTORY_DEPTH`` commits).

        The cache holds shallow fetches, so ``commit`` is deepened first; a commit further back
        than that is taken as not an ancestor."""
        cache = self.fetch(repo, url, ancestor, token)
        self.fetch(repo, url, commit, token)
        self._fetch_sha(cache, url, commit, token, f"--depth={HISTORY_DEPTH}")
        argv = self.git_argv(["merge-base", "--is-ancestor", ancestor, commit], cache, [])
        try:
            proc = subprocess.run(argv, capture_output=True, timeout=LOCAL_TIMEOUT, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise GitError("git merge-base timed out") from None
        if proc.returncode in (0, 1):
            return proc.returncode == 0
        raise GitError(f"git merge-base failed: {proc.stderr.decode(errors='replace')[-300:]}")
