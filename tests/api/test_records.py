"""Record CRUD over falcon.testing: create, get, list, replace, merge-patch, delete, status, errors."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.conftest import Api, app_body


def test_create_sets_server_fields_and_ignores_status(api: Api) -> None:
    """Create answers 201 with uid/resourceVersion/generation from the store and a fresh status."""
    body = app_body(replicas=2)
    body["metadata"].update(uid="mine", resourceVersion=99, generation=7)
    body["status"] = {"phase": "Live", "liveDeployment": "hello-9"}
    r = api.req("POST", "/api/v1/apps", json=body)
    assert r.status_code == 201
    meta = r.json["metadata"]
    assert meta["uid"] != "mine" and meta["generation"] == 1 and meta["resourceVersion"] >= 1
    assert r.json["status"].get("liveDeployment") is None and r.json["status"]["phase"] == ""
    assert r.headers["location"] == "/api/v1/apps/hello"
    assert api.store.get("App", "hello").spec.replicas == 2


def test_get_list_and_selector(api: Api) -> None:
    """List returns a typed list with the store revision; labelSelector filters by labels."""
    api.create("apps", {**app_body("a"), "metadata": {"name": "a", "labels": {"team": "x"}}})
    api.create("apps", {**app_body("b"), "metadata": {"name": "b", "labels": {"team": "y"}}})
    r = api.req("GET", "/api/v1/apps")
    assert r.json["kind"] == "AppList" and r.json["apiVersion"] == "forge/v1"
    assert [i["metadata"]["name"] for i in r.json["items"]] == ["a", "b"]
    assert r.json["metadata"]["resourceVersion"] == api.store.revision()
    r = api.req("GET", "/api/v1/apps", params={"labelSelector": "team=y"})
    assert [i["metadata"]["name"] for i in r.json["items"]] == ["b"]
    assert api.req("GET", "/api/v1/apps/a").json["metadata"]["labels"] == {"team": "x"}


def test_replace_needs_current_resource_version(api: Api) -> None:
    """PUT with the current resourceVersion writes and bumps generation; stale is 409; missing is 400."""
    cur = api.create("apps", app_body())
    cur["spec"]["replicas"] = 3
    r = api.req("PUT", "/api/v1/apps/hello", json=cur)
    assert r.status_code == 200 and r.json["metadata"]["generation"] == 2
    stale = api.req("PUT", "/api/v1/apps/hello", json=cur)
    assert stale.status_code == 409 and stale.json["error"] == "Conflict"
    del cur["metadata"]["resourceVersion"]
    missing = api.req("PUT", "/api/v1/apps/hello", json=cur)
    assert missing.status_code == 400 and missing.json["details"][0]["path"] == "metadata.resourceVersion"


def test_replace_ignores_status(api: Api) -> None:
    """PUT writes spec only; status changes go through /status."""
    cur = api.create("apps", app_body())
    cur["status"]["liveDeployment"] = "hello-1"
    r = api.req("PUT", "/api/v1/apps/hello", json=cur)
    assert r.status_code == 200 and "liveDeployment" not in r.json["status"]


@pytest.mark.parametrize("ctype", ["application/merge-patch+json", "application/json"], ids=["merge-patch", "json"])
def test_merge_patch(api: Api, ctype: str) -> None:
    """PATCH merges objects, null deletes a key, lists replace; both content types work."""
    api.create("apps", {**app_body(env={"A": "1", "B": "2"}), "metadata": {"name": "hello", "labels": {"x": "1"}}})
    patch = {"spec": {"env": {"A": None, "C": "3"}, "branches": ["dev"]}, "metadata": {"labels": {"y": "2"}}}
    r = api.req("PATCH", "/api/v1/apps/hello", body=json.dumps(patch), headers={"Content-Type": ctype})
    assert r.status_code == 200, r.text
    assert r.json["spec"]["env"] == {"B": "2", "C": "3"} and r.json["spec"]["branches"] == ["dev"]
    assert r.json["metadata"]["labels"] == {"x": "1", "y": "2"}
    assert r.json["spec"]["repo"] == "acme/hello"


def test_merge_patch_precondition(api: Api) -> None:
    """A resourceVersion in a patch is a precondition: stale → 409."""
    cur = api.create("apps", app_body())
    api.req("PATCH", "/api/v1/apps/hello", json={"spec": {"replicas": 2}})
    r = api.req("PATCH", "/api/v1/apps/hello",
                json={"metadata": {"resourceVersion": cur["metadata"]["resourceVersion"]}, "spec": {"replicas": 5}})
    assert r.status_code == 409


def test_patch_unsupported_content_type(api: Api) -> None:
    """JSON Patch (RFC 6902) is not supported: 415 with the JSON error shape."""
    api.create("apps", app_body())
    r = api.req("PATCH", "/api/v1/apps/hello", body="[]", headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 415 and r.json["error"] == "UnsupportedMediaType"


def test_status_subresource_writes_only_status(api: Api) -> None:
    """/status PUT and PATCH change status, never spec; generation stays."""
    cur = api.create("apps", app_body())
    cur["status"]["liveDeployment"] = "hello-1"
    cur["spec"]["replicas"] = 9
    r = api.req("PUT", "/api/v1/apps/hello/status", json=cur)
    assert r.status_code == 200, r.text
    assert r.json["status"]["liveDeployment"] == "hello-1" and r.json["spec"]["replicas"] == 1
    assert r.json["metadata"]["generation"] == 1
    r = api.req("PATCH", "/api/v1/apps/hello/status", json={"status": {"url": "http://hello.forge.test"},
                                                           "spec": {"replicas": 4}})
    assert r.status_code == 200
    assert r.json["status"]["url"] == "http://hello.forge.test" and r.json["status"]["liveDeployment"] == "hello-1"
    assert api.store.get("App", "hello").spec.replicas == 1
    stale = api.req("PUT", "/api/v1/apps/hello/status", json=cur)
    assert stale.status_code == 409
    assert api.req("GET", "/api/v1/apps/hello/status").json["status"]["url"] == "http://hello.forge.test"


def test_delete(api: Api) -> None:
    """DELETE returns the record; a second delete is 404; a stale resourceVersion is 409."""
    cur = api.create("apps", app_body())
    api.req("PATCH", "/api/v1/apps/hello", json={"spec": {"replicas": 2}})
    stale = api.req("DELETE", "/api/v1/apps/hello", params={"resourceVersion": cur["metadata"]["resourceVersion"]})
    assert stale.status_code == 409
    r = api.req("DELETE", "/api/v1/apps/hello")
    assert r.status_code == 200 and r.json["metadata"]["name"] == "hello"
    assert api.req("DELETE", "/api/v1/apps/hello").status_code == 404


ERRORS: list[tuple[str, str, str, dict[str, Any], int, str, str | None]] = [
    ("malformed-json", "POST", "/api/v1/apps", {"body": "{nope", "headers": {"Content-Type": "application/json"}},
     400, "BadRequest", None),
    ("nan", "POST", "/api/v1/apps", {"body": '{"metadata":{"name":"a"},"spec":{"repo":"a/b","replicas":NaN}}'},
     400, "BadRequest", None),
    ("not-an-object", "POST", "/api/v1/apps", {"json": [1, 2]}, 400, "BadRequest", None),
    ("empty-body", "POST", "/api/v1/apps", {}, 400, "BadRequest", None),
    ("unknown-field", "POST", "/api/v1/apps", {"json": {"metadata": {"name": "a"}, "spec": {"repo": "a/b", "replica": 2}}},
     400, "Invalid", "spec.replica"),
    ("invalid-field", "POST", "/api/v1/apps", {"json": {"metadata": {"name": "a"}, "spec": {"repo": "nope"}}},
     400, "Invalid", "spec.repo"),
    ("bad-node-selector", "POST", "/api/v1/apps",
     {"json": {"metadata": {"name": "a"}, "spec": {"repo": "a/b", "nodeSelector": {"bad key!": "x"}}}},
     400, "Invalid", "spec.nodeSelector"),
    ("missing-field", "POST", "/api/v1/apps", {"json": {"metadata": {"name": "a"}, "spec": {}}},
     400, "Invalid", "spec.repo"),
    ("bad-name", "POST", "/api/v1/apps", {"json": {"metadata": {"name": "Bad_Name"}, "spec": {"repo": "a/b"}}},
     400, "Invalid", "metadata"),
    ("kind-mismatch", "POST", "/api/v1/apps", {"json": {"kind": "Node", "metadata": {"name": "a"}, "spec": {"repo": "a/b"}}},
     400, "BadRequest", "kind"),
    ("api-version", "POST", "/api/v1/apps", {"json": {"apiVersion": "v2", "metadata": {"name": "a"}, "spec": {"repo": "a/b"}}},
     400, "BadRequest", "apiVersion"),
    ("name-mismatch", "PUT", "/api/v1/apps/hello", {"json": {"metadata": {"name": "other", "resourceVersion": 1},
                                                            "spec": {"repo": "a/b"}}}, 400, "BadRequest", "metadata.name"),
    ("bad-selector", "GET", "/api/v1/apps", {"params": {"labelSelector": "novalue"}}, 400, "Invalid", "labelSelector"),
    ("bad-watch-bool", "GET", "/api/v1/apps", {"params": {"watch": "maybe"}}, 400, "BadRequest", "watch"),
    ("bad-timeout", "GET", "/api/v1/apps", {"params": {"watch": "true", "timeoutSeconds": "99999"}},
     400, "BadRequest", "timeoutSeconds"),
    ("missing", "GET", "/api/v1/apps/ghost", {}, 404, "NotFound", None),
    ("missing-patch", "PATCH", "/api/v1/apps/ghost", {"json": {"spec": {}}}, 404, "NotFound", None),
    ("unknown-route", "GET", "/api/v1/widgets", {}, 404, "NotFound", None),
    ("wrong-method", "DELETE", "/api/v1/apps", {}, 405, "MethodNotAllowed", None),
    ("exists", "POST", "/api/v1/apps", {"json": app_body()}, 409, "AlreadyExists", None),
]


@pytest.mark.parametrize(("method", "path", "kw", "status", "reason", "field"),
                         [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_error_statuses(api: Api, method: str, path: str, kw: dict[str, Any], status: int, reason: str,
                        field: str | None) -> None:
    """Every error is JSON {error, message, details} with the right status, naming the field path."""
    api.create("apps", app_body())
    r = api.req(method, path, **kw)
    assert r.status_code == status, r.text
    assert set(r.json) >= {"error", "message", "details"} and r.json["error"] == reason
    assert "Traceback" not in r.text
    if field is not None:
        assert field in [d["path"] for d in r.json["details"]], r.json


@pytest.mark.parametrize("size", [1024 * 1024 + 1, 3 * 1024 * 1024], ids=["just-over", "far-over"])
def test_body_over_one_mebibyte_is_413(api: Api, size: int) -> None:
    """A body over 1 MiB is refused with 413 before it is parsed."""
    body = b'{"metadata":{"name":"a"},"spec":{"repo":"a/b","env":{"X":"' + b"x" * size + b'"}}}'
    r = api.req("POST", "/api/v1/apps", body=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json["error"] == "PayloadTooLarge"


def test_compacted_watch_is_410(api: Api) -> None:
    """A watch from a compacted revision answers 410 before any stream starts."""
    for n in range(5):
        api.create("apps", app_body(f"a{n}"))
    api.store.compact(keep=1)
    r = api.req("GET", "/api/v1/apps", params={"watch": "true", "resourceVersion": "1", "timeoutSeconds": "1"})
    assert r.status_code == 410 and r.json["error"] == "Gone"


def test_watch_replays_and_ends_after_timeout(api: Api) -> None:
    """Without resourceVersion a watch replays current records as ADDED, then ends at timeoutSeconds."""
    api.create("apps", app_body("a"))
    r = api.req("GET", "/api/v1/apps", params={"watch": "true", "timeoutSeconds": "1"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
    assert lines[0]["type"] == "BOOKMARK"
    assert [(x["type"], x["object"]["metadata"]["name"]) for x in lines if x["type"] == "ADDED"] == [("ADDED", "a")]


def test_unexpected_exception_is_500_with_request_id(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    """An uncaught error answers 500 with a request id and no internals; the traceback is logged."""
    api.store.get = None  # type: ignore[assignment,method-assign]  # calling None is a TypeError
    r = api.req("GET", "/api/v1/apps/hello")
    assert r.status_code == 500 and r.json["error"] == "InternalError"
    assert r.json["requestId"] in r.json["message"] and "NoneType" not in r.text
    assert any("unhandled TypeError" in rec.getMessage() for rec in caplog.records)


@pytest.mark.parametrize(("first", "second", "owner"), [
    ({"name": "shop", "domains": ["shop.example.com"]}, {"name": "evil", "domains": ["SHOP.example.com."]}, "shop"),
    ({"name": "shop", "domains": []}, {"name": "evil", "domains": ["shop.forge.test"]}, "shop"),
    ({"name": "blog", "domains": ["evil.forge.test"]}, {"name": "evil", "domains": []}, "blog"),
], ids=["custom-domain-twice", "another-apps-own-host", "name-whose-host-is-claimed"])
def test_a_host_belongs_to_one_app(api, first: dict, second: dict, owner: str) -> None:  # type: ignore[no-untyped-def]
    """Claiming a host another App answers on (custom domain or APP.DOMAIN) is 409 naming the
    owner, on create, replace and merge-patch alike; nothing is written."""
    def app(d: dict) -> dict:
        return {"metadata": {"name": d["name"]}, "spec": {"repo": f"acme/{d['name']}", "domains": d["domains"]}}

    assert api.req("POST", "/api/v1/apps", json=app(first)).status_code == 201
    r = api.req("POST", "/api/v1/apps", json=app(second))
    assert r.status_code == 409 and f"belongs to app {owner}" in r.json["message"], r.text
    if second["domains"]:
        assert api.req("POST", "/api/v1/apps", json=app({**second, "domains": []})).status_code == 201
        r = api.req("PATCH", f"/api/v1/apps/{second['name']}", json={"spec": {"domains": second["domains"]}},
                    headers={"Content-Type": "application/merge-patch+json"})
        assert r.status_code == 409 and f"belongs to app {owner}" in r.json["message"], r.text
        assert api.req("GET", f"/api/v1/apps/{second['name']}").json["spec"]["domains"] == []


def test_an_app_name_is_free_again_only_once_its_old_records_are_gone(api: Api) -> None:
    """Creating an App while Deployments or Instances of a deleted one of that name remain is a
    409 naming them (its nodes are still deleting its files); afterwards it is created."""
    from forge.models import LABEL_APP, Deployment

    api.store.create(Deployment.model_validate({
        "metadata": {"name": "gone-1", "labels": {LABEL_APP: "gone"}},
        "spec": {"app": "gone", "commit": "a" * 40, "ref": "refs/heads/main", "trigger": {"type": "api"}}}))
    body = {"metadata": {"name": "gone"}, "spec": {"repo": "acme/gone", "branches": ["main"]}}
    r = api.req("POST", "/api/v1/apps", json=body)
    assert r.status_code == 409 and "still being deleted" in r.json["message"] and "gone-1" in r.json["message"]
    api.store.delete("Deployment", "gone-1")
    assert api.req("POST", "/api/v1/apps", json=body).status_code == 201
