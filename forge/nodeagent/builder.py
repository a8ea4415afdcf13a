"""Builds a release: fetch one commit into ``DATA/releases/APP/DEPLOYMENT`` and run its build.

One bare object store per repository (``DATA/git/OWNER/REPO.git``) caches objects across
releases; the commit is fetched shallowly (falling back to a full fetch when the remote refuses
a sha want), exported with ``git archive | tar -x`` (no shared index, so releases of one repo
may be extracted side by side), and ``build.commands`` run one by one with ``sh -c`` in the
sandbox inside a build cgroup, under the manifest's timeout. Output goes to the Instance's
build log through one log writer per build (``forge.nodeagent.logwriter --stamp``, in the build
cgroup: rate-limited and capped on disk like an app's log); the agent's own lines go through
the same pipe while the writer runs, and straight into the capped log before and after.
Instances of one Deployment on this node share a build: a lock per release dir and a
marker holding the commit, ``DATA/built/APP/DEPLOYMENT`` — outside the release dir on purpose:
after the build (run as the app's uid) the release tree is the app's, and the agent, as root,
never writes, reads or follows anything in it (a symlink planted there must not aim root's
write at, say, the admin token).

Private repositories: when a commit has to be fetched, the builder asks ``credentials(instance)``
(in the agent, ``GET /api/v1/instances/NAME/gitcredential``, see ``api_credentials``) once for
that fetch and keeps nothing. ``forge.gitauth`` hands the token to git through the environment
and a GIT_ASKPASS script in a 0700 temporary directory — never in argv — and git's output is
scrubbed of it before it reaches the build log or a FetchFailed message.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from forge import errors
from forge.atomicfile import write_atomic
from forge.clock import Clock
from forge.gitauth import scrub
from forge.gitsource import GitError, GitSource
from forge.manifest import fmt_duration
from forge.nodeagent import buildcache, buildlog, logwriter
from forge.nodeagent.sandbox import SandboxTimeout, prepare_workdir
from forge.nodeagent.spec import RunSpec

log = logging.getLogger(__name__)

REASON_BUILD_FAILED: Final[str] = "BuildFailed"
REASON_FETCH_FAILED: Final[str] = "FetchFailed"
BUILT_DIR = "built"  # under the agent's data dir: one marker file per built release
MIN_FREE_BYTES = 256 * 2**20  # builds wait while the data dir has less free than this …
MIN_FREE_RATIO = 0.0  # … or than this share of its filesystem (off by default: disks differ too much)
TAIL_LINES = 20
TAIL_BYTES = 2048
GIT_TIMEOUT = 300.0


class DiskLow(Exception):
    """The node's data dir is nearly full: builds wait (the store and running apps come first)."""

    reason = "InsufficientDisk"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def free_space(path: Path) -> tuple[int, int]:
    """(bytes free to unprivileged writers, total bytes) of the filesystem holding ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


class BuildError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def tail(data: bytes, lines: int = TAIL_LINES, limit: int = TAIL_BYTES) -> str:
    """The last ``lines`` lines of ``data``, at most ``limit`` bytes, decoded leniently."""
    text = data.decode("utf-8", "replace").rstrip("\n")
    out = "\n".join(text.splitlines()[-lines:])
    encoded = out.encode()
    if len(encoded) > limit:
        out = encoded[-limit:].decode("utf-8", "ignore")
    return out


def git_env(data_dir: Path) -> dict[str, str]:
    """Git runs with a scratch environment too: no agent token, no prompts, no user config."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(data_dir),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "LC_ALL": "C",
    }


Credentials = Callable[[str], str | None]  # instance name -> git token, None for a public repo


def api_credentials(client: Any) -> Credentials:
    """Ask the control plane (a ``ForgeClient`` with the node token) for an Instance's git token.

    404 means no RepoCredential applies (a public repo); every other error propagates, so the
    agent's work queue retries the build later instead of failing it."""

    def fetch(instance: str) -> str | None:
        try:
            body = client.request("GET", f"/api/v1/instances/{instance}/gitcredential")
        except errors.NotFound:
            return None
        token = body.get("token") if isinstance(body, dict) else None
        return str(token) if token else None

    return fetch


def out_of_time(build_timeout: float, where: str) -> str:
    """A build past ``build.timeout``: say which limit it was and how to raise it."""
    return (
        f"the build ran out of time{' ' + where if where else ''}: build.timeout is "
        f"{fmt_duration(build_timeout)}; raise it in forge.yaml (build: {{timeout: 20m}}, up to 2h)"
    )


class Builder:
    def __init__(
        self,
        data_dir: Path,
        git_url_template: str,
        sandbox: Any,
        driver: Any,
        clock: Clock,
        spec_factory: Callable[..., Any],
        owner_for: Callable[[str], tuple[int | None, int | None]],
        credentials: Credentials | None = None,
        network: Any = None,
        build_env: dict[str, str] | None = None,
        build_files: tuple[tuple[str, str], ...] = (),
        min_free_bytes: int = MIN_FREE_BYTES,
        min_free_ratio: float = MIN_FREE_RATIO,
        fence: Any = None,
        log_cap: int = logwriter.DEFAULT_CAP,
        build_cache: bool = True,
    ) -> None:
        self.log_cap = log_cap  # bytes of a build log kept on this node
        self.build_cache = build_cache  # each App's build cache bound into its builds (forge.buildsteps)
        self.fence = fence  # DiskFence: each release its own size-limited tree (None: unlimited, tests)
        self.min_free_bytes, self.min_free_ratio = min_free_bytes, min_free_ratio
        self.data_dir = Path(data_dir)
        self.network = network  # NodeNetwork: each build in its own network namespace (None: host network)
        # The operator's allowlist (FORGE_BUILD_ENV, FORGE_BUILD_FILES): package-index settings
        # and the like, for builds only; apps never see them.
        self.build_env = dict(build_env or {})
        self.build_files = build_files
        self.credentials = credentials
        self.git_url_template = git_url_template
        self.sandbox, self.driver, self.clock = sandbox, driver, clock
        self.spec_factory = spec_factory  # SandboxSpec
        self.owner_for = owner_for  # app -> (uid, gid) the release dir and the build run as
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    def release_dir(self, app: str, deployment: str) -> Path:
        return self.data_dir / "releases" / app / deployment

    def release_lock(self, app: str, deployment: str) -> threading.Lock:
        """The lock ``ensure_built`` holds while it builds this release (disk GC takes it too)."""
        return self._lock(str(self.release_dir(app, deployment)))

    def _lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(key, threading.Lock())

    def marker(self, release: Path) -> Path:
        """The built-marker of ``releases/APP/DEP``: ``built/APP/DEP``, in agent-only territory."""
        return self.data_dir / BUILT_DIR / release.parent.name / release.name

    def is_built(self, release: Path, commit: str) -> bool:
        try:
            built = self.marker(release).read_text().strip() == commit
        except OSError:
            return False
        return built and (self.fence is None or self.fence.ready(release))

    def discard(self, release: Path) -> None:
        """Forget a built release (its tree hit the disk limit): the next start rebuilds it fresh."""
        with self._lock(str(release)):
            self.marker(release).unlink(missing_ok=True)
            if self.fence is not None:
                self.fence.discard(release)

    def ensure_built(
        self,
        instance: str,
        app: str,
        deployment: str,
        repo: str,
        commit: str,
        run: RunSpec,
        env: dict[str, str],
        limits: tuple[int | None, float | None, int | None],
        build_log: Path,
        disk: int = 0,
        ref: str = "",
    ) -> Path:
        """Return the built release dir, building it once; ``BuildError`` on failure. ``disk``
        bytes is the release tree's limit (``resources.disk``) where a fence enforces one."""
        release = self.release_dir(app, deployment)
        with self._lock(str(release)):
            if self.is_built(release, commit):
                return release
            self._check_space()
            build_log.parent.mkdir(parents=True, exist_ok=True)
            for note in run.build_notes:  # a detected build says what was detected, first
                self._note(build_log, f"==> {note}")
            self._note(build_log, f"==> fetching {repo}@{commit[:12]}")
            cache = self._fetch(instance, repo, commit, build_log, ref)
            self._export(cache, commit, release, build_log, disk)
            uid, gid = self.owner_for(app)
            if uid is not None and os.geteuid() == 0:
                prepare_workdir(release, uid, gid if gid is not None else uid)
            self._run_commands(instance, app, release, run, env, limits, build_log, uid, gid, disk)
            write_atomic(self.marker(release), (commit + "\n").encode())
            self._note(build_log, "==> build succeeded")
            return release

    def _note(self, build_log: Path, text: str) -> None:
        """A line of the agent's own into the build log (no writer runs for it now)."""
        if build_log != Path(os.devnull):
            buildlog.append(build_log, self.clock, text, self.log_cap)

    def _check_space(self) -> None:
        """The node-level guard: no new build while the data dir's filesystem is nearly full, so a
        build (or a fetch) can never be what fills the disk under the store and the apps."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        free, total = free_space(self.data_dir)
        need = max(self.min_free_bytes, int(total * self.min_free_ratio))
        if free < need:
            raise DiskLow(
                f"this node's data dir has {free // 2**20} MiB free (builds need {need // 2**20} MiB); "
                "the build waits until space is freed"
            )

    # -- fetch -----------------------------------------------------------------
    def _fetch(self, instance: str, repo: str, commit: str, build_log: Path, ref: str = "") -> Path:
        """The commit in the node's bare cache of ``repo``, through ``forge.gitsource`` — the one
        git fetch path the source controller uses too (shallow first, every branch when the
        remote refuses a sha; tokens only through the environment). Credentials are asked for
        only when the commit has to be fetched."""
        source = GitSource(self.data_dir / "git", fetch_timeout=GIT_TIMEOUT)
        cache = source.cache_path(repo)
        with self._lock(str(cache)):
            if (cache / "HEAD").exists() and source.has_commit(cache, commit):
                return cache
            url = self.git_url_template.format(full_name=repo)
            token = self.credentials(instance) if self.credentials is not None else None
            try:
                cache = source.fetch(repo, url, commit, token, ref=ref or None)
            except GitError as exc:
                message = exc.message if not token else scrub(exc.message, token)
                self._note(build_log, message)
                raise BuildError(
                    REASON_FETCH_FAILED, f"cannot fetch {repo}@{commit[:12]}: {message}"
                ) from None
            finally:
                del token
            self._note(build_log, f"fetched {commit[:12]}")
            return cache

    def _export(self, cache: Path, commit: str, release: Path, build_log: Path, disk: int = 0) -> None:
        self.marker(release).unlink(missing_ok=True)  # whatever was there is not that build any more
        if self.fence is not None:
            try:
                self.fence.prepare(release, disk)  # a fresh tree of exactly the disk limit
            except (OSError, errors.ForgeError) as exc:
                raise BuildError(REASON_BUILD_FAILED, f"cannot give the release its disk: {exc}") from None
        else:
            if release.exists() or release.is_symlink():
                shutil.rmtree(release)  # a half-built leftover (no marker): start clean (never follows links)
            release.mkdir(parents=True)
        archive = subprocess.Popen(
            ["git", f"--git-dir={cache}", "archive", "--format=tar", commit],
            env=git_env(self.data_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        untar = subprocess.run(
            ["tar", "-x", "-C", str(release)],
            stdin=archive.stdout,
            capture_output=True,
            check=False,
            timeout=GIT_TIMEOUT,
        )
        assert archive.stdout is not None and archive.stderr is not None
        archive.stdout.close()
        err = archive.stderr.read()
        archive.stderr.close()
        if archive.wait() != 0 or untar.returncode != 0:
            raise BuildError(
                REASON_FETCH_FAILED, f"cannot check out {commit[:12]}: {tail(err + untar.stderr)}"
            )

    # -- build commands ----------------------------------------------------------
    def _run_commands(
        self,
        instance: str,
        app: str,
        release: Path,
        run: RunSpec,
        env: dict[str, str],
        limits: tuple[int | None, float | None, int | None],
        build_log: Path,
        uid: int | None,
        gid: int | None,
        disk: int = 0,
    ) -> None:
        if not run.build_commands:
            return
        cgroup = f"build-{instance}"
        deadline = self.clock.monotonic() + run.build_timeout
        if self.driver is not None:
            if self.driver.exists(cgroup):
                self.driver.kill_all(cgroup)
                self.driver.remove(cgroup)
            self.driver.create(cgroup)
            self.driver.set_limits(cgroup, *limits)
        net: dict[str, Any] = {}
        cache_dir = buildcache.ensure_app_dir(self.data_dir, app, uid, gid) if self.build_cache else None
        try:
            if self.network is not None:
                # "build." cannot start an Instance name (DNS labels have no dots), so a build's
                # namespace never collides with an Instance's.
                try:
                    self.network.attach(f"build.{instance}")
                except errors.ForgeError as exc:
                    raise BuildError(
                        REASON_BUILD_FAILED, f"cannot give the build a network: {exc.message}"
                    ) from None
                net = {
                    "netns": self.network.netns_path(f"build.{instance}"),
                    "resolv_conf": self.network.dns_text,
                }
            writer = _BuildWriter(build_log, self.log_cap, self.driver, cgroup)
            try:
                for cmd in run.build_commands:
                    writer.note(f"==> $ {cmd}")
                    left = deadline - self.clock.monotonic()
                    if left <= 0:
                        raise BuildError(
                            REASON_BUILD_FAILED, out_of_time(run.build_timeout, f"before {cmd!r}")
                        )
                    spec = self.spec_factory(
                        app=app,
                        workdir=str(release),
                        command=cmd,
                        env={**self.build_env, **env},
                        uid=uid,
                        gid=gid,
                        cgroup=cgroup if self.driver is not None else None,
                        ro_files=self.build_files,
                        build_cache=cache_dir,
                        fsize_limit=disk
                        if disk and self.fence is not None and self.fence.mode == "watcher"
                        else None,
                        **net,
                    )
                    spec.output_fd = writer.fd
                    code = self._run_one(spec, left)
                    if code != 0:
                        writer.finish()  # everything the command printed is in the log now
                        output = _after_last_step(
                            buildlog.strip_stamps(logwriter.read_tail(build_log.parent, "build"))
                        )
                        if code is None:
                            what = out_of_time(run.build_timeout, "")
                            self._note(build_log, f"==> {what}")
                            raise BuildError(
                                REASON_BUILD_FAILED, f"build command {cmd!r}: {what}\n{tail(output)}"
                            )
                        what = f"exited with code {code}"
                        if self.fence is not None and self.fence.exceeded(release, disk):
                            what += f" after filling the release's disk limit of {disk // 2**20} MiB (resources.disk)"
                        self._note(build_log, f"==> build command {what}")
                        raise BuildError(
                            REASON_BUILD_FAILED, f"build command {cmd!r} {what}:\n{tail(output)}"
                        )
            finally:
                writer.finish()
        finally:
            if self.driver is not None and self.driver.exists(cgroup):
                self.driver.kill_all(cgroup)
                self.driver.remove(cgroup)
            if net:
                self.network.detach(f"build.{instance}")

    def _run_one(self, spec: Any, timeout: float) -> int | None:
        """Exit code, or None when the command ran past the timeout."""
        try:
            return int(self.sandbox.run(spec, timeout))
        except SandboxTimeout:
            return None
        except errors.ForgeError as exc:
            raise BuildError(REASON_BUILD_FAILED, f"cannot run build command: {exc.message}") from None


def _after_last_step(data: bytes) -> bytes:
    """The output of the last build command: what follows its ``==> $ cmd`` line."""
    at = data.rfind(b"==> $ ")
    if at < 0:
        return data
    nl = data.find(b"\n", at)
    return data[nl + 1 :] if nl >= 0 else b""


class _BuildWriter:
    """One build's log writer: a process in the build cgroup reading a pipe whose write end every
    build command gets as stdout and stderr (the agent writes its ``==> $`` lines into it too)."""

    FINISH_SECONDS: Final = 5.0

    def __init__(self, build_log: Path, cap: int, driver: Any, cgroup: str) -> None:
        self.driver, self.cgroup = driver, cgroup
        r, self.fd = os.pipe()
        try:
            self.proc: subprocess.Popen[bytes] | None = logwriter.spawn(
                r,
                build_log.parent,
                "build",
                cap,
                stamp=True,
                cgroup_files=driver.procs_files(cgroup) if driver is not None else (),
                first=logwriter.log_end(build_log.parent, "build"),
            )
        except BaseException:
            os.close(self.fd)
            raise
        finally:
            os.close(r)

    def note(self, text: str) -> None:
        try:
            os.write(self.fd, text.encode() + b"\n")
        except OSError as exc:  # the writer is gone (killed with a timed-out build): not the build's fault
            log.info("build log writer gone: %s", exc)

    def finish(self) -> None:
        """Close the pipe and let the writer drain it and end; processes a command left behind
        (holding the pipe open) are killed first — the build is over for them anyway."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.proc is None:
            return
        if self.driver is not None and self.driver.exists(self.cgroup):
            for pid in self.driver.procs(self.cgroup):
                if pid != self.proc.pid:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        continue
        try:
            self.proc.wait(timeout=self.FINISH_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # a leftover outside any cgroup still holds the pipe: stop waiting
            self.proc.wait()
        self.proc = None
