"""``GET /api/v1/instances/{name}/gitcredential``: the git token for an Instance's repository,
to that Instance's node (or the admin) only."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from tests.api.conftest import COMMIT1, Api

OWNER_TOKEN = "ghp_ownerLEVELtoken000000000000000000"
REPO_TOKEN = "ghp_repoLEVELtoken0000000000000000000"


def _instance(name: str, node: str | None, repo: str) -> dict[str, Any]:
    labels = {"forge.dev/app": "hello"} | ({"forge.dev/node": node} if node else {})
    return {"metadata": {"name": name, "labels": labels},
            "spec": {"app": "hello", "deployment": "hello-1", "repo": repo, "commit": COMMIT1, "node": node}}


@pytest.fixture
def world(api: Api) -> dict[str, str]:
    """Node tokens for n1 and n2; Instances of three repos; an owner credential for acme and a
    per-repo override for acme/special."""
    tokens = {n: api.req("POST", f"/api/v1/nodes/{n}/token").json["token"] for n in ("n1", "n2")}
    for name, node, repo in (("plain-1-0", "n1", "acme/plain"), ("special-1-0", "n1", "acme/special"),
                             ("public-1-0", "n1", "other/public"), ("theirs-1-0", "n2", "acme/plain"),
                             ("unbound-1-0", None, "acme/plain")):
        api.create("instances", _instance(name, node, repo))
    api.create("repocredentials", {"metadata": {"name": "acme"}, "spec": {"scope": "acme", "token": OWNER_TOKEN}})
    api.create("repocredentials", {"metadata": {"name": "acme-special"},
                                   "spec": {"scope": "acme/special", "token": REPO_TOKEN}})
    return tokens


CASES = [
    ("owner-scope", "n1", "plain-1-0", 200, OWNER_TOKEN),
    ("repo-scope-wins", "n1", "special-1-0", 200, REPO_TOKEN),
    ("admin", "admin", "special-1-0", 200, REPO_TOKEN),
    ("no-credential", "n1", "public-1-0", 404, None),
    ("missing-instance", "n1", "ghost-1-0", 404, None),
    ("other-nodes-instance", "n1", "theirs-1-0", 403, None),
    ("unbound-instance", "n1", "unbound-1-0", 403, None),
    ("other-node-asks-for-mine", "n2", "special-1-0", 403, None),
]


@pytest.mark.parametrize(("who", "instance", "status", "token"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_gitcredential_scoping(api: Api, world: dict[str, str], caplog: pytest.LogCaptureFixture,
                               who: str, instance: str, status: int, token: str | None) -> None:
    """Own Instance → the most specific token; another node's → 403; none applies → 404; no log holds a token."""
    bearer = world[who] if who != "admin" else None
    kw: dict[str, Any] = {"token": bearer} if bearer else {}
    with caplog.at_level(logging.DEBUG):
        r = api.req("GET", f"/api/v1/instances/{instance}/gitcredential", **kw)
    assert r.status_code == status, r.text
    if status == 200:
        assert r.json == {"username": "x-access-token", "token": token}
        assert r.headers["cache-control"] == "no-store"
    else:
        assert r.json["error"] == {403: "Forbidden", 404: "NotFound"}[status]
        assert OWNER_TOKEN not in r.text and REPO_TOKEN not in r.text
    logged = "\n".join(rec.getMessage() for rec in caplog.records)
    assert OWNER_TOKEN not in logged and REPO_TOKEN not in logged


def test_empty_token_is_no_credential(api: Api, world: dict[str, str]) -> None:
    """A RepoCredential with an empty token hands out nothing (404), never an empty token."""
    api.create("repocredentials", {"metadata": {"name": "other"}, "spec": {"scope": "other"}})
    r = api.req("GET", "/api/v1/instances/public-1-0/gitcredential", token=world["n1"])
    assert r.status_code == 404 and r.json["error"] == "NotFound"


def test_gitcredential_in_openapi(api: Api) -> None:
    """The route and its response schema are in the OpenAPI document."""
    doc = api.req("GET", "/api/v1/openapi.json", token=None).json
    op = doc["paths"]["/api/v1/instances/{name}/gitcredential"]["get"]
    assert set(op["responses"]) >= {"200", "403", "404"}
    assert doc["components"]["schemas"]["GitCredential"]["required"] == ["username", "token"]
