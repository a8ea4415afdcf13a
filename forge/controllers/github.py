"""GitHub controller: every release reports back to GitHub, from its record, in order.

For each Deployment it sends what ``forge.github.reports.report_path`` says the release has
earned and GitHub has not seen yet: the GitHub Deployment (environment = the App's name), its
statuses (``in_progress`` → ``success`` with the App's URL, or ``failure`` with the reason;
``inactive`` once superseded) and a commit status with context ``forge/APP``. Its progress is
its own status slot, ``Deployment.status.github`` (the GitHub Deployment's id, the steps sent,
why the last attempt did not go out); it writes nothing else, and nothing else writes that.

GitHub down or rate-limited never holds a deploy: nothing else waits for this controller. A
failed call raises (the work queue backs the key off, exponentially with jitter); a rate limit
returns ``requeue_after`` until GitHub's ``Retry-After`` or reset time, and the client sends
nothing under that credential before then. Each step is recorded as sent right after GitHub
accepted it, and only steps after the last recorded one are ever sent, so a release's states
reach GitHub in order and a newer state is never followed by an older one. The GitHub
Deployment itself is ensured: before creating one the controller looks for the one an
interrupted earlier attempt made (``payload.forge.release``).

Only present when configured (``FORGE_GITHUB_TOKEN`` or a GitHub App): without it Forge
behaves as it did.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar, Final

from forge.clock import Clock, iso, parse_iso
from forge.config import Config
from forge.controllers.base import DONE, Controller, Result
from forge.controllers.cache import read_only
from forge.errors import Conflict, Invalid, NotFound, TerminalError
from forge.events import EventRecorder
from forge.github.auth import AppTokens, tokens_from_config
from forge.github.client import GithubClient, GithubError, RateLimited
from forge.github.reports import (
    REPORT_HORIZON_SECONDS,
    Step,
    commit_body,
    deployment_body,
    environment_of,
    find_release,
    pending_steps,
    report_path,
    short,
    status_body,
)
from forge.models import DEPLOYMENT_TERMINAL, App, Deployment, GithubReport, Preview, PreviewGithub
from forge.store.base import Store, WatchEvent

log = logging.getLogger(__name__)

REASON_REPORT_FAILED: Final[str] = "GithubReportFailed"
STATUS_WRITE_TRIES: Final[int] = 5


def wants_report(dep: Deployment, now: float) -> bool:
    """True while this release has steps GitHub has not seen. A finished release that never
    reported and ended before the horizon is history from before reporting was on."""
    if dep.metadata.deletion_timestamp is not None:
        return False
    st = dep.status
    if st.github is None and st.phase in DEPLOYMENT_TERMINAL:
        ended = st.superseded_time or st.finished_time
        if ended and now - parse_iso(ended) > REPORT_HORIZON_SECONDS:
            return False
    sent = st.github.sent if st.github is not None else []
    return bool(pending_steps(report_path(dep), sent))


def split_repo(repo: str) -> tuple[str, str]:
    owner, _, name = repo.partition("/")
    return owner, name


def github_client(
    who: str, store: Store, clock: Clock, config: Config, client: GithubClient | None
) -> GithubClient:
    """The client a GitHub-reporting controller talks through: the one given (tests), else one
    with the configured token or GitHub App."""
    if client is not None:
        return client
    tokens = tokens_from_config(config, clock, store)
    if tokens is None:
        raise Invalid(f"the {who} controller needs FORGE_GITHUB_TOKEN or a GitHub App")
    return GithubClient(config.github_api_url, tokens, clock)


class GithubController(Controller):
    name: ClassVar[str] = "github"
    watches: ClassVar[tuple[str, ...]] = ("Deployment",)
    resync_seconds: ClassVar[float] = 600.0

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        recorder: EventRecorder | None = None,
        client: GithubClient | None = None,
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self.client = github_client(self.name, store, clock, config, client)

    def close(self) -> None:
        self.client.close()

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        dep = event.object
        if event.type == "DELETED" or not isinstance(dep, Deployment):
            return ()
        return (dep.metadata.name,) if wants_report(dep, self.clock.now()) else ()

    def all_keys(self) -> Iterable[str]:
        now = self.clock.now()
        return sorted(d.metadata.name for d in read_only(self.store, Deployment) if wants_report(d, now))

    # ------------------------------------------------------------------ reconcile

    def reconcile(self, key: str) -> Result | None:
        try:
            dep = self.store.get(Deployment, key)
        except NotFound:
            return DONE
        now = self.clock.now()
        if not wants_report(dep, now):
            return DONE
        app = self._app(dep.spec.app)
        repo = dep.spec.repo or (app.spec.repo if app is not None else "")
        if not repo or "/" not in repo:
            return DONE
        if app is None or self._preview_gone(dep.spec.app):
            # the App was deleted (a preview's teardown marks its environment inactive, from the
            # github-previews controller): nothing of it may report after that
            return DONE
        installation = dep.spec.trigger.installation_id
        if installation is not None and isinstance(self.client.tokens, AppTokens):
            self.client.tokens.remember_installation(repo, installation)
        report = dep.status.github or GithubReport()
        todo = pending_steps(report_path(dep), report.sent)
        try:
            return self._send_all(dep, app, repo, todo)
        except RateLimited as exc:
            self._note(dep, f"GitHub rate limit: reports resume at {iso(exc.until)}")
            return Result(requeue_after=max(1.0, exc.until - self.clock.now()))
        except GithubError as exc:
            self._note(dep, exc.message)
            if exc.transient:
                raise
            self.recorder.record(dep, "Warning", REASON_REPORT_FAILED, exc.message)
            raise TerminalError(exc.message) from None

    def _send_all(self, dep: Deployment, app: App | None, repo: str, todo: list[Step]) -> Result:
        blocked = self.client.blocked_until(repo)
        if blocked is not None:
            raise RateLimited("GitHub rate limit", blocked)
        for step in todo:
            gh_id = self._send(dep, app, repo, step)
            dep = self._mark_sent(dep, step, gh_id)
        return DONE

    # ------------------------------------------------------------------ steps

    def _send(self, dep: Deployment, app: App | None, repo: str, step: Step) -> int | None:
        """Send one step; the GitHub Deployment's id (created or found) for the create step."""
        owner, name = split_repo(repo)
        base = f"/repos/{owner}/{name}"
        report = dep.status.github or GithubReport()
        if step.kind == "create":
            return self._ensure_deployment(dep, app, repo, base)
        log_url = self._log_url(dep)
        if step.kind == "status":
            if report.deployment_id is None:
                raise GithubError(f"{dep.metadata.name}: no GitHub Deployment recorded", transient=False)
            body = status_body(dep, step, log_url, self._environment_url(dep, app))
            self.client.request(
                "POST", f"{base}/deployments/{report.deployment_id}/statuses", repo, json=body
            )
        else:
            self.client.request(
                "POST", f"{base}/statuses/{dep.spec.commit}", repo, json=commit_body(dep, step, log_url)
            )
        log.info("github: %s reported %s to %s", dep.metadata.name, step.name, repo)
        return report.deployment_id

    def _ensure_deployment(self, dep: Deployment, app: App | None, repo: str, base: str) -> int:
        params = {"sha": dep.spec.commit, "environment": environment_of(dep), "per_page": 100}
        found = self.client.request("GET", f"{base}/deployments", repo, params=params)
        existing = find_release(found if isinstance(found, list) else [], dep.metadata.name, dep.metadata.uid)
        if existing is not None:
            return existing
        made: Any = self.client.request("POST", f"{base}/deployments", repo, json=deployment_body(dep, app))
        if not isinstance(made, dict) or not isinstance(made.get("id"), int):
            # 202: GitHub merged or queued instead of creating (never asked for: auto_merge is off)
            raise GithubError(f"POST {base}/deployments: no deployment was created", transient=False)
        return int(made["id"])

    def _mark_sent(self, dep: Deployment, step: Step, gh_id: int | None) -> Deployment:
        """Record ``step`` as sent in this controller's slot, re-reading on a conflict: the slot
        is this controller's alone, so a concurrent write elsewhere never decides anything here."""
        for _ in range(STATUS_WRITE_TRIES):
            report = (dep.status.github or GithubReport()).model_copy(deep=True)
            if step.name not in report.sent:
                report.sent.append(step.name)
            if gh_id is not None:
                report.deployment_id = gh_id
            report.message = ""
            new = dep.model_copy(deep=True)
            new.status.github = report
            try:
                return self.store.update_status(new)
            except Conflict:
                dep = self.store.get(Deployment, dep.metadata.name)
        raise Conflict(f"{dep.metadata.name}: could not record the GitHub report step {step.name}")

    def _note(self, dep: Deployment, message: str) -> None:
        """Say in the slot why reports wait (written only when the reason changes)."""
        try:
            dep = self.store.get(Deployment, dep.metadata.name)  # steps may have been recorded since
        except NotFound:
            return
        report = dep.status.github or GithubReport()
        if report.message == message:
            return
        new = dep.model_copy(deep=True)
        new.status.github = report.model_copy(update={"message": message})
        try:
            self.store.update_status(new)
        except Conflict:
            pass  # only a note; the next attempt writes it

    def _preview_gone(self, app: str) -> bool:
        try:
            preview = self.store.get(Preview, app)
        except NotFound:
            return False
        return preview.status.phase in PREVIEW_GONE

    # ------------------------------------------------------------------ links

    def _app(self, name: str) -> App | None:
        try:
            return self.store.get(App, name)
        except NotFound:
            return None

    def _log_url(self, dep: Deployment) -> str:
        return f"{self.config.dashboard_url}/ui/index.html#/apps/{dep.spec.app}"

    def _environment_url(self, dep: Deployment, app: App | None) -> str:
        if app is not None and app.status.url:
            return app.status.url
        return f"http://{dep.spec.app}.{self.config.domain}"


PREVIEW_GONE: Final[frozenset[str]] = frozenset({"Closed", "Expired"})


def preview_needs(preview: Preview) -> str | None:
    """What GitHub must hear about a Preview: ``teardown`` (its environment is gone), ``waiting``
    (its head waits for approval), or None."""
    slot = preview.status.github or PreviewGithub()
    if preview.status.phase in PREVIEW_GONE and slot.inactive_generation != preview.metadata.generation:
        return "teardown"
    if preview.status.phase == "AwaitingApproval" and slot.waiting_sha != preview.spec.head_sha:
        return "waiting"
    return None


class GithubPreviewsController(Controller):
    """Pull-request previews on GitHub: a head waiting for approval gets a pending commit status
    that says so (context ``forge/APP-pr-N``); a closed or expired preview's environment is
    marked inactive (every GitHub Deployment of environment ``APP-pr-N``, found on GitHub, so
    nothing depends on release records that are being deleted). Its slot is
    ``Preview.status.github``; the same back-off and rate-limit rules as the github controller."""

    name: ClassVar[str] = "github-previews"
    watches: ClassVar[tuple[str, ...]] = ("Preview",)
    resync_seconds: ClassVar[float] = 600.0

    def __init__(
        self,
        store: Store,
        clock: Clock,
        config: Config,
        recorder: EventRecorder | None = None,
        client: GithubClient | None = None,
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self.client = github_client(self.name, store, clock, config, client)
        self._owns_client = client is None

    def close(self) -> None:
        if self._owns_client:
            self.client.close()

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        p = event.object
        if event.type == "DELETED" or not isinstance(p, Preview):
            return ()
        return (p.metadata.name,) if preview_needs(p) else ()

    def all_keys(self) -> Iterable[str]:
        return sorted(p.metadata.name for p in read_only(self.store, Preview) if preview_needs(p))

    def reconcile(self, key: str) -> Result | None:
        try:
            preview = self.store.get(Preview, key)
        except NotFound:
            return DONE
        need = preview_needs(preview)
        if need is None:
            return DONE
        owner, name = split_repo(preview.spec.repo)
        base, repo = f"/repos/{owner}/{name}", preview.spec.repo
        log_url = f"{self.config.dashboard_url}/ui/index.html#/apps/{key}"
        try:
            blocked = self.client.blocked_until(repo)
            if blocked is not None:
                raise RateLimited("GitHub rate limit", blocked)
            slot = (preview.status.github or PreviewGithub()).model_copy(deep=True)
            if need == "teardown":
                found = self.client.request(
                    "GET", f"{base}/deployments", repo, params={"environment": key, "per_page": 100}
                )
                why = short(f"{key}: {preview.status.message or 'the preview was deleted'}")
                for gh in found if isinstance(found, list) else []:
                    if isinstance(gh.get("id"), int):
                        body = {"state": "inactive", "log_url": log_url, "description": why}
                        self.client.request(
                            "POST", f"{base}/deployments/{gh['id']}/statuses", repo, json=body
                        )
                slot.inactive_generation = preview.metadata.generation
            else:
                body = {
                    "state": "pending",
                    "target_url": log_url,
                    "description": short(preview.status.message or "waits for approval"),
                    "context": f"forge/{key}",
                }
                self.client.request("POST", f"{base}/statuses/{preview.spec.head_sha}", repo, json=body)
                slot.waiting_sha = preview.spec.head_sha
        except RateLimited as exc:
            return Result(requeue_after=max(1.0, exc.until - self.clock.now()))
        except GithubError as exc:
            if exc.transient:
                raise
            self.recorder.record(preview, "Warning", REASON_REPORT_FAILED, exc.message)
            raise TerminalError(exc.message) from None
        new = preview.model_copy(deep=True)
        new.status.github = slot
        self.store.update_status(new)
        return DONE
