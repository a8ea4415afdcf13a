"""``/api/v1/previews`` and ``POST /api/v1/previews/{name}/approve`` (what ``forge previews`` uses)."""

from __future__ import annotations

from tests.api.conftest import Api

HEAD = "ab" * 20


def _preview(api: Api) -> None:
    api.create(
        "previews",
        {
            "metadata": {"name": "hello-pr-3", "labels": {"forge.dev/preview-of": "hello"}},
            "spec": {
                "app": "hello",
                "number": 3,
                "repo": "acme/hello",
                "headSha": HEAD,
                "headRepo": "fork/hello",
            },
        },
    )


def test_approve_the_current_head(api: Api) -> None:
    """Approving sets approvedSha to the head; a stale --sha is 409; an unknown preview 404; no auth 401."""
    _preview(api)
    assert api.req("POST", "/api/v1/previews/hello-pr-3/approve", token=None).status_code == 401
    stale = api.req("POST", "/api/v1/previews/hello-pr-3/approve", json={"sha": "cd" * 20})
    assert stale.status_code == 409 and "now" in stale.json["message"]
    r = api.req("POST", "/api/v1/previews/hello-pr-3/approve", json={"sha": HEAD[:12]})
    assert r.status_code == 200 and r.json["spec"]["approvedSha"] == HEAD
    assert api.req("POST", "/api/v1/previews/hello-pr-9/approve").status_code == 404
    listed = api.req("GET", "/api/v1/previews", params={"labelSelector": "forge.dev/preview-of=hello"}).json
    assert [p["metadata"]["name"] for p in listed["items"]] == ["hello-pr-3"]
