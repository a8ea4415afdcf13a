"""Authentication and node-token scoping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import COMMIT1, TOKEN, Api, app_body, make_api

OPEN = ["/healthz", "/readyz", "/metrics", "/api/v1/openapi.json"]


@pytest.mark.parametrize("server_token", ["", "   "], ids=["unset", "blank"])
@pytest.mark.parametrize("sent", [None, "", " ", "anything"], ids=["no-header", "empty", "space", "guess"])
def test_no_admin_token_configured_answers_401(tmp_path: Path, server_token: str, sent: str | None,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """With FORGE_ADMIN_TOKEN empty nothing authenticates (not even an empty Bearer); the log says why."""
    api = make_api(tmp_path, token=server_token.strip())
    headers = {} if sent is None else {"Authorization": f"Bearer {sent}"}
    r = api.req("GET", "/api/v1/apps", token=None, headers=headers)
    assert r.status_code == 401 and r.json["error"] == "Unauthorized"
    assert any("FORGE_ADMIN_TOKEN" in rec.getMessage() for rec in caplog.records)
    assert api.req("GET", "/healthz", token=None).status_code == 200


@pytest.mark.parametrize("header", [
    None, "Bearer", "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
    "Bearer forge-node.n1.fake",
], ids=["none", "no-token", "wrong", "basic", "longer", "prefix", "fake-node"])
def test_bad_credentials_are_401(api: Api, header: str | None) -> None:
    """Missing, malformed or wrong tokens answer 401."""
    r = api.req("GET", "/api/v1/apps", token=None, headers={"Authorization": header} if header else {})
    assert r.status_code == 401


@pytest.mark.parametrize("path", OPEN)
def test_open_routes_need_no_token(api: Api, path: str) -> None:
    """Health, readiness, metrics and the OpenAPI document are unauthenticated."""
    assert api.req("GET", path, token=None).status_code == 200


def _instance(name: str, node: str | None) -> dict[str, Any]:
    labels = {"forge.dev/app": "hello"} | ({"forge.dev/node": node} if node else {})
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"app": "hello", "deployment": "hello-1", "repo": "acme/hello", "commit": COMMIT1,
                     "node": node, "secret": "hello"}}


@pytest.fixture
def nodes(api: Api) -> dict[str, str]:
    """Two nodes with tokens, one Instance on each, one unbound, and the App's Secret."""
    tokens = {}
    for n in ("n1", "n2.example"):
        r = api.req("POST", f"/api/v1/nodes/{n}/token")
        assert r.status_code == 201 and r.json["token"].startswith(f"forge-node.{n}.")
        tokens[n] = r.json["token"]
    api.create("apps", app_body())
    api.create("instances", _instance("hello-1-0", "n1"))
    api.create("instances", _instance("hello-1-1", "n2.example"))
    api.create("instances", _instance("hello-1-2", None))
    api.create("secrets", {"metadata": {"name": "hello"}, "spec": {"app": "hello", "data": {"DB": "s3cret"}}})
    return tokens


def test_node_token_stored_as_digest_and_remint_replaces(api: Api, nodes: dict[str, str]) -> None:
    """Only the SHA-256 is stored; minting again invalidates the old token."""
    stored = api.store.get("NodeToken", "n1")
    assert nodes["n1"] not in stored.model_dump_json()
    new = api.req("POST", "/api/v1/nodes/n1/token").json["token"]
    assert api.req("GET", "/api/v1/nodes/n1", token=nodes["n1"]).status_code == 401
    assert api.req("GET", "/api/v1/instances", token=new).status_code == 200


NODE_ALLOWED: list[tuple[str, str, str, dict[str, Any], int]] = [
    ("create-own-node", "POST", "/api/v1/nodes", {"json": {"metadata": {"name": "n1"}}}, 201),
    ("get-own-lease-missing", "GET", "/api/v1/leases/node.n1", {}, 404),
    ("create-own-lease", "POST", "/api/v1/leases", {"json": {"metadata": {"name": "node.n1"},
                                                             "spec": {"holder": "n1"}}}, 201),
    ("list-own-instances", "GET", "/api/v1/instances", {}, 200),
    ("get-own-instance", "GET", "/api/v1/instances/hello-1-0", {}, 200),
    ("patch-own-instance-status", "PATCH", "/api/v1/instances/hello-1-0/status",
     {"json": {"status": {"phase": "Running", "port": 20001}}}, 200),
    ("own-instance-secrets", "GET", "/api/v1/instances/hello-1-0/secrets", {}, 200),
    ("own-instance-gitcredential-none", "GET", "/api/v1/instances/hello-1-0/gitcredential", {}, 404),
    ("own-instance-logs", "POST", "/api/v1/instances/hello-1-0/logs",
     {"json": {"source": "app", "entries": [{"offset": 0, "time": "2030-01-01T00:00:00.000Z", "line": "hi"}]}}, 200),
]

NODE_FORBIDDEN: list[tuple[str, str, str, dict[str, Any]]] = [
    ("list-apps", "GET", "/api/v1/apps", {}),
    ("get-app", "GET", "/api/v1/apps/hello", {}),
    ("list-secrets", "GET", "/api/v1/secrets", {}),
    ("list-nodes", "GET", "/api/v1/nodes", {}),
    ("create-other-node", "POST", "/api/v1/nodes", {"json": {"metadata": {"name": "n2.example"}}}),
    ("get-other-node", "GET", "/api/v1/nodes/n2.example", {}),
    ("delete-own-node", "DELETE", "/api/v1/nodes/n1", {}),
    ("other-lease", "POST", "/api/v1/leases", {"json": {"metadata": {"name": "node.n2.example"}}}),
    ("leader-lease", "GET", "/api/v1/leases/forge-controllers", {}),
    ("other-node-instances", "GET", "/api/v1/instances", {"params": {"labelSelector": "forge.dev/node=n2.example"}}),
    ("other-instance", "GET", "/api/v1/instances/hello-1-1", {}),
    ("unbound-instance", "GET", "/api/v1/instances/hello-1-2", {}),
    ("other-instance-status", "PATCH", "/api/v1/instances/hello-1-1/status", {"json": {"status": {"phase": "Failed"}}}),
    ("own-instance-spec", "PATCH", "/api/v1/instances/hello-1-0", {"json": {"spec": {"desired": "Stopped"}}}),
    ("create-instance", "POST", "/api/v1/instances", {"json": _instance("evil", "n1")}),
    ("other-instance-secrets", "GET", "/api/v1/instances/hello-1-1/secrets", {}),
    ("other-instance-gitcredential", "GET", "/api/v1/instances/hello-1-1/gitcredential", {}),
    ("unbound-instance-gitcredential", "GET", "/api/v1/instances/hello-1-2/gitcredential", {}),
    ("other-instance-logs", "POST", "/api/v1/instances/hello-1-1/logs", {"json": {"source": "app", "entries": []}}),
    ("mint-token", "POST", "/api/v1/nodes/n1/token", {}),
    ("rollback", "POST", "/api/v1/apps/hello/rollback", {}),
    ("rotate-key", "POST", "/api/v1/secrets/rotate-key", {}),
    ("app-logs", "GET", "/api/v1/apps/hello/logs", {}),
]


@pytest.mark.parametrize(("method", "path", "kw", "status"), [c[1:] for c in NODE_ALLOWED],
                         ids=[c[0] for c in NODE_ALLOWED])
def test_node_token_allowed(api: Api, nodes: dict[str, str], method: str, path: str, kw: dict[str, Any],
                            status: int) -> None:
    """A node token reaches its own Node, Lease and Instances."""
    r = api.req(method, path, token=nodes["n1"], **kw)
    assert r.status_code == status, r.text


@pytest.mark.parametrize(("method", "path", "kw"), [c[1:] for c in NODE_FORBIDDEN], ids=[c[0] for c in NODE_FORBIDDEN])
def test_node_token_forbidden(api: Api, nodes: dict[str, str], method: str, path: str, kw: dict[str, Any]) -> None:
    """Everything outside a node's own records is 403 to its token."""
    api.create("nodes", {"metadata": {"name": "n2.example"}})
    r = api.req(method, path, token=nodes["n1"], **kw)
    assert r.status_code == 403, r.text
    assert r.json["error"] == "Forbidden"


def test_node_list_is_forced_to_its_own_instances(api: Api, nodes: dict[str, str]) -> None:
    """A node's instance list carries only Instances labelled with its name."""
    r = api.req("GET", "/api/v1/instances", token=nodes["n2.example"])
    assert [i["metadata"]["name"] for i in r.json["items"]] == ["hello-1-1"]
    r = api.req("GET", "/api/v1/instances", token=nodes["n1"], params={"labelSelector": "forge.dev/node=n1"})
    assert [i["metadata"]["name"] for i in r.json["items"]] == ["hello-1-0"]


def test_node_writes_own_node_and_lease(api: Api, nodes: dict[str, str]) -> None:
    """A node creates, replaces and patches its Node (and status) and renews its Lease with PUT."""
    t = nodes["n1"]
    node = api.create("nodes", {"metadata": {"name": "n1"}, "spec": {"address": "10.0.0.5"}}, token=t)
    node["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    r = api.req("PUT", "/api/v1/nodes/n1/status", token=t, json=node)
    assert r.status_code == 200 and r.json["status"]["conditions"][0]["status"] == "True"
    assert api.req("PATCH", "/api/v1/nodes/n1", token=t, json={"spec": {"unschedulable": True}}).status_code == 200
    lease = api.create("leases", {"metadata": {"name": "node.n1"}, "spec": {"holder": "n1"}}, token=t)
    lease["spec"]["renewTime"] = "2030-01-01T00:00:00.000Z"
    assert api.req("PUT", "/api/v1/leases/node.n1", token=t, json=lease).status_code == 200


def test_a_node_records_events_only_on_its_own_records(api: Api, nodes: dict[str, str]) -> None:
    """An agent's Event (a restart it saw) lands on its own Instance or Node, merged and counted;
    another node's records are 403, a malformed reason is 400, and nothing else is written."""
    body = {"type": "Warning", "reason": "CrashLoopBackOff", "message": "process exited with code 3; restart #1 in 1s"}
    t1 = nodes["n1"]
    for _ in range(2):
        assert api.req("POST", "/api/v1/instances/hello-1-0/events", token=t1, json=body).status_code == 201
    evs = [e for e in api.store.list("Event")[0] if e.spec.reason == "CrashLoopBackOff"]
    assert [(e.spec.involved_object.name, e.spec.count, e.spec.source) for e in evs] == [("hello-1-0", 2, "agent/n1")]
    assert api.req("POST", "/api/v1/instances/hello-1-1/events", token=t1, json=body).status_code == 403
    assert api.req("POST", "/api/v1/nodes/n2.example/events", token=t1, json=body).status_code == 403
    api.create("nodes", {"metadata": {"name": "n1"}, "spec": {"address": "10.0.0.1"}})
    assert api.req("POST", "/api/v1/nodes/n1/events", token=t1,
                   json={**body, "reason": "OrphanStopped"}).status_code == 201
    for bad in ({**body, "reason": "not camel"}, {**body, "type": "Fatal"}, {**body, "message": "x" * 2000}):
        assert api.req("POST", "/api/v1/instances/hello-1-0/events", token=t1, json=bad).status_code == 400
    assert api.req("POST", "/api/v1/instances/hello-1-0/events", token=None, json=body).status_code == 401
