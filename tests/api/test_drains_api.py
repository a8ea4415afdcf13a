"""Log drains through the API: validation naming the field, URLs sealed at rest and masked in
every answer, plaintext only to the agents of nodes running the App, per-node delivery reports."""

from __future__ import annotations

import json
from typing import Any

import pytest

from forge.drains import drain_id
from forge.models import LogDrain
from tests.api.conftest import COMMIT1, Api, app_body

SECRET_URL = "https://drain:s3cretpw@logs.example.com/in?token=t0kval"


def _instance(name: str, app: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": {"forge.dev/app": app, "forge.dev/node": node}},
        "spec": {"app": app, "deployment": f"{app}-1", "repo": f"acme/{app}", "commit": COMMIT1, "node": node},
    }


@pytest.fixture
def tokens(api: Api) -> dict[str, str]:
    out = {}
    for n in ("n1", "n2"):
        out[n] = api.req("POST", f"/api/v1/nodes/{n}/token").json["token"]
    api.create("apps", app_body("hello"))
    api.create("apps", app_body("other"))
    api.create("instances", _instance("hello-1-0", "hello", "n1"))
    api.create("instances", _instance("other-1-0", "other", "n2"))
    return out


def stream(api: Api, node: str, token: str) -> list[dict[str, Any]]:
    r = api.req("GET", f"/api/v1/nodes/{node}/drains", token=token, params={"timeoutSeconds": "1"})
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines() if line.strip()]


def no_secret(text: str) -> None:
    assert "s3cretpw" not in text and "t0kval" not in text


def test_add_list_remove(api: Api, tokens: dict[str, str]) -> None:
    """Added drains are listed masked; removed by ID; the store holds the URL sealed."""
    r = api.req("POST", "/api/v1/apps/hello/drains", json={"url": SECRET_URL})
    assert r.status_code == 201, r.text
    no_secret(r.text)
    assert r.json["url"] == "https://drain:***@logs.example.com/in?token=***"
    assert r.json["id"] == drain_id("hello", SECRET_URL)
    api.req("POST", "/api/v1/apps/hello/drains", json={"url": "syslog+tcp://127.0.0.1:514"})
    listed = api.req("GET", "/api/v1/apps/hello/drains")
    no_secret(listed.text)
    assert [d["url"] for d in listed.json["items"]] == sorted(
        ["https://drain:***@logs.example.com/in?token=***", "syslog+tcp://127.0.0.1:514"],
        key=lambda u: f"hello-{drain_id('hello', SECRET_URL if 'drain' in u else 'syslog+tcp://127.0.0.1:514')}",
    )
    stored = api.store.get(LogDrain, f"hello-{r.json['id']}")
    assert isinstance(stored, LogDrain)
    no_secret(stored.model_dump_json())
    # The generic record routes do not expose drains (their URL is write-only).
    assert api.req("GET", "/api/v1/logdrains").status_code == 404
    d = api.req("DELETE", f"/api/v1/apps/hello/drains/{r.json['id']}")
    assert d.status_code == 200 and len(api.req("GET", "/api/v1/apps/hello/drains").json["items"]) == 1
    assert api.req("DELETE", f"/api/v1/apps/hello/drains/{r.json['id']}").status_code == 404


@pytest.mark.parametrize(
    ("body", "status", "path"),
    [
        ({"url": "ftp://x.example.com/"}, 422, "url"),
        ({"url": "syslog+tcp://x.example.com"}, 422, "url"),
        ({"url": 5}, 422, "url"),
        ({}, 422, "url"),
        ({"url": "syslog+tcp://x.example.com:514", "extra": 1}, 422, "extra"),
    ],
    ids=["scheme", "no-port", "not-a-string", "missing", "unknown-field"],
)
def test_invalid_bodies_name_the_field(api: Api, tokens: dict[str, str], body: dict[str, Any], status: int,
                                       path: str) -> None:
    """A bad body is refused with the field's path."""
    r = api.req("POST", "/api/v1/apps/hello/drains", json=body)
    assert r.status_code in (400, 422), r.text
    assert path in [d["path"] for d in r.json["details"]]


def test_duplicate_unknown_app_and_secret_free_errors(api: Api, tokens: dict[str, str]) -> None:
    """The same URL twice is 409 (masked in the message); an unknown App is 404."""
    assert api.req("POST", "/api/v1/apps/hello/drains", json={"url": SECRET_URL}).status_code == 201
    dup = api.req("POST", "/api/v1/apps/hello/drains", json={"url": SECRET_URL})
    assert dup.status_code == 409
    no_secret(dup.text)
    assert api.req("POST", "/api/v1/apps/nope/drains", json={"url": SECRET_URL}).status_code == 404


def test_agents_get_plaintext_only_for_their_apps(api: Api, tokens: dict[str, str]) -> None:
    """n1 runs hello: it gets hello's URL in plaintext; n2 runs only other: nothing of hello's;
    a node cannot read another node's drains nor manage drains."""
    api.req("POST", "/api/v1/apps/hello/drains", json={"url": SECRET_URL})
    first = stream(api, "n1", tokens["n1"])[0]
    assert first["type"] == "DRAINS" and [d["url"] for d in first["drains"]] == [SECRET_URL]
    assert stream(api, "n2", tokens["n2"])[0]["drains"] == []
    assert api.req("GET", "/api/v1/nodes/n1/drains", token=tokens["n2"]).status_code == 403
    assert api.req("GET", "/api/v1/apps/hello/drains", token=tokens["n1"]).status_code == 403
    assert api.req("POST", "/api/v1/apps/hello/drains", token=tokens["n1"], json={"url": SECRET_URL}).status_code == 403


def test_node_reports_land_in_their_own_slot(api: Api, tokens: dict[str, str]) -> None:
    """Each node writes status.nodes.NODE; the listing sums them and shows the newest error."""
    ident = api.req("POST", "/api/v1/apps/hello/drains", json={"url": SECRET_URL}).json["id"]
    name = f"hello-{ident}"
    r1 = api.req("PUT", f"/api/v1/nodes/n1/drains/{name}/status", token=tokens["n1"],
                 json={"delivered": 10, "dropped": 1, "lastError": "cannot connect to logs.example.com:443",
                       "lastErrorTime": "2026-12-07T22:00:00.000000Z"})
    assert r1.status_code == 200, r1.text
    r2 = api.req("PUT", f"/api/v1/nodes/n2/drains/{name}/status", token=tokens["n2"], json={"delivered": 5})
    assert r2.status_code == 200
    bad = api.req("PUT", f"/api/v1/nodes/n2/drains/{name}/status", token=tokens["n1"], json={"delivered": 5})
    assert bad.status_code == 403
    item = api.req("GET", "/api/v1/apps/hello/drains").json["items"][0]
    assert item["delivered"] == 15 and item["dropped"] == 1
    assert item["lastError"] == "cannot connect to logs.example.com:443"
    assert set(item["nodes"]) == {"n1", "n2"}
    invalid = api.req("PUT", f"/api/v1/nodes/n1/drains/{name}/status", token=tokens["n1"], json={"delivered": -1})
    assert invalid.status_code in (400, 422) and invalid.json["details"][0]["path"] == "delivered"


def test_stream_tells_the_node_of_changes(api: Api, tokens: dict[str, str]) -> None:
    """A drain added while the node's stream is open, and an Instance of another App bound to the
    node, each bring a new DRAINS line; a drain of an App not on the node brings none."""
    import threading
    import time

    api.req("POST", "/api/v1/apps/other/drains", json={"url": "syslog+tcp://127.0.0.1:600"})

    def later() -> None:
        time.sleep(0.5)
        api.req("POST", "/api/v1/apps/hello/drains", json={"url": "syslog+tcp://127.0.0.1:514"})
        time.sleep(0.5)
        api.create("instances", _instance("other-1-1", "other", "n1"))

    t = threading.Thread(target=later)
    t.start()
    r = api.req("GET", "/api/v1/nodes/n1/drains", token=tokens["n1"], params={"timeoutSeconds": "3"})
    t.join()
    lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
    seen = [sorted(d["url"] for d in ln["drains"]) for ln in lines if ln["type"] == "DRAINS"]
    assert seen == [
        [],
        ["syslog+tcp://127.0.0.1:514"],
        ["syslog+tcp://127.0.0.1:514", "syslog+tcp://127.0.0.1:600"],
    ], seen
