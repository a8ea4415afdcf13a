"""``/api/v1/notifiers``: webhooks that hear of failures (admin only; issue 25).

- ``GET /api/v1/notifiers[?app=APP]`` → ``{"items": [view]}``; a view is ``{"name", "app",
  "urlHint", "format", "events", "createdAt"}`` — the URL itself is never returned.
- ``POST /api/v1/notifiers`` ``{"app"?, "url", "format"?, "events"?}`` → 201 the view (200 when
  that URL is already a notifier of that scope: its format and events are replaced). ``app``
  empty or absent: the whole install. The URL is sealed (AES-256-GCM, AAD
  ``Notifier/NAME/url``) before it reaches the store.
- ``POST /api/v1/notifiers/lookup`` ``{"app"?, "url"}`` → the view of that URL's notifier (404),
  so a client can name a notifier by its URL without putting the URL in a request line.
- ``DELETE /api/v1/notifiers/{name}`` → 200 the view.
- ``POST /api/v1/notifiers/test`` ``{"app"?}`` → 201 a Notification (event ``Test``) to every
  notifier of that scope (an App's own and the install's; no app: the install's); follow it under
  ``/api/v1/notifications/NAME`` until ``status.phase`` is ``Delivered`` or ``Failed``.
"""

from __future__ import annotations

import secrets as pysecrets
from typing import Any

import falcon
from pydantic import Field, ValidationError

from forge.api import auth
from forge.api.body import read_object, send
from forge.api.context import ApiContext
from forge.errors import AlreadyExists, Invalid, NotFound, pydantic_errors
from forge.models import (
    LABEL_APP,
    App,
    Model,
    Notification,
    NotificationSpec,
    Notifier,
    NotifierSpec,
    NotifyEvent,
    NotifyFormat,
    ObjectMeta,
    OwnerRef,
)
from forge.notify import check_url, default_format, mask_url, notifier_name, url_digest
from forge.secrets import DecryptionFailed, Keyring, aad_for

NAME_LABEL = b"forge-notifier-name\x00"


class NotifierRequest(Model):
    app: str = ""
    url: str = Field(min_length=1, max_length=4096)
    format: NotifyFormat | None = None
    events: list[NotifyEvent] = Field(default_factory=list)


class NotifierTestRequest(Model):
    app: str = ""


def view(n: Notifier) -> dict[str, Any]:
    return {
        "name": n.metadata.name,
        "app": n.spec.app,
        "urlHint": n.spec.url_hint,
        "format": n.spec.format,
        "events": list(n.spec.events),
        "createdAt": n.metadata.created_at,
    }


def _body(req: falcon.Request, cls: type[Model]) -> Any:
    try:
        return cls.model_validate(read_object(req))
    except ValidationError as exc:
        raise Invalid.from_errors(pydantic_errors(exc), "Notifier") from None


def build_notifier(
    keyring: Keyring,
    app: str,
    url: str,
    fmt: NotifyFormat | None = None,
    events: list[NotifyEvent] | None = None,
    owner: OwnerRef | None = None,
) -> Notifier:
    """The Notifier record for ``url`` (checked, sealed, masked), named by its keyed digest;
    ``owner``: the App it belongs to (it goes when that App goes)."""
    try:
        url = check_url(url)
    except ValueError as exc:
        raise Invalid(f"url {exc}", [{"path": "url", "message": str(exc)}]) from None
    name = notifier_name(app, url_digest(keyring.derive(NAME_LABEL), url))
    spec = NotifierSpec(
        app=app,
        url=keyring.encrypt(url, aad_for("Notifier", name, "url")),
        url_hint=mask_url(url),
        format=fmt or default_format(url),
        events=list(events or []),
    )
    labels = {LABEL_APP: app} if app else {}
    return Notifier(metadata=ObjectMeta(name=name, labels=labels, owner_ref=owner), spec=spec)


class _Base:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def _app_exists(self, app: str) -> OwnerRef | None:
        if not app:
            return None
        try:
            found = self.ctx.store.get(App, app)
        except NotFound:
            raise NotFound(f"app {app!r} not found") from None
        return OwnerRef(kind="App", name=app, uid=found.metadata.uid)

    def _name(self, app: str, url: str) -> str:
        try:
            url = check_url(url)
        except ValueError as exc:
            raise Invalid(f"url {exc}", [{"path": "url", "message": str(exc)}]) from None
        key = self.ctx.sealer.keyring.derive(NAME_LABEL)
        return notifier_name(app, url_digest(key, url))

    def _find(self, app: str, url: str) -> Notifier | None:
        """The notifier of scope ``app`` with this URL: by its name, else (the name's key was
        rotated since) by opening each of that scope's URLs."""
        try:
            return self.ctx.store.get(Notifier, self._name(app, url))
        except NotFound:
            pass
        kr = self.ctx.sealer.keyring
        for n in self.ctx.store.list(Notifier)[0]:
            if n.spec.app != app:
                continue
            try:
                if kr.decrypt(n.spec.url, aad_for("Notifier", n.metadata.name, "url")) == url.strip():
                    return n
            except DecryptionFailed:
                continue
        return None


class NotifiersResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        auth.require_admin(req)
        app = req.get_param("app")
        items: list[Notifier] = self.ctx.store.list(Notifier)[0]
        if app is not None:
            items = [n for n in items if n.spec.app == app]
        send(resp, {"items": [view(n) for n in sorted(items, key=lambda n: n.metadata.name)]})

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        auth.require_admin(req)
        body: NotifierRequest = _body(req, NotifierRequest)
        owner = self._app_exists(body.app)
        url = body.url.strip()
        made = build_notifier(self.ctx.sealer.keyring, body.app, url, body.format, body.events, owner)
        fmt = made.spec.format
        found = self._find(body.app, url)
        if found is None:
            try:
                send(resp, view(self.ctx.store.create(made)), 201)
                return
            except AlreadyExists:
                found = self.ctx.store.get(Notifier, made.metadata.name)
        cur: Notifier = found
        if (cur.spec.format, cur.spec.events) != (fmt, body.events):
            new = cur.model_copy(deep=True)
            new.spec.format, new.spec.events = fmt, list(body.events)
            cur = self.ctx.store.update(new)
        send(resp, view(cur), 200)


class NotifierLookupResource(_Base):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        auth.require_admin(req)
        body: NotifierRequest = _body(req, NotifierRequest)
        found = self._find(body.app, body.url)
        if found is None:
            scope = f"app {body.app}" if body.app else "the install"
            raise NotFound(f"that URL is not a notifier of {scope}")
        send(resp, view(found))


class NotifierItemResource(_Base):
    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        send(resp, view(self.ctx.store.get(Notifier, name)))

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        cur: Notifier = self.ctx.store.get(Notifier, name)
        self.ctx.store.delete(Notifier, name)
        send(resp, view(cur))


class NotifierTestResource(_Base):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        auth.require_admin(req)
        body: NotifierTestRequest = _body(req, NotifierTestRequest)
        self._app_exists(body.app)
        notifiers: list[Notifier] = self.ctx.store.list(Notifier)[0]
        # every notifier of the scope, whatever events it hears: the test is of the URL
        targets = sorted(n.metadata.name for n in notifiers if n.spec.app in ("", body.app))
        scope = f"app {body.app}" if body.app else "the install"
        if not targets:
            raise NotFound(f"{scope} has no notifier (forge notify add)")
        now = self.ctx.clock.now_iso()
        name = f"test.{body.app or 'install'}.{pysecrets.token_hex(4)}"
        spec = NotificationSpec(
            event="Test",
            app=body.app,
            reason="Test",
            message=f"A test message from Forge to every notifier of {scope}.",
            time=now,
            targets=targets,
        )
        labels = {LABEL_APP: body.app} if body.app else {}
        made = self.ctx.store.create(Notification(metadata=ObjectMeta(name=name, labels=labels), spec=spec))
        send(resp, made.dump(), 201)
