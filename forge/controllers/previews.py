"""Previews controller: each open, approved Preview ``APP-pr-N`` is a running preview App.

Key = the Preview's name (= the preview App's name). What it needs is ``forge.previews.plan_preview``:

- **deploy**: ensure the preview App ``APP-pr-N`` (labelled ``forge.dev/preview-of=APP``, owned
  by the Preview; the App's repo, no branches so pushes never deploy it, the App's env with the
  previews overrides and ``FORGE_PREVIEW=1``, ``FORGE_PR_NUMBER=N``), its Secret (a re-sealed copy
  of the App's, only with ``secrets: inherit`` for a trusted head of the App's own repository;
  never for a fork), and a release of the head commit fetched as ``refs/pull/N/head``. The
  rollout, router and friends take it from there: it serves at ``APP-pr-N.DOMAIN``.
- **draft / await-approval**: build nothing new (an approved earlier head keeps serving).
- **delete** (closed, the App lost its previews, or ``ttl`` without a push): delete the preview
  App and its Secret (the rollout controller stops its processes and removes its releases and
  storage). A closed Preview record itself goes once GitHub was told its environment is
  inactive (``status.github``, the github-previews controller's slot), at once when Forge does
  not report to GitHub, and after a day whatever GitHub's state.

It writes ``Preview.status`` (phase, deployment, url, message; not ``github``), the preview App's
spec and its Deployments' spec — as the webhook does for a push.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import ClassVar, Final, TypeVar

from forge.clock import Clock, parse_iso
from forge.config import Config
from forge.controllers.base import DONE, Controller, Result
from forge.controllers.cache import read_only
from forge.errors import AlreadyExists, Conflict, NotFound
from forge.events import EventRecorder
from forge.github.auth import stored_app
from forge.models import (
    LABEL_APP,
    LABEL_PR,
    LABEL_PREVIEW_OF,
    App,
    AppSpec,
    Deployment,
    ObjectMeta,
    OwnerRef,
    Preview,
    Resource,
    Secret,
    SecretSpec,
)
from forge.previews import CLOSED_RECORD_GRACE, PreviewPlan, gets_secrets, plan_preview, preview_env, pull_ref
from forge.release import app_secret, create_next_release, release_config
from forge.store.base import Store, WatchEvent
from forge.webhook import Push, build_deployment

R = TypeVar("R", bound=Resource)

log = logging.getLogger(__name__)

REASON_PREVIEW_DEPLOYING: Final[str] = "PreviewDeploying"
REASON_PREVIEW_DELETED: Final[str] = "PreviewDeleted"


class PreviewsController(Controller):
    name: ClassVar[str] = "previews"
    watches: ClassVar[tuple[str, ...]] = ("Preview", "App", "Deployment", "Secret")
    resync_seconds: ClassVar[float] = 300.0

    def __init__(
        self, store: Store, clock: Clock, config: Config, recorder: EventRecorder | None = None
    ) -> None:
        super().__init__(store, clock, config, recorder)
        self.reports_to_github = config.github_enabled or stored_app(store) is not None

    def keys_for(self, event: WatchEvent) -> Iterable[str]:
        obj = event.object
        if isinstance(obj, Preview):
            return (obj.metadata.name,)
        if isinstance(obj, Secret) and LABEL_PREVIEW_OF not in obj.metadata.labels:
            return [p.metadata.name for p in read_only(self.store, Preview, {LABEL_PREVIEW_OF: obj.spec.app})]
        if isinstance(obj, App):
            if LABEL_PREVIEW_OF in obj.metadata.labels:
                return (obj.metadata.name,)
            return [
                p.metadata.name for p in read_only(self.store, Preview, {LABEL_PREVIEW_OF: obj.metadata.name})
            ]
        if isinstance(obj, Deployment) and "-pr-" in obj.spec.app:
            return (obj.spec.app,)
        return ()

    def all_keys(self) -> Iterable[str]:
        return sorted(p.metadata.name for p in read_only(self.store, Preview))

    def reconcile(self, key: str) -> Result | None:
        try:
            preview = self.store.get(Preview, key)
        except NotFound:
            return DONE
        parent = self._get(App, preview.spec.app)
        now = self.clock.now()
        plan = plan_preview(preview, parent, now)
        if plan.action == "delete":
            return self._teardown(preview, plan)
        assert parent is not None
        deployment, url, phase = preview.status.deployment, preview.status.url, plan.phase
        self._ensure_secret(preview, parent)  # an untrusted head never finds the App's secrets there
        if plan.action == "deploy":
            app = self._ensure_app(preview, parent)
            dep = self._ensure_release(preview, app)
            deployment, url = dep.metadata.name, app.status.url
            phase = {"Live": "Live", "Failed": "Failed", "Cancelled": "Deploying"}.get(
                dep.status.phase, "Deploying"
            )
        self._status(preview, phase, plan.reason, deployment, url)
        return Result(requeue_after=max(1.0, (plan.expires_at or now) - now)) if plan.expires_at else DONE

    # ------------------------------------------------------------------ deploy

    def _ensure_app(self, preview: Preview, parent: App) -> App:
        name = preview.metadata.name
        spec = AppSpec(
            repo=parent.spec.repo,
            branches=[],
            env=preview_env(parent, preview),
            replicas=min(parent.spec.replicas, 1) or 1,
            processes=dict(parent.spec.processes),
            auto_deploy=False,
            rollback_on_failure=parent.spec.rollback_on_failure,
            node_selector=dict(parent.spec.node_selector),
        )
        labels = {LABEL_PREVIEW_OF: parent.metadata.name, LABEL_PR: str(preview.spec.number)}
        current = self._get(App, name)
        if current is None:
            app = App(
                metadata=ObjectMeta(
                    name=name,
                    labels=labels,
                    owner_ref=OwnerRef(kind="Preview", name=name, uid=preview.metadata.uid),
                ),
                spec=spec,
            )
            try:
                return self.store.create(app)
            except AlreadyExists:
                raise Conflict(f"App {name} appeared meanwhile") from None
        if LABEL_PREVIEW_OF not in current.metadata.labels:
            raise Conflict(
                f"App {name} exists and is not a preview: the preview of PR #{preview.spec.number} waits"
            )
        if current.spec == spec and current.metadata.labels == {**current.metadata.labels, **labels}:
            return current
        updated = current.model_copy(deep=True)
        updated.spec = spec
        updated.metadata.labels = {**current.metadata.labels, **labels}
        return self.store.update(updated)

    def _ensure_secret(self, preview: Preview, parent: App) -> None:
        name = preview.metadata.name
        mine = self._get(Secret, name)
        source = self._get(Secret, parent.metadata.name) if gets_secrets(parent, preview) else None
        if source is None or not source.spec.data:
            if mine is not None and mine.spec.app == name:
                self._delete(Secret, name)
            return
        from forge.secrets import Keyring, aad_for

        keyring = Keyring.load(self.config)
        plain = {
            k: keyring.decrypt(v, aad_for("Secret", source.metadata.name, k))
            for k, v in source.spec.data.items()
        }
        if mine is not None and mine.status.data_digest == source.status.data_digest:
            return
        sealed = {k: keyring.encrypt(v, aad_for("Secret", name, k)) for k, v in plain.items()}
        record = Secret(
            metadata=ObjectMeta(name=name, labels={LABEL_PREVIEW_OF: parent.metadata.name}),
            spec=SecretSpec(app=name, data=sealed),
        )
        if mine is None:
            mine = self.store.create(record)
        else:
            mine = mine.model_copy(deep=True)
            mine.spec = record.spec
            mine = self.store.update(mine)
        # the copy's digest is the App's (same values), so releases follow values as the API's do
        mine.status.keys, mine.status.data_digest = sorted(plain), source.status.data_digest
        mine.status.updated_time = self.clock.now_iso()
        self.store.update_status(mine)

    def _ensure_release(self, preview: Preview, app: App) -> Deployment:
        name = app.metadata.name
        deps = [d for d in self.store.list(Deployment, {LABEL_APP: name})[0] if d.spec.app == name]
        deps.sort(
            key=lambda d: (
                int(d.metadata.name.rpartition("-")[2])
                if d.metadata.name.rpartition("-")[2].isdigit()
                else -1
            )
        )
        newest = deps[-1] if deps else None
        if newest is not None and newest.spec.commit == preview.spec.head_sha:
            return newest
        push = Push(
            repo=app.spec.repo, ref=pull_ref(preview.spec.number), after=preview.spec.head_sha, deleted=False
        )
        config = release_config(app, app_secret(self.store, name))
        made, _ = create_next_release(
            self.store, name, lambda n, _deps: (build_deployment(app, n, push, None, config), True)
        )
        self.recorder.record(
            preview,
            "Normal",
            REASON_PREVIEW_DEPLOYING,
            f"{made.metadata.name} deploys {preview.spec.head_sha[:12]}",
        )
        return made

    # ------------------------------------------------------------------ delete

    def _teardown(self, preview: Preview, plan: PreviewPlan) -> Result:
        name = preview.metadata.name
        app = self._get(App, name)
        if app is not None and LABEL_PREVIEW_OF in app.metadata.labels:
            self._delete(App, name)
            self.recorder.record(preview, "Normal", REASON_PREVIEW_DELETED, plan.reason)
        secret = self._get(Secret, name)
        if secret is not None and secret.spec.app == name:
            self._delete(Secret, name)
        preview = self._status(preview, plan.phase, plan.reason, None, None)
        if plan.phase != "Closed":
            return DONE  # expired: the record stays, a new push brings the preview back
        told = (
            preview.status.github is not None
            and preview.status.github.inactive_generation == preview.metadata.generation
        )
        closed_for = (
            self.clock.now() - parse_iso(preview.metadata.updated_at) if preview.metadata.updated_at else 0.0
        )
        if not self.reports_to_github or told or closed_for > CLOSED_RECORD_GRACE:
            self._delete(Preview, name)
            return DONE
        return Result(requeue_after=CLOSED_RECORD_GRACE)  # the github-previews slot wakes us sooner

    # ------------------------------------------------------------------ helpers

    def _status(
        self, preview: Preview, phase: str, message: str, deployment: str | None, url: str | None
    ) -> Preview:
        st = preview.status
        if (st.phase, st.message, st.deployment, st.url, st.observed_generation) == (
            phase,
            message,
            deployment,
            url,
            preview.metadata.generation,
        ):
            return preview
        new = preview.model_copy(deep=True)
        new.status.phase, new.status.message = phase, message
        new.status.deployment, new.status.url = deployment, url
        new.status.observed_generation = preview.metadata.generation
        return self.store.update_status(new)

    def _get(self, kind: type[R], name: str) -> R | None:
        try:
            return self.store.get(kind, name)
        except NotFound:
            return None

    def _delete(self, kind: type, name: str) -> None:
        try:
            self.store.delete(kind, name)
        except NotFound:
            pass
