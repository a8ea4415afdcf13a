"""Unauthenticated probes: ``/healthz``, ``/readyz``, ``/api/v1/tls/ask``, ``/api/v1/openapi.json``."""

from __future__ import annotations

import logging
from typing import Any

import falcon

from forge.api.body import send
from forge.api.context import ApiContext
from forge.models import App
from forge.proxy.routing import is_servable_host

log = logging.getLogger(__name__)


class HealthResource:
    auth = False

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send(resp, {"status": "ok"})


class ReadyResource:
    auth = False

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            self.ctx.store.ping()
        except Exception as exc:  # noqa: BLE001 - readiness must turn *any* store failure into 503
            log.warning("readyz: store unreachable: %s", exc.__class__.__name__)
            send(resp, {"status": "unavailable", "message": "the store is not reachable"}, 503)
            return
        send(resp, {"status": "ready"})


class TlsAskResource:
    """Caddy's on-demand TLS ``ask``: 200 only for hostnames of Apps with a live release."""

    auth = False

    def __init__(self, ctx: ApiContext) -> None:
        self.ctx = ctx

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        host = req.get_param("domain") or ""
        apps, _ = self.ctx.store.list(App)
        ok = is_servable_host(host, [a for a in apps if isinstance(a, App)], self.ctx.config.domain)
        send(resp, {"domain": host[:253], "allowed": ok}, 200 if ok else 404)


class OpenApiResource:
    auth = False

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        send(resp, self.doc)
