"""Source controller: a new Deployment's commit → validated ``forge.yaml`` in its status.

Without a ``forge.yaml`` (or with one that leaves ``build`` out) the build is detected from the
commit's files by ``forge.detect`` (reason ``DetectionFailed`` when it cannot be).

For a Deployment with no manifest that is not finished: ``SourceReady Unknown``;
fetch the commit into ``DATA_DIR/source-cache`` (``forge.gitsource``), read ``forge.yaml``
there, validate it with ``forge.manifest.parse_manifest`` and store the typed ``Manifest``
with ``SourceReady True``. A failure is this controller's verdict, ``SourceReady False`` with
``InvalidManifest`` (the message names the field path) or ``FetchFailed`` and a Warning Event;
the rollout controller, the one writer of ``phase``, then ends the Deployment ``Failed``.

Fetch failures that may be transient (network, remote down, timeouts) are retried with the
runtime's per-key back-off (the reconcile raises, and ``SourceReady`` says it is retrying)
until at least ``FETCH_ATTEMPTS`` attempts over at least ``FETCH_DEADLINE`` seconds failed,
then the Deployment fails. A remote that answers but lacks the commit fails it at once.

A push (trigger ``webhook``) deploys only the newest history of its branch: when ``git
ls-remote`` shows the branch elsewhere and that head is not an ancestor of the pushed commit (a
newer push, or a captured delivery replayed or arriving late) ``SourceReady`` is False with reason
``StalePush`` and the Deployment ends ``Cancelled`` (rollout's write) with a Warning Event; it never builds and never takes traffic. This is
decided before the push's release cancels anything: rollout cancels older releases only for a
newer one that has passed this check (it has a manifest). ``forge deploy`` and rollbacks are a
person's choice and exempt.

Private repos: the RepoCredential whose scope is ``owner/repo`` wins over one scoped to
``owner`` (``forge.gitauth.select_credential``); its token is decrypted with the Keyring and handed to git through the environment
only (see ``forge.gitsource``) — never in arguments, logs, Events or messages.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar, Final, cast

from forge.clock import Clock
from forge.config import Config
from forge.controllers import deploystate as ds
from forge.controllers.base import DONE, Controller, Result
from forge.controllers.cache import read_only
from forge.detect import DetectionFailed, read_files, resolve_manifest, wants_detection
from forge.errors import Invalid, NotFound
from forge.events import EventRecorder
from forge.gitauth import open_token, scrub, select_credential
from forge.github.auth import app_tokens
from forge.github.client import GithubError
from forge.gitsource import GitError, GitSource
from forge.manifest import Manifest
from forge.models import (
    DEPLOYMENT_TERMINAL,
    LABEL_PREVIEW_OF,
    App,
    Deployment,
    RepoCredential,
    set_condition,
)
from forge.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

SOURCE_READY: Final[str] = "SourceReady"
REASON_FETCHING: Final[str] = "Fetching"
REASON_FETCHED: Final[str] = "ManifestValid"
REASON_INVALID: Final[str] = "InvalidManifest"
REASON_FETCH_FAILED: Final[str] = "FetchFailed"
REASON_RETRYING: Final[str] = "FetchRetrying"
REASON_STALE: Final[str] = ds.REASON_STALE_PUSH
REASON_UNDETECTED: Final[str] = DetectionFailed.reason
FETCH_ATTEMPTS = 5
FETCH_DEADLINE = 120.0
MANIFEST_FILE = "forge.yaml"


def needs_source(dep: Deployment) -> bool:
    src = dep.status.condition(SOURCE_READY)
    return (
        dep.status.manifest is None
        and dep.status.phase not in DEPLOYMENT_TERMINAL
        and not (src is not None and src.status == "False")  # its verdict is given: rollout ends it
        and dep.metadata.deletion_timestamp is None
    )


def describe_invalid(exc: Invalid) -> str:
    """``forge.yaml: resources.memory: ...; run.command: ...`` from the validation details."""
    if not exc.details:
        return f"{MANIFEST_FILE}: {exc.message}"
    parts = [f"{d['path']}: {d['message']}" if d.get("path") else d["message"] for d in exc.details[:5]]
    more = f" (and {len(exc.details) - 5} more)" if len(exc.details) > 5 else ""
    return f"{MANIFEST_FILE}: " + "; ".join(parts) + more


def _valid_message(manifest: Manifest, commit: str) -> str:
    if manifest.build.detected:
        return f"build detected at {commit[:12]}: {manifest.build.detected[0]}"
    return f"{MANIFEST_FILE} at {commit[:12]} is valid"


class SourceController(Controller):
    name: ClassVar[str] = "source"
    watches: ClassVar[tuple[str, ...]] = ("Deployment",)
    resync_seconds: ClassVar[float] = 60.0

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        recorder: EventRecorder | None = None,
        git: GitSource | None = None,
        fetch_attempts: int = FETCH_ATTEMPTS,
        fetch_deadline: float = FETCH_DEADLINE,
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self.git = git or GitSource(Path(config.data_dir) / "source-cache")
        self.fetch_attempts, self.fetch_deadline = fetch_attempts, fetch_deadline
        self._failures: dict[str, tuple[int, float]] = {}  # key → (failed attempts, first failure)
        self._repo_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self.app_tokens = app_tokens(config, clock, store)  # a GitHub App fetches private repos

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        if event.type == "DELETED" or not needs_source(cast(Deployment, event.object)):
            self._failures.pop(event.object.metadata.name, None)
            return ()
        return (event.object.metadata.name,)

    def all_keys(self) -> Iterable[str]:
        return [d.metadata.name for d in read_only(self.store, Deployment) if needs_source(d)]

    def reconcile(self, key: str) -> Result | None:
        try:
            dep: Deployment = self.store.get(Deployment, key)
        except NotFound:
            self._failures.pop(key, None)
            return DONE
        if not needs_source(dep):
            return DONE
        commit = dep.spec.commit
        now = self.clock.now_iso()
        # Fetching once, at the first attempt: while retrying, the condition keeps saying why
        # (FetchRetrying). Flipping it back on every attempt made two writes per attempt, and each
        # write's watch event woke this key again past its back-off: a hot loop while GitHub is down.
        src = dep.status.condition(SOURCE_READY)
        retrying = src is not None and src.status == "Unknown" and src.reason == REASON_RETRYING
        if not retrying and set_condition(
            dep.status, SOURCE_READY, "Unknown", REASON_FETCHING, f"fetching {commit[:12]}", now
        ):
            dep = self.store.update_status(dep)

        repo = dep.spec.repo
        if not repo:
            try:
                repo = self.store.get(App, dep.spec.app).spec.repo
            except NotFound:
                return self._fail(
                    dep,
                    REASON_FETCH_FAILED,
                    f"App {dep.spec.app} not found and the Deployment names no repository",
                )
        token = self._token(repo)
        url = self.config.git_url_template.format(full_name=repo)
        stale_head: str | None = None
        try:
            with self._lock_for(repo):
                cache = self.git.fetch(repo, url, commit, token, ref=dep.spec.ref or None)
                text = self.git.show(cache, commit, MANIFEST_FILE)
                files = read_files(lambda p: self.git.show(cache, commit, p)) if wants_detection(text) else {}
                stale_head = self._stale_head(dep, repo, url, token)
        except GitError as exc:
            msg = scrub(f"fetching {repo}@{commit[:12]} failed: {exc.message}", token)
            attempts, first = self._failures.get(key, (0, self.clock.monotonic()))
            attempts += 1
            patient = attempts < self.fetch_attempts or self.clock.monotonic() - first < self.fetch_deadline
            if exc.transient and patient:
                self._failures[key] = (attempts, first)
                if set_condition(
                    dep.status, SOURCE_READY, "Unknown", REASON_RETRYING, msg, self.clock.now_iso()
                ):
                    self.store.update_status(dep)
                raise GitError(f"{msg} (attempt {attempts})") from None
            self._failures.pop(key, None)
            return self._fail(dep, REASON_FETCH_FAILED, msg)
        self._failures.pop(key, None)
        if stale_head is not None:
            return self._stale(dep, stale_head)
        try:
            manifest = resolve_manifest(text, files, self._manifest_name(dep))
        except DetectionFailed as exc:
            return self._fail(dep, REASON_UNDETECTED, scrub(exc.message, token))
        except Invalid as exc:
            return self._fail(dep, REASON_INVALID, scrub(describe_invalid(exc), token))
        dep.status.manifest = manifest
        set_condition(
            dep.status,
            SOURCE_READY,
            "True",
            REASON_FETCHED,
            _valid_message(manifest, commit),
            self.clock.now_iso(),
        )
        dep = self.store.update_status(dep)
        self.recorder.record(dep, "Normal", REASON_FETCHED, _valid_message(manifest, commit))
        return DONE

    # ------------------------------------------------------------------ stale pushes

    def _stale_head(self, dep: Deployment, repo: str, url: str, token: str | None) -> str | None:
        """For a push (webhook), the branch's head when the pushed commit is history behind it.

        GitHub does not order deliveries and its signature does not cover the delivery id, so a
        push may arrive late or be replayed: a push is a signal to deploy the branch's head,
        never an order to go back. Ordered by history, not by arrival: the push is stale when the
        branch points elsewhere and its head is not behind the pushed commit (a remote that has
        not caught up with this push yet is not a reason to drop it). The pushed commit being
        the head — a force-push back to an older commit — deploys it. Deploys and rollbacks a
        person asked for are exempt."""
        ref = dep.spec.ref
        if dep.spec.trigger.type != "webhook" or not ref.startswith("refs/heads/"):
            return None
        try:
            head = self.git.resolve_ref(url, ref, token)
        except GitError as exc:
            if exc.transient:
                raise
            return "(deleted)"  # the branch is gone: nothing to deploy from it
        if head == dep.spec.commit:
            return None
        if self.git.descends_from(repo, url, dep.spec.commit, head, token):
            return None  # the remote lags behind this push: it is the newest known
        return head

    def _stale(self, dep: Deployment, head: str) -> Result:
        ref = dep.spec.ref.removeprefix("refs/heads/")
        where = "no longer exists" if head == "(deleted)" else f"now points at {head[:12]}"
        message = (
            f"{ref} {where}, not at {dep.spec.commit[:12]}: a newer push or a replayed delivery; "
            "only a branch's current head is deployed"
        )
        return self._fail(dep, REASON_STALE, message)

    # ------------------------------------------------------------------ helpers

    def _lock_for(self, repo: str) -> threading.Lock:
        with self._locks_guard:
            return self._repo_locks.setdefault(repo.lower(), threading.Lock())

    def _token(self, repo: str) -> str | None:
        creds: list[RepoCredential] = self.store.list(RepoCredential)[0]
        cred = select_credential(creds, repo)
        if cred is None or not cred.spec.token:
            return self._app_token(repo)
        from forge.secrets import Keyring  # only when a private repo needs it

        return open_token(Keyring.load(self.config), cred)

    def _manifest_name(self, dep: Deployment) -> str:
        """The name forge.yaml may carry: a pull request's preview runs its App's forge.yaml."""
        try:
            app = self.store.get(App, dep.spec.app)
        except NotFound:
            return dep.spec.app
        return app.metadata.labels.get(LABEL_PREVIEW_OF, dep.spec.app)

    def close(self) -> None:
        if self.app_tokens is not None:
            self.app_tokens.close()

    def _app_token(self, repo: str) -> str | None:
        """With a GitHub App and no RepoCredential: the installation's token (cached by AppTokens)."""
        if self.app_tokens is None:
            return None
        try:
            return self.app_tokens.token_for(repo)[1]
        except GithubError as exc:
            if exc.code == 404:
                return None  # the App is not installed there: fetch as anyone may (a public repo)
            raise GitError(
                f"no GitHub App token for {repo}: {exc.message}", transient=exc.transient
            ) from None

    def _fail(self, dep: Deployment, reason: str, message: str) -> Result:
        """The verdict, as this controller's condition: SourceReady False with the reason. The
        rollout controller (the phase's one writer) ends the Deployment on it — Failed, or
        Cancelled for a stale push (``deploystate.verdict``)."""
        now = self.clock.now_iso()
        set_condition(dep.status, SOURCE_READY, "False", reason, message, now)
        dep = self.store.update_status(dep)
        self.recorder.record(dep, "Warning", reason, message)
        log.info("deployment %s failed: %s: %s", dep.metadata.name, reason, message)
        return DONE
