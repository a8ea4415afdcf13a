"""Log drains (``forge drains``): routes for people and for node agents.

- ``GET /api/v1/apps/{app}/drains`` (admin): the App's drains, URLs masked, with each node's
  delivery report (delivered, dropped, pending, last error).
- ``POST /api/v1/apps/{app}/drains`` (admin) ``{"url": …}``: add one (``LogDrain/APP-ID``); the
  URL is checked (errors name ``url``) and sealed before it reaches the store.
- ``DELETE /api/v1/apps/{app}/drains/{id}`` (admin): remove one (``id``: ``forge.drains.drain_id``).
- ``GET /api/v1/nodes/{node}/drains`` (that node, or admin): NDJSON, one ``{"type": "DRAINS",
  "drains": [{name, app, url}]}`` line at once and another whenever the set changes (a drain
  added or removed, an Instance of another App bound to the node — seen within a heartbeat),
  bookmarks in between, until
  ``timeoutSeconds``. Only the drains of Apps with Instances on that node, and the only place a
  drain's URL leaves the server in plaintext.
- ``PUT /api/v1/nodes/{node}/drains/{name}/status`` (that node): its delivery report, written to
  ``status.nodes.NODE`` of the drain — each node writes only its own slot.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import falcon
from pydantic import ValidationError

from forge.api import auth
from forge.api.body import dumps, q_int, read_object, send
from forge.api.context import ApiContext
from forge.api.sealing import aad
from forge.api.watch import _watch
from forge.drains import MAX_DRAINS_PER_APP, drain_name, mask_url, parse_url
from forge.errors import AlreadyExists, Conflict, ForgeError, Invalid, NotFound, pydantic_errors
from forge.models import LABEL_APP, LABEL_NODE, App, DrainDelivery, Instance, LogDrain, ObjectMeta, OwnerRef

log = logging.getLogger(__name__)

STATUS_RETRIES = 5
WATCH_DEFAULT_SECONDS = 60
WATCH_MAX_SECONDS = 300


def public(drain: LogDrain) -> dict[str, Any]:
    """What people see of a drain: never ``spec.url``."""
    nodes = {n: d.dump() for n, d in sorted(drain.status.nodes.items())}
    total = {
        key: sum(int(d.get(key) or 0) for d in nodes.values())
        for key in ("delivered", "dropped", "droppedBytes", "pendingBytes")
    }
    errors = [(d.get("lastErrorTime") or "", d["lastError"]) for d in nodes.values() if d.get("lastError")]
    return {
        "name": drain.name,
        "id": drain.name[len(drain.spec.app) + 1 :],
        "app": drain.spec.app,
        "url": drain.spec.masked_url,
        "createdAt": drain.metadata.created_at,
        **total,
        "lastError": max(errors)[1] if errors else "",
        "nodes": nodes,
    }


def app_drains(ctx: ApiContext, app: str) -> list[LogDrain]:
    items, _ = ctx.store.list(LogDrain, {LABEL_APP: app})
    return sorted((d for d in items if isinstance(d, LogDrain) and d.spec.app == app), key=lambda d: d.name)


class AppDrainsResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        self.ctx.store.get(App, name)
        send(resp, {"items": [public(d) for d in app_drains(self.ctx, name)]})

    def on_post(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        auth.require_admin(req)
        body = read_object(req)
        unknown = sorted(set(body) - {"url"})
        if unknown:
            raise Invalid(
                f"unknown field {unknown[0]!r}", [{"path": k, "message": "unknown field"} for k in unknown]
            )
        url = body.get("url")
        if not isinstance(url, str):
            raise Invalid("url is required", [{"path": "url", "message": "a string is required"}])
        try:
            parse_url(url)
        except ValueError as exc:
            raise Invalid(f"invalid drain url: {exc}", [{"path": "url", "message": str(exc)}]) from None
        app = self.ctx.store.get(App, name)  # 404 for an unknown App
        mine = app_drains(self.ctx, name)
        key = drain_name(name, url)
        if any(d.name == key for d in mine):
            raise AlreadyExists(
                f"{name} already drains to {mask_url(url)}",
                [{"path": "url", "message": "this drain exists already"}],
            )
        if len(mine) >= MAX_DRAINS_PER_APP:
            raise Invalid(
                f"{name} has {len(mine)} drains, the most an app may have",
                [{"path": "url", "message": f"at most {MAX_DRAINS_PER_APP} drains per app"}],
            )
        sealed = self.ctx.sealer.keyring.encrypt(url, aad("LogDrain", key, "url"))
        drain = LogDrain(
            # The App's uid: a drain never outlives its App into a new one of the same name (gc).
            metadata=ObjectMeta(
                name=key,
                labels={LABEL_APP: name},
                owner_ref=OwnerRef(kind="App", name=name, uid=app.metadata.uid),
            ),
            spec={"app": name, "url": sealed, "masked_url": mask_url(url)},
        )
        created = self.ctx.store.create(drain)
        log.info("log drain %s added to %s: %s", created.name, name, created.spec.masked_url)
        send(resp, public(created), 201)


class AppDrainResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_delete(self, req: falcon.Request, resp: falcon.Response, name: str, id: str) -> None:
        auth.require_admin(req)
        key = f"{name}-{id}"
        try:
            drain = self.ctx.store.get(LogDrain, key)
        except NotFound:
            raise NotFound(f"{name} has no drain {id}") from None
        if not isinstance(drain, LogDrain) or drain.spec.app != name:
            raise NotFound(f"{name} has no drain {id}")
        self.ctx.store.delete(LogDrain, key)
        send(resp, public(drain))


def node_apps(ctx: ApiContext, node: str) -> set[str]:
    items, _ = ctx.store.list(Instance, {LABEL_NODE: node})
    return {i.spec.app for i in items if isinstance(i, Instance)}


def node_drains(ctx: ApiContext, node: str) -> list[dict[str, str]]:
    """The drains of Apps with Instances on ``node``, URLs opened (for that node's agent)."""
    apps = node_apps(ctx, node)
    out = []
    kr = ctx.sealer.keyring if apps else None
    for app in sorted(apps):
        for d in app_drains(ctx, app):
            assert kr is not None
            url = kr.decrypt(d.spec.url, aad("LogDrain", d.name, "url"))
            out.append({"name": d.name, "app": app, "url": url, "createdAt": d.metadata.created_at or ""})
    return out


def _check_node(req: falcon.Request, node: str, what: str) -> None:
    p = auth.principal(req)
    if not p.admin and p.node != node:
        raise auth.forbid(p, f"{what} of node {node}")


class NodeDrainsResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response, name: str) -> None:
        _check_node(req, name, "read the log drains")
        timeout = q_int(req, "timeoutSeconds", WATCH_DEFAULT_SECONDS, 1, WATCH_MAX_SECONDS) or 1
        first = node_drains(self.ctx, name)  # errors (a key that will not open) before the stream starts
        resp.status = 200
        resp.content_type = "application/x-ndjson"
        resp.set_header("Cache-Control", "no-store")
        resp.stream = self.ctx.open_stream(self._stream(name, first, self.ctx.stream_seconds(float(timeout))))

    def _stream(self, node: str, first: list[dict[str, str]], timeout: float) -> Iterator[bytes]:
        """Blocks on LogDrain writes only (rare); between waits, a filtered look at this node's
        Instance changes (an Instance of another App may bring its drains), so a node's stream is
        never woken by the rest of the cluster's writes."""
        ctx, clock = self.ctx, self.ctx.clock
        drains_since = insts_since = ctx.store.revision()
        deadline = clock.monotonic() + timeout
        current = _digest(first)
        yield dumps({"type": "DRAINS", "drains": first}) + b"\n"
        last_out = clock.monotonic()
        selector = {LABEL_NODE: node}
        while True:
            now = clock.monotonic()
            remaining = deadline - now
            if remaining <= 0 or ctx.closing.is_set():
                return
            wait = ctx.wait_slice(max(0.05, min(remaining, ctx.heartbeat_seconds - (now - last_out))))
            try:
                events, drains_since = _watch(ctx, "LogDrain", {}, drains_since, wait)
                moved, insts_since = _watch(ctx, "Instance", selector, insts_since, 0)
            except ForgeError as exc:
                log.info("drain watch of node %s ended: %s", node, exc.message)
                return
            if events or moved:
                drains = node_drains(ctx, node)
                digest = _digest(drains)
                if digest != current:
                    current = digest
                    yield dumps({"type": "DRAINS", "drains": drains}) + b"\n"
                    last_out = clock.monotonic()
                    continue
            if clock.monotonic() - last_out >= ctx.heartbeat_seconds:
                yield b'{"type":"BOOKMARK"}\n'
                last_out = clock.monotonic()


def _digest(drains: list[dict[str, str]]) -> str:
    return hashlib.sha256(json.dumps(drains, sort_keys=True).encode()).hexdigest()


class NodeDrainStatusResource:
    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_put(self, req: falcon.Request, resp: falcon.Response, name: str, drain: str) -> None:
        _check_node(req, name, "report log drain delivery")
        body = read_object(req)
        try:
            report = DrainDelivery.model_validate(body)
        except ValidationError as exc:
            raise Invalid("invalid drain report", pydantic_errors(exc)) from None
        for _ in range(STATUS_RETRIES):
            obj = self.ctx.store.get(LogDrain, drain)
            if not isinstance(obj, LogDrain):
                raise NotFound(f"no log drain {drain}")
            if obj.status.nodes.get(name) == report:
                send(resp, {"name": drain})
                return
            obj.status.nodes[name] = report
            try:
                self.ctx.store.update_status(obj)
            except Conflict:
                continue
            send(resp, {"name": drain})
            return
        raise Conflict(f"log drain {drain} keeps changing; report again")
