"""Health, readiness, tls/ask (and forge.proxy.routing), metrics and the OpenAPI document."""

from __future__ import annotations

import pytest

from forge.models import App, AppSpec, AppStatus, ObjectMeta
from forge.proxy.routing import app_hosts, is_servable_host
from tests.api.conftest import Api, app_body


def _app(name: str, live: str | None, domains: list[str] | None = None) -> App:
    return App(metadata=ObjectMeta(name=name), spec=AppSpec(repo=f"acme/{name}", domains=domains or []),
               status=AppStatus(live_deployment=live))


APPS = [_app("hello", "hello-1", ["www.hello.com"]), _app("dark", None, ["dark.example.com"])]
HOSTS = [
    ("app-domain", "hello.forge.test", True),
    ("upper-and-dot", "HELLO.forge.test.", True),
    ("custom", "www.hello.com", True),
    ("not-live", "dark.forge.test", False),
    ("not-live-custom", "dark.example.com", False),
    ("unknown", "nope.forge.test", False),
    ("bare-domain", "forge.test", False),
    ("nested", "a.hello.forge.test", False),
    ("empty", "", False),
    ("malformed", "hello..forge.test", False),
    ("underscore", "he_llo.forge.test", False),
    ("injection", "hello.forge.test/../x", False),
    ("too-long", "a" * 300 + ".forge.test", False),
]


@pytest.mark.parametrize(("host", "ok"), [h[1:] for h in HOSTS], ids=[h[0] for h in HOSTS])
def test_is_servable_host(host: str, ok: bool) -> None:
    """Only hostnames of Apps with a live release are servable."""
    assert is_servable_host(host, APPS, "forge.test") is ok


def test_app_hosts() -> None:
    """An App answers on NAME.DOMAIN first, then its custom domains."""
    assert app_hosts(APPS[0], "forge.test") == ["hello.forge.test", "www.hello.com"]


@pytest.mark.parametrize(("host", "ok"), [h[1:] for h in HOSTS], ids=[h[0] for h in HOSTS])
def test_tls_ask(api: Api, host: str, ok: bool) -> None:
    """/api/v1/tls/ask answers 200 for servable hosts and 404 otherwise, without a token."""
    for a in APPS:
        created = api.store.create(App(metadata=ObjectMeta(name=a.name), spec=a.spec))
        created.status = a.status
        api.store.update_status(created)
    r = api.req("GET", "/api/v1/tls/ask", token=None, params={"domain": host})
    assert r.status_code == (200 if ok else 404)


def test_readyz_reports_store_outage(api: Api) -> None:
    """/readyz is 200 while the store answers and 503 once it does not; /healthz stays 200."""
    assert api.req("GET", "/readyz", token=None).status_code == 200
    api.store.close()
    r = api.req("GET", "/readyz", token=None)
    assert r.status_code == 503 and "Traceback" not in r.text
    assert api.req("GET", "/healthz", token=None).status_code == 200


def test_metrics(api: Api) -> None:
    """/metrics labels requests by route template (never the raw path) and exposes store gauges."""
    api.create("apps", app_body())
    node = api.create("nodes", {"metadata": {"name": "n1"}})
    node["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    api.req("PUT", "/api/v1/nodes/n1/status", json=node)
    api.req("GET", "/api/v1/apps/hello")
    api.req("GET", "/api/v1/apps/ghost")
    text = api.req("GET", "/metrics", token=None).text
    assert 'forge_api_requests_total{method="GET",route="/api/v1/apps/{name}",status="200"} 1.0' in text
    assert 'forge_api_requests_total{method="GET",route="/api/v1/apps/{name}",status="404"} 1.0' in text
    assert "/api/v1/apps/hello" not in text and "ghost" not in text
    assert "forge_api_request_duration_seconds_bucket" in text
    assert "forge_agents_online 1.0" in text
    assert "forge_deployments_total" in text and "forge_tasks_total" in text


def test_openapi_document(api: Api) -> None:
    """The OpenAPI 3.1 document covers every collection, bearer security and the error schema."""
    doc = api.req("GET", "/api/v1/openapi.json", token=None).json
    assert doc["openapi"] == "3.1.0"
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    for plural in ("apps", "deployments", "instances", "nodes", "events", "secrets", "repocredentials", "leases"):
        assert set(doc["paths"][f"/api/v1/{plural}/{{name}}"]) >= {"get", "put", "patch", "delete"}
        assert "post" in doc["paths"][f"/api/v1/{plural}"]
    assert "repoCredential" not in doc["components"]["schemas"]["App"]
    assert "autoDeploy" in doc["components"]["schemas"]["AppSpec"]["properties"]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/api/v1/apps"]["post"]["responses"]["400"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"}
