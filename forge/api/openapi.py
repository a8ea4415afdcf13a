"""The OpenAPI 3.1 document, generated from the pydantic models (camelCase, by alias)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from forge.api.agents import AgentEventRequest, LogBatch
from forge.api.notify import NotifierRequest, NotifierTestRequest
from forge.api.releases import DeployRequest, RollbackRequest
from forge.api.ui import SignInRequest
from forge.appmetrics import MAX_SAMPLES_PER_BATCH
from forge.models import PLURALS, Resource
from forge.series import MAX_USAGE_PER_BATCH

EXPOSED = (
    "apps",
    "deployments",
    "instances",
    "nodes",
    "events",
    "secrets",
    "repocredentials",
    "leases",
    "previews",
    "notifications",
)
REF = "#/components/schemas/{model}"
JSON = "application/json"
NDJSON = "application/x-ndjson"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": REF.format(model=name)}


def _add_schema(schemas: dict[str, Any], model: type[BaseModel]) -> str:
    schema = model.model_json_schema(by_alias=True, ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas[model.__name__] = schema
    return model.__name__


def _errors(*codes: int) -> dict[str, Any]:
    text = {
        400: "Invalid input (details name the field path)",
        401: "Missing or invalid token",
        403: "Not allowed for this token",
        404: "Not found",
        409: "Conflict (stale resourceVersion or exists)",
        410: "Watch revision compacted",
        413: "Body over 1 MiB",
        415: "Unsupported content type",
        503: "A dependency is unavailable",
    }
    return {str(c): {"description": text[c], "content": {JSON: {"schema": _ref("Error")}}} for c in codes}


def _ok(
    schema: dict[str, Any], code: int = 200, description: str = "OK", media: str = JSON
) -> dict[str, Any]:
    return {str(code): {"description": description, "content": {media: {"schema": schema}}}}


def _body(schema: dict[str, Any], media: tuple[str, ...] = (JSON,), required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {m: {"schema": schema} for m in media}}


NAME = {"name": "name", "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
AUTHED = (400, 401, 403, 404)
WRITE = (400, 401, 403, 404, 409, 413, 415)


def _op(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"operationId": op_id, "summary": summary, "responses": responses, **extra}


def _record_paths(plural: str, cls: type[Resource]) -> dict[str, Any]:
    k = cls.KIND
    item, lst = _ref(k), _ref(f"{k}List")
    patch = _body({"type": "object"}, ("application/merge-patch+json", JSON))
    list_params = [
        {"name": "labelSelector", "in": "query", "schema": {"type": "string"}},
        {"name": "watch", "in": "query", "schema": {"type": "boolean"}},
        {"name": "resourceVersion", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {
            "name": "timeoutSeconds",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 1800},
        },
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        {"name": "continue", "in": "query", "schema": {"type": "string"}},
    ]
    list_ok = {
        "200": {
            "description": "The list, or with watch=true an NDJSON stream of WatchEvents",
            "content": {JSON: {"schema": lst}, NDJSON: {"schema": _ref("WatchEvent")}},
        }
    }
    return {
        f"/api/v1/{plural}": {
            "get": _op(
                f"list{k}",
                f"List or watch {plural}",
                {**list_ok, **_errors(400, 401, 403, 410)},
                parameters=list_params,
            ),
            "post": _op(
                f"create{k}",
                f"Create a {k}",
                {**_ok(item, 201, "Created"), **_errors(*WRITE)},
                requestBody=_body(item),
            ),
        },
        f"/api/v1/{plural}/{{name}}": {
            "parameters": [NAME],
            "get": _op(f"get{k}", f"Read a {k}", {**_ok(item), **_errors(*AUTHED)}),
            "put": _op(
                f"replace{k}",
                f"Replace a {k} (metadata.resourceVersion required)",
                {**_ok(item), **_errors(*WRITE)},
                requestBody=_body(item),
            ),
            "patch": _op(
                f"patch{k}",
                f"Merge-patch a {k} (RFC 7386)",
                {**_ok(item), **_errors(*WRITE)},
                requestBody=patch,
            ),
            "delete": _op(
                f"delete{k}",
                f"Delete a {k}",
                {**_ok(item), **_errors(*AUTHED, 409)},
                parameters=[
                    {"name": "resourceVersion", "in": "query", "schema": {"type": "integer", "minimum": 0}}
                ],
            ),
        },
        f"/api/v1/{plural}/{{name}}/status": {
            "parameters": [NAME],
            "get": _op(f"get{k}Status", f"Read a {k} with its status", {**_ok(item), **_errors(*AUTHED)}),
            "put": _op(
                f"replace{k}Status",
                f"Replace the status of a {k}",
                {**_ok(item), **_errors(*WRITE)},
                requestBody=_body(item),
            ),
            "patch": _op(
                f"patch{k}Status",
                f"Merge-patch the status of a {k}",
                {**_ok(item), **_errors(*WRITE)},
                requestBody=patch,
            ),
        },
    }


def _extra_paths() -> dict[str, Any]:
    obj = {"type": "object"}
    public: dict[str, Any] = {"security": []}
    return {
        "/api/v1/notifiers": {
            "get": _op(
                "listNotifiers",
                "Webhooks told of failures (URLs masked: never returned)",
                {**_ok(_ref("NotifierList")), **_errors(401, 403)},
                parameters=[{"name": "app", "in": "query", "schema": {"type": "string"}}],
            ),
            "post": _op(
                "addNotifier",
                "Add a webhook for an App (or the install): its URL is sealed (200: it was there)",
                {**_ok(_ref("NotifierView"), 201), **_ok(_ref("NotifierView")), **_errors(*WRITE)},
                requestBody=_body(_ref("NotifierRequest")),
            ),
        },
        "/api/v1/notifiers/lookup": {
            "post": _op(
                "lookupNotifier",
                "The notifier of a scope with this URL",
                {**_ok(_ref("NotifierView")), **_errors(*AUTHED)},
                requestBody=_body(_ref("NotifierRequest")),
            ),
        },
        "/api/v1/notifiers/test": {
            "post": _op(
                "testNotifiers",
                "Queue a Test Notification for a scope's notifiers",
                {**_ok(_ref("Notification"), 201), **_errors(*WRITE)},
                requestBody=_body(_ref("NotifierTestRequest")),
            ),
        },
        "/api/v1/notifiers/{name}": {
            "parameters": [NAME],
            "get": _op(
                "getNotifier",
                "Read a notifier (URL masked)",
                {**_ok(_ref("NotifierView")), **_errors(*AUTHED)},
            ),
            "delete": _op(
                "deleteNotifier", "Remove a notifier", {**_ok(_ref("NotifierView")), **_errors(*AUTHED)}
            ),
        },
        "/api/v1/apps/{name}/deploy": {
            "parameters": [NAME],
            "post": _op(
                "deployApp",
                "Write a new Deployment of a commit (200: the release already running that commit and config)",
                {**_ok(_ref("Deployment"), 201), **_ok(_ref("Deployment")), **_errors(*WRITE)},
                requestBody=_body(_ref("DeployRequest")),
            ),
        },
        "/api/v1/apps/{name}/rollback": {
            "parameters": [NAME],
            "post": _op(
                "rollbackApp",
                "Write a Deployment of an earlier release",
                {**_ok(_ref("Deployment"), 201), **_errors(*WRITE)},
                requestBody=_body(_ref("RollbackRequest"), required=False),
            ),
        },
        "/api/v1/apps/{name}/domains": {
            "parameters": [NAME],
            "get": _op(
                "appDomains",
                "The App's hostnames with their DNS targets and certificate states",
                {**_ok(obj), **_errors(*AUTHED)},
            ),
        },
        "/api/v1/apps/{name}/drains": {
            "parameters": [NAME],
            "get": _op(
                "appDrains",
                "The App's log drains (URLs masked) with each node's delivery report",
                {**_ok(obj), **_errors(*AUTHED)},
            ),
            "post": _op(
                "addAppDrain",
                "Add a log drain: syslog+tcp://, syslog+tls:// or https:// (the URL is sealed)",
                {**_ok(obj, 201), **_errors(*WRITE)},
                requestBody=_body(
                    {
                        "type": "object",
                        "properties": {"url": {"type": "string"}},
                        "required": ["url"],
                        "additionalProperties": False,
                    }
                ),
            ),
        },
        "/api/v1/apps/{name}/drains/{id}": {
            "parameters": [
                NAME,
                {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "delete": _op("removeAppDrain", "Remove a log drain by its ID", {**_ok(obj), **_errors(*AUTHED)}),
        },
        "/api/v1/apps/{name}/logs": {
            "parameters": [NAME],
            "get": _op(
                "appLogs",
                "Build and app log lines (NDJSON)",
                {**_ok(_ref("LogLine"), media=NDJSON), **_errors(*AUTHED)},
                parameters=[
                    {"name": "follow", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "probes", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "deployment", "in": "query", "schema": {"type": "string"}},
                    {"name": "source", "in": "query", "schema": {"type": "string", "enum": ["build", "app"]}},
                    {"name": "since", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "tail",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 100000},
                    },
                    {
                        "name": "timeoutSeconds",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 3600},
                    },
                ],
            ),
        },
        "/api/v1/apps/{name}/metrics": {
            "parameters": [NAME],
            "get": _op(
                "appMetrics",
                "Requests (total, by class, p50/p95/p99) and series of requests, errors, p95, CPU, "
                "memory and restarts, with release markers, over a window (10 s points up to 6h, "
                "5-minute rollups beyond)",
                {**_ok(_ref("AppMetrics")), **_errors(*AUTHED)},
                parameters=[
                    {
                        "name": "since",
                        "in": "query",
                        "schema": {"type": "string", "pattern": "^[0-9]+[smhd]$", "default": "1h"},
                        "description": "The window: 10m, 2h, 7d…; from 1m to 30d",
                    }
                ],
            ),
        },
        "/api/v1/metrics/requests": {
            "post": _op(
                "sendRequestSamples",
                "A proxy sends closed 10 s request buckets (a batch id seen before is acknowledged, not counted)",
                {**_ok(_ref("SamplesAccepted")), **_errors(400, 401, 403, 413, 415)},
                requestBody=_body(_ref("RequestSampleBatch")),
            )
        },
        "/api/v1/nodes/{name}/usage": {
            "parameters": [NAME],
            "post": _op(
                "sendUsageSamples",
                "A node agent sends its Instances' CPU, memory and restarts (only its own Instances)",
                {**_ok(_ref("SamplesAccepted")), **_errors(400, 401, 403, 413, 415)},
                requestBody=_body(_ref("UsageSampleBatch")),
            ),
        },
        "/api/v1/nodes/{name}/token": {
            "parameters": [NAME],
            "post": _op(
                "mintNodeToken",
                "Mint a node token (shown once)",
                {**_ok(_ref("TokenResponse"), 201), **_errors(400, 401, 403, 409)},
            ),
        },
        "/api/v1/instances/{name}/events": {
            "parameters": [NAME],
            "post": _op(
                "recordInstanceEvent",
                "An agent records what it saw on its Instance (merged, counted)",
                {**_ok({"type": "object"}, 201), **_errors(*AUTHED)},
                requestBody=_body(_ref("AgentEventRequest")),
            ),
        },
        "/api/v1/nodes/{name}/events": {
            "parameters": [NAME],
            "post": _op(
                "recordNodeEvent",
                "An agent records what it saw on its Node (merged, counted)",
                {**_ok({"type": "object"}, 201), **_errors(*AUTHED)},
                requestBody=_body(_ref("AgentEventRequest")),
            ),
        },
        "/api/v1/ui/signin": {
            "post": _op(
                "dashboardSignIn",
                "Trade a one-time sign-in link's code for the admin token",
                {**_ok(_ref("TokenResponse")), **_errors(400, 401)},
                requestBody=_body(_ref("SignInRequest")),
                security=[],
            )
        },
        "/api/v1/instances/{name}/secrets": {
            "parameters": [NAME],
            "get": _op(
                "instanceSecrets",
                "Decrypted secret env of an Instance",
                {**_ok(_ref("SecretEnv")), **_errors(*AUTHED)},
            ),
        },
        "/api/v1/instances/{name}/gitcredential": {
            "parameters": [NAME],
            "get": _op(
                "instanceGitCredential",
                "Git credential for an Instance's repository (owner/repo scope over owner)",
                {**_ok(_ref("GitCredential")), **_errors(*AUTHED)},
            ),
        },
        "/api/v1/instances/{name}/logs": {
            "parameters": [NAME],
            "post": _op(
                "shipLogs",
                "Append log lines of an Instance",
                {**_ok(_ref("LogsAccepted")), **_errors(*WRITE)},
                requestBody=_body(_ref("LogBatch")),
            ),
        },
        "/api/v1/secrets/rotate-key": {
            "post": _op(
                "rotateSecretKey",
                "Re-encrypt every secret under a new key",
                {**_ok(obj), **_errors(401, 403, 409)},
            )
        },
        "/api/v1/tls/ask": {
            "get": _op(
                "tlsAsk",
                "May Caddy issue a certificate for this host?",
                {**_ok(obj), "404": {"description": "No"}},
                parameters=[
                    {"name": "domain", "in": "query", "required": True, "schema": {"type": "string"}}
                ],
                **public,
            )
        },
        "/healthz": {"get": _op("healthz", "Liveness", _ok(obj), **public)},
        "/readyz": {
            "get": _op(
                "readyz",
                "Readiness (store reachable)",
                {**_ok(obj), "503": {"description": "Store unreachable"}},
                **public,
            )
        },
        "/metrics": {
            "get": _op("metrics", "Prometheus metrics", _ok({"type": "string"}, media="text/plain"), **public)
        },
        "/api/v1/openapi.json": {"get": _op("openapi", "This document", _ok(obj), **public)},
    }


def build_openapi(webhook: bool = False) -> dict[str, Any]:
    schemas: dict[str, Any] = {
        "Error": {
            "type": "object",
            "required": ["error", "message", "details"],
            "properties": {
                "error": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
                "requestId": {"type": "string"},
            },
        },
        "WatchEvent": {
            "type": "object",
            "required": ["type", "object"],
            "properties": {
                "type": {"type": "string", "enum": ["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"]},
                "object": {"type": "object"},
            },
        },
        "TokenResponse": {
            "type": "object",
            "required": ["token"],
            "properties": {"token": {"type": "string"}},
        },
        "SecretEnv": {
            "type": "object",
            "required": ["env"],
            "properties": {"env": {"type": "object", "additionalProperties": {"type": "string"}}},
        },
        "GitCredential": {
            "type": "object",
            "required": ["username", "token"],
            "properties": {"username": {"type": "string"}, "token": {"type": "string"}},
        },
        "LogsAccepted": {"type": "object", "properties": {"accepted": {"type": "integer"}}},
        "SamplesAccepted": {
            "type": "object",
            "required": ["accepted", "dropped", "duplicate"],
            "properties": {
                "accepted": {"type": "integer"},
                "dropped": {"type": "integer"},
                "duplicate": {"type": "boolean"},
            },
        },
        "RequestSampleBatch": {
            "type": "object",
            "required": ["proxy", "id", "samples"],
            "additionalProperties": False,
            "properties": {
                "proxy": {"type": "string"},
                "id": {"type": "string"},
                "samples": {
                    "type": "array",
                    "maxItems": MAX_SAMPLES_PER_BATCH,
                    "items": {
                        "type": "object",
                        "required": ["app", "at", "buckets"],
                        "properties": {
                            "app": {"type": "string"},
                            "release": {"type": "string"},
                            "at": {"type": "integer", "description": "Unix seconds, a multiple of 10"},
                            "byClass": {"type": "object", "additionalProperties": {"type": "integer"}},
                            "buckets": {"type": "array", "items": {"type": "integer"}},
                            "sum": {"type": "number"},
                        },
                    },
                },
            },
        },
        "UsageSampleBatch": {
            "type": "object",
            "required": ["id", "samples"],
            "additionalProperties": False,
            "properties": {
                "id": {"type": "string"},
                "samples": {
                    "type": "array",
                    "maxItems": MAX_USAGE_PER_BATCH,
                    "items": {
                        "type": "object",
                        "required": ["instance", "at", "memory"],
                        "additionalProperties": False,
                        "properties": {
                            "instance": {"type": "string"},
                            "at": {"type": "integer"},
                            "cpu": {
                                "type": ["number", "null"],
                                "description": "cores, averaged over the interval",
                            },
                            "memory": {"type": "integer", "description": "bytes"},
                            "restarts": {"type": "integer", "description": "since the previous sample"},
                        },
                    },
                },
            },
        },
        "AppMetrics": {
            "type": "object",
            "required": ["requests", "series", "restarts", "releases", "resources", "step"],
            "properties": {
                "app": {"type": "string"},
                "since": {"type": "string"},
                "step": {"type": "integer", "description": "seconds between points: 10 or 300"},
                "from": {"type": "integer"},
                "to": {"type": "integer"},
                "requests": {
                    "type": "object",
                    "required": ["total", "byClass", "p50", "p95", "p99"],
                    "properties": {
                        "total": {"type": "integer"},
                        "byClass": {"type": "object", "additionalProperties": {"type": "integer"}},
                        **{
                            p: {"type": ["number", "null"], "description": "seconds"}
                            for p in ("p50", "p95", "p99")
                        },
                    },
                },
                "series": {
                    "type": "object",
                    "description": "[timestamp, value] pairs on one grid: requests and errors (5xx) per "
                    "point, p95 seconds, cpu cores, memory bytes, restarts",
                    "additionalProperties": {"type": "array", "items": {"type": "array"}},
                },
                "restarts": {"type": "integer"},
                "releases": {
                    "type": "array",
                    "items": {"type": "array"},
                    "description": "[timestamp, release]",
                },
                "resources": {"type": "object"},
            },
        },
        "LogLine": {
            "type": "object",
            "properties": {
                k: {"type": "string"} for k in ("time", "instance", "deployment", "source", "line")
            }
            | {"id": {"type": "integer"}},
        },
    }
    for model in (
        DeployRequest,
        RollbackRequest,
        LogBatch,
        AgentEventRequest,
        SignInRequest,
        NotifierRequest,
        NotifierTestRequest,
    ):
        _add_schema(schemas, model)
    schemas["NotifierView"] = {
        "type": "object",
        "required": ["name", "app", "urlHint", "format", "events"],
        "properties": {
            "name": {"type": "string"},
            "app": {"type": "string"},
            "urlHint": {"type": "string"},
            "format": {"type": "string", "enum": ["slack", "generic"]},
            "events": {"type": "array", "items": {"type": "string"}},
            "createdAt": {"type": ["string", "null"]},
        },
    }
    schemas["NotifierList"] = {
        "type": "object",
        "properties": {"items": {"type": "array", "items": _ref("NotifierView")}},
    }
    paths: dict[str, Any] = {}
    for plural in EXPOSED:
        cls = PLURALS[plural]
        _add_schema(schemas, cls)
        schemas[f"{cls.KIND}List"] = {
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {
                    "type": "object",
                    "properties": {
                        "resourceVersion": {"type": "integer"},
                        "continue": {"type": "string"},
                        "remainingItemCount": {"type": "integer"},
                    },
                },
                "items": {"type": "array", "items": _ref(cls.KIND)},
            },
        }
        paths.update(_record_paths(plural, cls))
    paths.update(_extra_paths())
    if webhook:
        paths["/api/v1/webhook/github"] = {
            "post": _op(
                "githubWebhook",
                "GitHub push webhook (authenticated by its HMAC signature)",
                {**_ok({"type": "object"}), "202": {"description": "Accepted"}, **_errors(400, 401, 413)},
                requestBody=_body({"type": "object"}, (JSON, "application/x-www-form-urlencoded")),
                security=[],
            )
        }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Forge API",
            "version": "v1",
            "description": "Declarative records of a self-hosted PaaS (group forge/v1).",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
