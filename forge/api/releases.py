"""Writers of Deployments on a person's request: ``/apps/NAME/deploy`` and ``/apps/NAME/rollback``.

Both only write desired state (a new Deployment ``APP-N``); the controllers do the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import falcon
from pydantic import Field, ValidationError

from forge.api import auth
from forge.api.body import read_object, send
from forge.api.context import ApiContext
from forge.api.records import render
from forge.errors import BadRequest, Conflict, Invalid, NotFound, Unavailable, pydantic_errors
from forge.gitauth import open_token, select_credential
from forge.gitsource import GitError, GitSource
from forge.models import COMMIT, App, Deployment, Model, RepoCredential, Trigger
from forge.release import (  # noqa: F401  (app_deployments, create_next_release: re-exported)
    app_deployments,
    app_secret,
    create_next_release,
    new_release,
    release_config,
    releasing,
    rollback_candidate,
    rollback_release,
)


class DeployRequest(Model):
    """``commit`` left out: with ``ref`` the commit that branch or tag names on the remote now
    (``git ls-remote``, bounded; nothing is fetched or built here), else the live release's
    commit (or the newest release's)."""

    commit: str | None = Field(default=None, pattern=COMMIT.pattern)
    ref: str = Field(default="", max_length=255)
    force: bool = False  # release (and rebuild) even when this commit and config are already live


class RollbackRequest(Model):
    to: str | None = Field(default=None, max_length=80)
    force: bool = False  # roll back to a release that had Failed, knowing why


def rollback_target(
    app: App, deployments: list[Deployment], to: str | None, force: bool = False
) -> Deployment:
    """The release to go back to: ``to``, or ``forge.release.rollback_candidate`` of the live one
    (the newest earlier release that went Live with a different commit or config).

    A release that had Failed is refused unless ``force``: the refusal says why it failed, since
    going back to it would most likely fail (or crash-loop) the same way."""
    live = app.status.live_deployment
    if to:
        target = next((d for d in deployments if d.name == to), None)
        if target is None:
            raise NotFound(f"Deployment {to!r} of app {app.name!r} not found")
        if to == live:
            raise BadRequest(
                f"{to} is already the live release of {app.name}", [{"path": "to", "message": "already live"}]
            )
        if target.status.phase == "Failed" and not force:
            why = f"{target.status.reason}: {target.status.message}".strip(": ") or "no reason recorded"
            raise Conflict(
                f"{to} had failed ({why}); roll back to it anyway with force (forge rollback --force)",
                [{"path": "to", "message": f"release failed: {target.status.reason or 'Failed'}"}],
            )
        return target
    current = next((d for d in deployments if d.name == live), None) if live else None
    if current is None:
        raise BadRequest(
            f'app {app.name!r} has no live release to roll back from; name one with {{"to": "APP-N"}}'
        )
    target = rollback_candidate(current, deployments)
    if target is None:
        raise BadRequest(
            f"app {app.name!r} has no earlier release that went live with a different commit or "
            "config; nothing to roll back to"
        )
    return target


def resolve_ref(ctx: ApiContext, app: App, ref: str) -> str:
    """The commit ``ref`` names in the App's repository now, through the App's RepoCredential."""
    creds: list[RepoCredential] = ctx.store.list(RepoCredential)[0]
    token = open_token(ctx.sealer.keyring, select_credential(creds, app.spec.repo))
    url = ctx.config.git_url_template.format(full_name=app.spec.repo)
    scratch = Path(ctx.config.data_dir) / "source-cache"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        return GitSource(scratch).resolve_ref(url, ref, token)
    except GitError as exc:
        detail = [{"path": "ref", "message": exc.message}]
        if exc.transient:
            raise Unavailable(f"cannot resolve {ref!r} in {app.spec.repo}: {exc.message}", detail) from None
        raise Invalid(f"cannot deploy {ref!r}: {exc.message} {app.spec.repo}", detail) from None


def redeploy_source(app: App, deployments: list[Deployment]) -> Deployment:
    """The release whose commit a deploy without ``commit`` re-releases: the live one, else the newest."""
    live = next((d for d in deployments if d.name == app.status.live_deployment), None)
    source = live or (deployments[-1] if deployments else None)
    if source is None:
        raise BadRequest(
            f"app {app.name!r} has no release yet; name the commit to deploy",
            [{"path": "commit", "message": "required for the first release"}],
        )
    return source


def _parse(model: type[Model], body: dict[str, Any]) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise Invalid.from_errors(pydantic_errors(exc)) from None


class DeployResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        body: DeployRequest = _parse(DeployRequest, read_object(req))
        store = self.ctx.store
        app = store.get(App, name)
        commit, ref = body.commit, body.ref
        if commit is None and ref:
            commit = resolve_ref(self.ctx, app, ref)
        elif commit is None:
            source = redeploy_source(app, app_deployments(store, name))
            commit, ref = source.spec.commit, source.spec.ref
        config = release_config(app, app_secret(store, name))
        trigger = Trigger(type="api", force=body.force or None)

        def make(n: int, deployments: list[Deployment]) -> tuple[Deployment, bool]:
            same = None if body.force else releasing(deployments, app.status.live_deployment, commit, config)
            if same is not None:
                return same, False
            return new_release(app, n, commit=commit, ref=ref, trigger=trigger, config=config), True

        dep, created = create_next_release(store, name, make)
        send(resp, render(dep), 201 if created else 200)


class RollbackResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        body: RollbackRequest = _parse(RollbackRequest, read_object(req, required=False))
        store = self.ctx.store
        app = store.get(App, name)
        target = rollback_target(app, app_deployments(store, name), body.to, body.force)
        dep, _ = create_next_release(store, name, lambda n, _deps: (rollback_release(app, n, target), True))
        send(resp, render(dep), 201)
