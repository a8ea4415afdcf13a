"""Preview writers: ``pull_request`` and ``issue_comment`` deliveries (dispatched here by the
webhook resource after it verified the signature), and ``POST /api/v1/previews/{name}/approve``.

They write Preview specs only (``forge.previews`` decides what); the previews controller builds,
serves and deletes. Writes use the resourceVersion read and retry a Conflict a few times.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Final

import falcon

from forge.api.body import read_object, send
from forge.api.context import ApiContext
from forge.clock import Clock
from forge.errors import AlreadyExists, Conflict, Invalid, NotFound
from forge.models import APP_NAME_MAX, App, Preview
from forge.previews import (
    ACTIONS,
    approval_applies,
    apps_for,
    is_approval,
    new_preview,
    parse_comment,
    parse_pull_request,
    preview_name,
    preview_spec,
)
from forge.store.base import Store

log = logging.getLogger(__name__)

WRITE_TRIES: Final[int] = 5


def _write(store: Store, name: str, change: Callable[[Preview | None], Preview | None]) -> Preview | None:
    """Create or update Preview ``name`` with ``change(current)``; None from it writes nothing."""
    for _ in range(WRITE_TRIES):
        try:
            current: Preview | None = store.get(Preview, name)
        except NotFound:
            current = None
        new = change(current)
        if new is None:
            return current
        try:
            if current is None:
                return store.create(new)
            return store.update(new)
        except (Conflict, AlreadyExists):
            continue
    raise Conflict(f"Preview {name} kept changing; redeliver the event")


class PreviewDeliveries:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store, self.clock = store, clock

    def handle(
        self, event: str, payload: dict[str, Any], base: dict[str, Any]
    ) -> tuple[int, dict[str, Any], str]:
        if event == "pull_request":
            return self._pull_request(payload, base)
        return self._comment(payload, base)

    def _pull_request(self, payload: dict[str, Any], base: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        pr = parse_pull_request(payload)
        if pr.action not in ACTIONS:
            return (
                202,
                {**base, "previews": [], "reason": f"pull_request {pr.action} changes no preview"},
                "ignored",
            )
        apps = apps_for([a for a in self.store.list(App)[0] if isinstance(a, App)], pr.repo, pr.base_ref)
        if not apps:
            return (
                202,
                {**base, "previews": [], "reason": f"no App has previews for {pr.repo}:{pr.base_ref}"},
                "ignored",
            )
        written: list[str] = []
        now = self.clock.now_iso()
        for app in apps:
            name = preview_name(app.metadata.name, pr.number)
            if len(name) > APP_NAME_MAX:
                continue

            def change(current: Preview | None, app: App = app) -> Preview | None:
                if current is None and pr.action == "closed":
                    return None  # never previewed: nothing to close
                spec = preview_spec(current, app, pr, now)
                if current is None:
                    return new_preview(app, spec)
                if current.spec == spec:
                    return None
                updated = current.model_copy(deep=True)
                updated.spec = spec
                return updated

            if _write(self.store, name, change) is not None:
                written.append(name)
        log.info("pull_request %s #%d on %s: previews %s", pr.action, pr.number, pr.repo, written)
        return 202, {**base, "previews": written}, "created" if written else "ignored"

    def _comment(self, payload: dict[str, Any], base: dict[str, Any]) -> tuple[int, dict[str, Any], str]:
        comment = parse_comment(payload)
        if comment is None or not comment.body.strip().lower().startswith("/forge"):
            return (
                202,
                {**base, "approved": [], "reason": "not a /forge command on a pull request"},
                "ignored",
            )
        if not is_approval(comment):
            why = f"{comment.author} ({comment.association or 'no association'}) may not approve previews"
            return 202, {**base, "approved": [], "reason": why}, "ignored"
        previews = [
            p
            for p in self.store.list(Preview)[0]
            if isinstance(p, Preview)
            and p.spec.repo.lower() == comment.repo.lower()
            and p.spec.number == comment.number
        ]
        approved: list[str] = []
        for p in previews:

            def change(current: Preview | None) -> Preview | None:
                if current is None or current.spec.state != "open" or not approval_applies(current, comment):
                    return None
                if current.spec.approved_sha == current.spec.head_sha:
                    return None
                updated = current.model_copy(deep=True)
                updated.spec.approved_sha, updated.spec.approved_by = current.spec.head_sha, comment.author
                return updated

            after = _write(self.store, p.metadata.name, change)
            if after is not None and after.spec.approved_sha == after.spec.head_sha:
                approved.append(p.metadata.name)
        return 202, {**base, "approved": approved}, "created" if approved else "ignored"


class PreviewApproveResource:
    """``POST /api/v1/previews/{name}/approve`` ``{"sha"?}``: approve the current head (409 when
    ``sha`` is given and the head has moved on since)."""

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        body = read_object(req) if req.content_length else {}
        sha = body.get("sha")
        if sha is not None and not isinstance(sha, str) or set(body) - {"sha"}:
            raise Invalid(
                'body must be {"sha"?: commit}', [{"path": "sha", "message": "a commit or nothing"}]
            )

        def change(current: Preview | None) -> Preview | None:
            if current is None:
                raise NotFound(f"preview {name} not found")
            if sha and not current.spec.head_sha.startswith(sha):
                raise Conflict(
                    f"preview {name} is at {current.spec.head_sha[:12]} now, not {sha[:12]}: "
                    "look at the new head before approving it"
                )
            if current.spec.approved_sha == current.spec.head_sha:
                return None
            updated = current.model_copy(deep=True)
            updated.spec.approved_sha, updated.spec.approved_by = current.spec.head_sha, "admin"
            return updated

        out = _write(self.ctx.store, name, change)
        assert out is not None
        send(resp, out.dump())
