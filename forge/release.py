"""What makes a release, in one place: its config, its record, its number, its rollback target.

Every writer of Deployments — the webhook, ``/apps/NAME/deploy`` and ``/rollback``, the rollout
controller's config releases and the rollback controller — builds them here, so no writer can
capture less of the App than another (a push once dropped ``processes``, ``nodeSelector`` and the
Secret's version, and the rollout controller then made a second release to put them back).

- ``release_config(app, secret)``: the config a release made from the App now carries.
- ``new_release(...)``: the Deployment record ``APP-N`` (spec only).
- ``create_next_release(store, app, make)``: the one taker of release numbers.
- ``rollback_candidate(before, deployments)``: the one rollback-target rule;
  ``rollback_release(app, n, target)``: its record (the target's config, the App's counts).
- ``releasing(deployments, live, commit, config)``: the release that already runs (or is on its
  way to run) this commit with this config — a push of it makes nothing new.

No controller imports another and the API imports no controller; both import this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

from forge.errors import AlreadyExists, Conflict, NotFound
from forge.instancespec import app_config, same_config, with_counts
from forge.models import (
    DEPLOYMENT_TERMINAL,
    LABEL_APP,
    App,
    Deployment,
    DeploymentConfig,
    DeploymentSpec,
    ObjectMeta,
    OwnerRef,
    Secret,
    Trigger,
    deployment_number,
    next_release_number,
)
from forge.store.base import Store

CREATE_ATTEMPTS: Final[int] = 20  # concurrent writers (webhook deliveries, deploys) each take the next number
REASON_ROLLED_BACK: Final[str] = "RolledBack"


def app_secret(store: Store, app: str) -> Secret | None:
    """The App's Secret record (named like the App), or None."""
    try:
        secret = store.get(Secret, app)
    except NotFound:
        return None
    return secret if secret.spec.app == app else None


def release_config(app: App, secret: Secret | None) -> DeploymentConfig:
    """The config a release made from ``app`` now carries (``instancespec.app_config``)."""
    return app_config(app, secret)


def config_of(dep: Deployment) -> DeploymentConfig | None:
    """What a release ran with: what rollout applied, else its snapshot."""
    return dep.status.applied_config or dep.spec.config


def app_deployments(store: Store, app: str) -> list[Deployment]:
    items, _ = store.list(Deployment, {LABEL_APP: app})
    deps = [d for d in items if d.spec.app == app]
    return sorted(deps, key=lambda d: (deployment_number(d.metadata.name), d.metadata.name))


def new_release(
    app: App,
    number: int,
    *,
    commit: str,
    ref: str,
    trigger: Trigger,
    config: DeploymentConfig | None,
    repo: str | None = None,
    rollback_of: str | None = None,
    owned: bool = False,
) -> Deployment:
    """Release ``APP-number`` (spec only); ``owned``: the App owns it (a controller made it)."""
    name = app.metadata.name
    return Deployment(
        metadata=ObjectMeta(
            name=f"{name}-{number}",
            labels={LABEL_APP: name},
            owner_ref=OwnerRef(kind="App", name=name, uid=app.metadata.uid) if owned else None,
        ),
        spec=DeploymentSpec(
            app=name,
            commit=commit,
            ref=ref,
            repo=repo or app.spec.repo,
            trigger=trigger,
            rollback_of=rollback_of,
            config=config,
        ),
    )


def renumber(dep: Deployment, number: int) -> Deployment:
    """``dep`` as release ``APP-number`` (a controller's planned release, numbered when created)."""
    out = dep.model_copy(deep=True)
    out.metadata.name = f"{dep.spec.app}-{number}"
    return out


def create_next_release(
    store: Store,
    app: str,
    make: Callable[[int, list[Deployment]], tuple[Deployment, bool]],
) -> tuple[Deployment, bool]:
    """The one place release numbers are taken (API deploys and rollbacks, webhook pushes,
    config releases and automatic rollbacks).

    ``make(n, deployments)`` builds ``APP-n`` from the App's current releases — or answers an
    existing one and False (a redelivered push, a commit already live). A concurrent writer
    taking ``n`` first just moves us to the next number; (the Deployment, created?) comes back."""
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


def is_in_flight(dep: Deployment) -> bool:
    return dep.status.phase not in DEPLOYMENT_TERMINAL and dep.status.phase != "Live"


def releasing(
    deployments: Iterable[Deployment], live: str | None, commit: str, config: DeploymentConfig
) -> Deployment | None:
    """The live release, or the newest release in flight, when it runs ``commit`` with ``config``
    (the Secret's version aside: Instances read the Secret when they start). A push of the same
    commit and config again — a redelivery with a new id, a replay — changes nothing."""
    deps = sorted(deployments, key=lambda d: deployment_number(d.metadata.name))
    in_flight = [d for d in deps if is_in_flight(d)]
    newest = in_flight[-1] if in_flight else next((d for d in deps if d.metadata.name == live), None)
    if newest is None or newest.spec.commit != commit:
        return None
    have = config_of(newest)
    return newest if have is not None and same_config(have, config, secrets=False) else None


def rollback_candidate(before: Deployment, deployments: Iterable[Deployment]) -> Deployment | None:
    """The one rollback-target rule: the newest release older than ``before`` that went Live,
    was not itself rolled back or failed, and differs from ``before`` in commit or config
    (going back to the same code and config would change nothing)."""
    n = deployment_number(before.metadata.name)
    have = config_of(before)
    older = sorted(
        (d for d in deployments if deployment_number(d.metadata.name) < n),
        key=lambda d: deployment_number(d.metadata.name),
        reverse=True,
    )
    for d in older:
        st = d.status
        undone = st.condition(REASON_ROLLED_BACK)  # the rollback controller's verdict
        if (
            not st.live_time
            or st.phase == "Failed"
            or st.reason == REASON_ROLLED_BACK
            or (undone is not None and undone.status == "True")
        ):
            continue
        cfg = config_of(d)
        same = d.spec.commit == before.spec.commit and (
            cfg is None or have is None or same_config(cfg, have, secrets=False)
        )
        if not same:
            return d
    return None


def rollback_release(app: App, number: int, target: Deployment, owned: bool = False) -> Deployment:
    """Release ``APP-number`` that goes back to ``target``'s commit, build and config — with the
    App's replica counts as they are now. Counts are not release config (``forge scale`` changes
    the live release in place): a rollback taken after a scale, by a person or by the rollback
    controller, must not undo the scale (it once ran 1 replica while the App said 3)."""
    cfg = config_of(target)
    if cfg is not None:
        cfg = with_counts(cfg, app)
    return new_release(
        app,
        number,
        commit=target.spec.commit,
        ref=target.spec.ref,
        repo=target.spec.repo,
        trigger=Trigger(type="rollback"),
        rollback_of=target.metadata.name,
        config=cfg.model_copy(update={"secrets_version": None}, deep=True) if cfg is not None else None,
        owned=owned,
    )
