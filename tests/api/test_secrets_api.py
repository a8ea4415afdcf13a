"""Write-only values: Secret data and RepoCredential tokens never leave the server in a response."""

from __future__ import annotations

import json

import pytest

from tests.api.conftest import COMMIT1, Api

PLAIN = ["value-one-PLAIN", "value-two-PLAIN", "value-three-PLAIN", "ghp_tokenPLAIN"]


def _seed(api: Api, watch: bool = False) -> list[str]:
    """Create, put and patch sealed records; return every response body the server sent."""
    bodies = []
    r = api.req("POST", "/api/v1/secrets", json={"metadata": {"name": "hello"},
                                                 "spec": {"app": "hello", "data": {"A": PLAIN[0], "B": PLAIN[1]}}})
    assert r.status_code == 201
    bodies.append(r.text)
    r = api.req("PATCH", "/api/v1/secrets/hello", json={"spec": {"data": {"C": PLAIN[2], "A": None}}})
    assert r.status_code == 200
    bodies.append(r.text)
    r = api.req("POST", "/api/v1/repocredentials", json={"metadata": {"name": "acme"},
                                                         "spec": {"scope": "acme", "token": PLAIN[3]}})
    assert r.status_code == 201
    bodies.append(r.text)
    for path in ("/api/v1/secrets", "/api/v1/secrets/hello", "/api/v1/secrets/hello/status",
                 "/api/v1/repocredentials", "/api/v1/repocredentials/acme"):
        r = api.req("GET", path)
        assert r.status_code == 200
        bodies.append(r.text)
    if not watch:
        return bodies
    r = api.req("GET", "/api/v1/secrets", params={"watch": "true", "resourceVersion": "1", "timeoutSeconds": "1"})
    bodies.append(r.text)
    r = api.req("GET", "/api/v1/repocredentials", params={"watch": "true", "timeoutSeconds": "1"})
    bodies.append(r.text)
    return bodies


def test_values_never_in_responses_or_database(api: Api) -> None:
    """No create/patch/get/list/watch response, nor the SQLite file, carries a plaintext value."""
    bodies = _seed(api, watch=True)
    for text in bodies:
        for plain in PLAIN:
            assert plain not in text
    watch = [json.loads(x) for x in bodies[-2].splitlines() if x.strip()]
    assert "MODIFIED" in {e["type"] for e in watch}
    assert all("data" not in e["object"].get("spec", {}) for e in watch if e["type"] != "BOOKMARK")
    raw = b"".join(p.read_bytes() for p in api.config.data_dir.glob("forge.db*"))
    for plain in PLAIN:
        assert plain.encode() not in raw


def test_keys_listed_and_patch_merges(api: Api) -> None:
    """status.keys lists key names; PATCH adds keys and null removes them."""
    _seed(api)
    r = api.req("GET", "/api/v1/secrets/hello")
    assert r.json["status"]["keys"] == ["B", "C"] and "data" not in r.json["spec"]


def _instance_env(api: Api) -> dict[str, str]:
    api.create("instances", {"metadata": {"name": "hello-1-0", "labels": {"forge.dev/node": "n1"}},
                             "spec": {"app": "hello", "deployment": "hello-1", "repo": "acme/hello",
                                      "commit": COMMIT1, "secret": "hello"}})
    r = api.req("GET", "/api/v1/instances/hello-1-0/secrets")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    return r.json["env"]


def test_instance_secrets_decrypt(api: Api) -> None:
    """The instance secrets route is the one place values come back, decrypted."""
    _seed(api)
    assert _instance_env(api) == {"B": PLAIN[1], "C": PLAIN[2]}


def test_put_without_data_keeps_values(api: Api) -> None:
    """A GET→PUT round trip (responses omit data) keeps the stored values; PUT with data replaces them."""
    _seed(api)
    cur = api.req("GET", "/api/v1/secrets/hello").json
    cur["metadata"]["labels"] = {"x": "y"}
    assert api.req("PUT", "/api/v1/secrets/hello", json=cur).status_code == 200
    assert _instance_env(api) == {"B": PLAIN[1], "C": PLAIN[2]}
    cur = api.req("GET", "/api/v1/secrets/hello").json
    cur["spec"]["data"] = {"Z": "zed"}
    r = api.req("PUT", "/api/v1/secrets/hello", json=cur)
    assert r.status_code == 200 and r.json["status"]["keys"] == ["Z"] and "zed" not in r.text
    assert api.req("GET", "/api/v1/instances/hello-1-0/secrets").json["env"] == {"Z": "zed"}


def test_rotate_key_keeps_values(api: Api) -> None:
    """rotate-key re-encrypts under a new key and every value still opens."""
    _seed(api)
    before = api.store.get("Secret", "hello").spec.data["B"]
    r = api.req("POST", "/api/v1/secrets/rotate-key")
    assert r.status_code == 200, r.text
    assert api.store.get("Secret", "hello").spec.data["B"] != before
    assert _instance_env(api) == {"B": PLAIN[1], "C": PLAIN[2]}


@pytest.mark.parametrize("patch", [{"spec": {"data": {"bad key": "x"}}}, {"spec": {"data": {"A": 5}}},
                                   {"spec": {"data": "nope"}}], ids=["bad-key", "non-string", "not-object"])
def test_bad_secret_patch_is_400(api: Api, patch: dict) -> None:
    """Invalid data patches are 400 naming spec.data."""
    _seed(api)
    r = api.req("PATCH", "/api/v1/secrets/hello", json=patch)
    assert r.status_code == 400 and r.json["details"][0]["path"].startswith("spec.data")
