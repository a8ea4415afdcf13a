"""Writers of Deployments on a person's request: ``/apps/NAME/deploy`` and ``/apps/NAME/rollback``.

Both only write desired state (a new Deployment ``APP-N``); the controllers do the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import falcon
from pydantic import Field, ValidationError

from forge.api import auth
from forge.api.body import read_object, send
from forge.api.context import ApiContext
from forge.api.records import render
from forge.errors import AlreadyExists, BadRequest, Conflict, Invalid, NotFound, Unavailable, pydantic_errors
from forge.gitauth import open_token, select_credential
from forge.gitsource import GitError, GitSource
from forge.models import (
    COMMIT,
    LABEL_APP,
    App,
    Deployment,
    DeploymentConfig,
    DeploymentSpec,
    Model,
    ObjectMeta,
    RepoCredential,
    Trigger,
    deployment_number,
    next_release_number,
)
from forge.store.base import Store

CREATE_ATTEMPTS: Final[int] = 20  # concurrent writers (webhook deliveries, deploys) each take the next number


class DeployRequest(Model):
    """``commit`` left out: with ``ref`` the commit that branch or tag names on the remote now
    (``git ls-remote``, bounded; nothing is fetched or built here), else the live release's
    commit (or the newest release's)."""

    commit: str | None = Field(default=None, pattern=COMMIT.pattern)
    ref: str = Field(default="", max_length=255)


class RollbackRequest(Model):
    to: str | None = Field(default=None, max_length=80)
    force: bool = False  # roll back to a release that had Failed, knowing why


def app_deployments(store: Store, app: str) -> list[Deployment]:
    items, _ = store.list(Deployment, {LABEL_APP: app})
    deps = [d for d in items if isinstance(d, Deployment) and d.spec.app == app]
    return sorted(deps, key=lambda d: deployment_number(d.name))


def rollback_target(
    app: App, deployments: list[Deployment], to: str | None, force: bool = False
) -> Deployment:
    """The release to go back to: ``to``, or the newest once-Live release older than the live one.

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
    if not live:
        raise BadRequest(
            f'app {app.name!r} has no live release to roll back from; name one with {{"to": "APP-N"}}'
        )
    live_n = deployment_number(live)
    older = [
        d for d in deployments if deployment_number(d.name) < live_n and d.status.live_time and d.name != live
    ]
    if not older:
        raise BadRequest(
            f"app {app.name!r} has no earlier release that was ever live; nothing to roll back to"
        )
    return older[-1]


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


def create_next_release(
    store: Store,
    app: str,
    make: Callable[[int, list[Deployment]], tuple[Deployment, bool]],
) -> tuple[Deployment, bool]:
    """The one place release numbers are taken (API deploys and rollbacks, webhook pushes).

    ``make(n, deployments)`` builds ``APP-n`` from the App's current releases — or answers an
    existing one and False (a redelivered webhook). A concurrent writer taking ``n`` first just
    moves us to the next number; (the Deployment, created?) comes back."""
    for _ in range(CREATE_ATTEMPTS):
        deployments = app_deployments(store, app)
        dep, new = make(next_release_number(deployments), deployments)
        if not new:
            return dep, False
        try:
            return store.create(dep), True
        except AlreadyExists:
            continue
    raise Conflict(
        f"could not pick a release number for {app} after {CREATE_ATTEMPTS} tries: "
        "too many concurrent deploys"
    )


def create_next(store: Store, app: App, spec: DeploymentSpec) -> Deployment:
    """Create ``APP-(N+1)`` with ``spec``."""
    return create_next_release(
        store,
        app.name,
        lambda n, _deps: (
            Deployment(metadata=ObjectMeta(name=f"{app.name}-{n}", labels={LABEL_APP: app.name}), spec=spec),
            True,
        ),
    )[0]


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
        app = self.ctx.store.get(App, name)
        assert isinstance(app, App)
        commit, ref = body.commit, body.ref
        if commit is None and ref:
            commit = resolve_ref(self.ctx, app, ref)
        elif commit is None:
            source = redeploy_source(app, app_deployments(self.ctx.store, name))
            commit, ref = source.spec.commit, source.spec.ref
        config = DeploymentConfig(
            env=dict(app.spec.env), replicas=app.spec.replicas, domains=list(app.spec.domains)
        )
        spec = DeploymentSpec(
            app=name, commit=commit, ref=ref, repo=app.spec.repo, trigger=Trigger(type="api"), config=config
        )
        send(resp, render(create_next(self.ctx.store, app, spec)), 201)


class RollbackResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        body: RollbackRequest = _parse(RollbackRequest, read_object(req, required=False))
        app = self.ctx.store.get(App, name)
        assert isinstance(app, App)
        target = rollback_target(app, app_deployments(self.ctx.store, name), body.to, body.force)
        spec = DeploymentSpec(
            app=name,
            commit=target.spec.commit,
            ref=target.spec.ref,
            repo=target.spec.repo or app.spec.repo,
            trigger=Trigger(type="rollback"),
            rollback_of=target.name,
            config=target.spec.config.model_copy(deep=True) if target.spec.config else None,
        )
        send(resp, render(create_next(self.ctx.store, app, spec)), 201)
