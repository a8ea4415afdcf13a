"""``create_app(config, store=None, clock=None)``: the falcon WSGI app of the Forge API.

Routes (docs/CONTRACTS.md "HTTP API"): the record collections under ``/api/v1/{plural}``
with ``/status`` subresources; deploy/rollback/logs on apps; node tokens, instance secrets, git
credentials and log shipping for agents; key rotation; the GitHub webhook; tls/ask; health, readiness,
metrics and the OpenAPI document.

Errors: one handler renders every ``ForgeError`` as ``{"error","message","details"}``;
falcon's own HTTP errors (unknown route 404, wrong method 405, 415) get the same shape; any
other exception is a 500 with a request id, logged with its traceback, never sent.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from typing import Any

import falcon

from forge.api import agents, drains, github, logs, notify, records, releases, runs, series, system
from forge.api.auth import Authenticator, AuthMiddleware
from forge.api.body import dumps
from forge.api.context import ApiContext
from forge.api.domains import AppDomainsResource
from forge.api.metrics import Metrics, MetricsMiddleware, MetricsResource
from forge.api.openapi import EXPOSED, build_openapi
from forge.api.previews import PreviewApproveResource
from forge.api.sealing import Sealer
from forge.api.ui import SignInResource, UiResource
from forge.api.webhook import GithubWebhookResource
from forge.clock import Clock, SystemClock
from forge.config import Config
from forge.errors import ForgeError
from forge.github.auth import app_tokens
from forge.models import PLURALS
from forge.store.base import Store
from forge.store.factory import open_store

log = logging.getLogger(__name__)

# How long one request waits for a store that cannot take it (SQLite locked, PostgreSQL
# refusing connections) before it is answered 503: well inside GitHub's 10 s for a webhook.
STORE_WAIT_SECONDS = 4.0

_HTTP_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
}


class RequestIdMiddleware:
    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.request_id = uuid.uuid4().hex[:16]
        resp.set_header("X-Request-Id", req.context.request_id)


def _render(resp: falcon.Response, status: int, body: dict[str, Any]) -> None:
    resp.status = falcon.code_to_http_status(status)
    resp.content_type = falcon.MEDIA_JSON
    resp.data = dumps(body)
    resp.stream = None


def _forge_error(req: falcon.Request, resp: falcon.Response, ex: ForgeError, params: dict) -> None:
    if ex.status >= 500:
        rid = getattr(req.context, "request_id", "")
        log.error("request %s %s %s failed: %s: %s", rid, req.method, req.path, ex.reason, ex.message)
    _render(resp, ex.status, ex.to_dict())


def _http_error(req: falcon.Request, resp: falcon.Response, ex: falcon.HTTPError, params: dict) -> None:
    code = ex.status_code
    reason = _HTTP_REASONS.get(code, str(ex.title or "Error").replace(" ", ""))
    message = ex.description or (f"no route for {req.method} {req.path}" if code == 404 else str(ex.title))
    if code == 405:
        message = f"method {req.method} is not allowed on {req.path}"
    resp.set_headers(ex.headers or {})
    _render(resp, code, {"error": reason, "message": message, "details": []})


def _unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: dict) -> None:
    rid = getattr(req.context, "request_id", "") or uuid.uuid4().hex[:16]
    log.exception("request %s %s %s: unhandled %s", rid, req.method, req.path, ex.__class__.__name__)
    _render(
        resp,
        500,
        {
            "error": "InternalError",
            "message": f"internal error (request id {rid})",
            "details": [],
            "requestId": rid,
        },
    )


def _wake_on(closing: threading.Event, wake: Callable[[], object]) -> None:
    closing.wait()
    wake()


def create_app(
    config: Config,
    store: Store | None = None,
    clock: Clock | None = None,
    *,
    stream_cap_seconds: float | None = None,
    closing: threading.Event | None = None,
    max_streams: int | None = None,
) -> falcon.App:
    """``stream_cap_seconds`` bounds every watch/log stream below what clients ask (tests, bench);
    ``closing``, once set, ends every open stream within half a second (the server's stop)."""
    clock = clock or SystemClock()
    store = store if store is not None else open_store(config.effective_store_url, STORE_WAIT_SECONDS)
    ctx = ApiContext(
        config=config,
        store=store,
        clock=clock,
        sealer=Sealer(config),
        stream_cap_seconds=stream_cap_seconds,
        closing=closing or threading.Event(),
        max_streams=max_streams,
        github_app=app_tokens(config, clock, store),
    )
    wake = getattr(store, "wake_waiters", None)
    if closing is None:
        ctx.closing_check_seconds = None  # nobody can ask the streams to end early
    elif callable(wake):
        # Streams block until a change, their heartbeat or this: one thread, no polling.
        threading.Thread(target=_wake_on, args=(closing, wake), name="forge-api-closing", daemon=True).start()
        ctx.closing_check_seconds = None
    metrics = Metrics(store, clock)
    app: falcon.App[falcon.Request, falcon.Response] = falcon.App(
        middleware=[
            RequestIdMiddleware(),
            MetricsMiddleware(metrics),
            AuthMiddleware(Authenticator(config, store)),
        ],
    )
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.auto_parse_qs_csv = False
    app.resp_options.secure_cookies_by_default = True
    app.add_error_handler(Exception, _unexpected)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(ForgeError, _forge_error)

    for plural in EXPOSED:
        cls = PLURALS[plural]
        app.add_route(f"/api/v1/{plural}", records.CollectionResource(ctx, cls))
        app.add_route(f"/api/v1/{plural}/{{name}}", records.ItemResource(ctx, cls))
        app.add_route(f"/api/v1/{plural}/{{name}}/status", records.StatusResource(ctx, cls))
    app.add_route("/api/v1/apps/{name}/deploy", releases.DeployResource(ctx))
    app.add_route("/api/v1/apps/{name}/rollback", releases.RollbackResource(ctx))
    app.add_route("/api/v1/apps/{name}/logs", logs.AppLogsResource(ctx))
    app.add_route("/api/v1/apps/{name}/metrics", series.AppMetricsResource(ctx))
    app.add_route("/api/v1/metrics/requests", series.RequestSamplesResource(ctx))
    app.add_route("/api/v1/nodes/{name}/usage", series.NodeUsageResource(ctx))
    app.add_route("/api/v1/apps/{name}/runs", runs.AppRunsResource(ctx))
    app.add_route("/api/v1/apps/{name}/domains", AppDomainsResource(ctx))
    app.add_route("/api/v1/apps/{name}/drains", drains.AppDrainsResource(ctx))
    app.add_route("/api/v1/apps/{name}/drains/{id}", drains.AppDrainResource(ctx))
    app.add_route("/api/v1/nodes/{name}/drains", drains.NodeDrainsResource(ctx))
    app.add_route("/api/v1/nodes/{name}/drains/{drain}/status", drains.NodeDrainStatusResource(ctx))
    app.add_route("/api/v1/instances/{name}/stdin", runs.InstanceStdinResource(ctx))
    app.add_route("/api/v1/nodes/{name}/token", agents.NodeTokenResource(ctx))
    app.add_route("/api/v1/instances/{name}/secrets", agents.InstanceSecretsResource(ctx))
    app.add_route("/api/v1/instances/{name}/events", agents.AgentEventResource(ctx, "Instance"))
    app.add_route("/api/v1/nodes/{name}/events", agents.AgentEventResource(ctx, "Node"))
    app.add_route("/api/v1/nodes/{name}/storage", agents.NodeStorageResource(ctx))
    app.add_route("/api/v1/nodes/{name}/apps", agents.NodeAppsResource(ctx))
    app.add_route("/api/v1/instances/{name}/gitcredential", agents.InstanceGitCredentialResource(ctx))
    app.add_route("/api/v1/instances/{name}/logs", agents.InstanceLogsResource(ctx))
    app.add_route("/api/v1/secrets/rotate-key", agents.RotateKeyResource(ctx))
    app.add_route("/api/v1/tls/ask", system.TlsAskResource(ctx))
    ui = UiResource()
    app.add_route("/ui", ui, suffix="index")
    app.add_route("/api/v1/ui/signin", SignInResource(ctx))
    app.add_route("/ui/{filename}", ui)
    app.add_route("/healthz", system.HealthResource())
    app.add_route("/readyz", system.ReadyResource(ctx))
    app.add_route("/metrics", MetricsResource(metrics))
    app.add_route("/api/v1/webhook/github", GithubWebhookResource(store, config, clock, metrics.registry))
    app.add_route("/api/v1/github/connect", github.GithubConnectResource(ctx))
    app.add_route("/api/v1/github/app", github.GithubAppResource(ctx))
    app.add_route("/api/v1/previews/{name}/approve", PreviewApproveResource(ctx))
    app.add_route("/api/v1/notifiers", notify.NotifiersResource(ctx))
    app.add_route("/api/v1/notifiers/lookup", notify.NotifierLookupResource(ctx))
    app.add_route("/api/v1/notifiers/test", notify.NotifierTestResource(ctx))
    app.add_route("/api/v1/notifiers/{name}", notify.NotifierItemResource(ctx))
    app.add_route("/api/v1/openapi.json", system.OpenApiResource(build_openapi(webhook=True)))
    return app
