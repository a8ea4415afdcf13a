"""What an Instance of a release runs with: its config, spec and the one-shot variant.

Shared by the controllers (rollout, cron) and the API (``forge run``): the API may not import
controllers, and both must build an Instance spec the same way.
"""

from __future__ import annotations

from typing import Any

from forge.models import (
    LABEL_APP,
    LABEL_DEPLOYMENT,
    LABEL_PROCESS,
    WEB,
    App,
    Deployment,
    DeploymentConfig,
    Instance,
    InstanceSpec,
    Manifest,
    ObjectMeta,
    OneShot,
    OwnerRef,
    ProcessSpec,
    Resources,
    Secret,
)

DEFAULT_MEMORY = 256 * 1024 * 1024
DEFAULT_CPU = 0.5


def secret_version(secret: Secret | None) -> str | None:
    """What identifies the Secret's values: the API's keyed digest of the plaintext
    (``status.dataDigest``), which a key rotation leaves alone although it rewrites every
    ciphertext; for a record written before digests existed, uid + spec generation."""
    if secret is None:
        return None
    if secret.status.data_digest:
        return secret.status.data_digest
    return f"{secret.metadata.uid[:8]}.{secret.metadata.generation}"


def app_config(app: App, secret: Secret | None) -> DeploymentConfig:
    """The config a release made from the App right now would carry."""
    return DeploymentConfig(
        env=dict(app.spec.env),
        replicas=app.spec.replicas,
        processes=dict(app.spec.processes) or None,
        domains=list(app.spec.domains),
        secrets_version=secret_version(secret),
        node_selector=dict(app.spec.node_selector) or None,
    )


def same_config(
    a: DeploymentConfig, b: DeploymentConfig, *, secrets: bool = True, counts: bool = True
) -> bool:
    """Whether two configs run a release the same way; ``secrets=False`` ignores the Secret's
    version, ``counts=False`` the replica counts (a scale changes those in place)."""

    def key(c: DeploymentConfig) -> tuple[Any, ...]:
        return (
            c.env,
            sorted(c.domains),
            c.secrets_version if secrets else None,
            c.node_selector or {},
            (c.replicas, c.processes or {}) if counts else None,
        )

    return key(a) == key(b)


def with_counts(cfg: DeploymentConfig, app: App) -> DeploymentConfig:
    """``cfg`` with the App's replica counts: a scale is applied to the live release in place."""
    return cfg.model_copy(
        update={"replicas": app.spec.replicas, "processes": dict(app.spec.processes) or None}
    )


def effective_config(app: App | None, dep: Deployment, secret: Secret | None) -> DeploymentConfig:
    """The config a release runs with: what rollout applied, else its snapshot, else the App's."""
    if dep.status.applied_config is not None:
        return dep.status.applied_config
    if dep.spec.config is not None:
        # Instances read the Secret as it is when they start, whatever the snapshot says.
        return dep.spec.config.model_copy(update={"secrets_version": secret_version(secret)}, deep=True)
    if app is not None:
        return app_config(app, secret)
    return DeploymentConfig(replicas=1, secrets_version=secret_version(secret))


def build_inputs(manifest: Manifest | None) -> tuple[Any, ...]:
    """What a release's build depends on besides its commit: runtime, build section, tree size."""
    if manifest is None:
        return (None, None, None)
    return (manifest.runtime, manifest.build.dump(), manifest.resources.disk)


def build_name(dep: Deployment) -> str:
    """The built tree a release's Instances run: the first release of the same commit and build
    inputs (``status.build``, set by rollout), else its own."""
    return dep.status.build or dep.metadata.name


def manifest_processes(manifest: Manifest | None) -> dict[str, ProcessSpec]:
    return dict(manifest.processes) if manifest is not None else {}


def instance_spec(
    app: App,
    dep: Deployment,
    cfg: DeploymentConfig,
    secret: Secret | None,
    index: int,
    process: str = WEB,
    oneshot: OneShot | None = None,
) -> InstanceSpec:
    manifest = dep.status.manifest
    proc = manifest_processes(manifest).get(process) if process != WEB else None
    # A process type's resources: the manifest merged the top level's in already.
    res = proc.resources if proc is not None else manifest.resources if manifest is not None else Resources()
    env = dict(manifest.env) if manifest is not None else {}
    if proc is not None:
        env.update(proc.env)
    env.update(cfg.env)  # the App's config wins over the repo's defaults
    storage = manifest.storage.size if manifest is not None and manifest.storage is not None else 0
    return InstanceSpec(
        app=app.metadata.name,
        deployment=dep.metadata.name,
        index=index,
        desired="Running",
        repo=dep.spec.repo or app.spec.repo,
        commit=dep.spec.commit,
        ref=dep.spec.ref or "",
        manifest=manifest.model_copy(deep=True) if manifest is not None else None,
        env=env,
        resources=Resources(
            memory=res.memory or DEFAULT_MEMORY,
            cpu=res.cpu or DEFAULT_CPU,
            pids=res.pids or Resources().pids,
            disk=res.disk or Resources().disk,
        ),
        secret=secret.metadata.name if secret is not None else None,
        process=process,
        oneshot=oneshot,
        storage=storage,
        node_selector=dict(cfg.node_selector or app.spec.node_selector),
        build=build_name(dep),
    )


def oneshot_instance(
    app: App,
    dep: Deployment,
    cfg: DeploymentConfig,
    secret: Secret | None,
    name: str,
    oneshot: OneShot,
    labels: dict[str, str] | None = None,
) -> Instance:
    """A one-shot Instance of ``dep``'s code and config: the release command, a cron run, ``forge run``."""
    return Instance(
        metadata=ObjectMeta(
            name=name,
            labels={
                LABEL_APP: app.metadata.name,
                LABEL_DEPLOYMENT: dep.metadata.name,
                LABEL_PROCESS: oneshot.type,
                **(labels or {}),
            },
            owner_ref=OwnerRef(kind="Deployment", name=dep.metadata.name, uid=dep.metadata.uid),
        ),
        spec=instance_spec(app, dep, cfg, secret, 0, oneshot.type, oneshot),
    )
