"""Deploy, rollback and app logs endpoints."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from forge.clock import SystemClock
from forge.models import Deployment, DeploymentConfig, DeploymentSpec, ObjectMeta, Trigger
from tests.api.conftest import COMMIT1, COMMIT2, COMMIT3, Api, app_body, make_api


def _release(api: Api, n: int, commit: str, live: bool, replicas: int = 1) -> None:
    dep = Deployment(metadata=ObjectMeta(name=f"hello-{n}", labels={"forge.dev/app": "hello"}),
                     spec=DeploymentSpec(app="hello", commit=commit, ref="refs/heads/main", repo="acme/hello",
                                         trigger=Trigger(type="webhook"),
                                         config=DeploymentConfig(replicas=replicas, env={"N": str(n)})))
    created = api.store.create(dep)
    if live:
        created.status.phase = "Live"
        created.status.live_time = SystemClock().now_iso()
        api.store.update_status(created)


def _set_live(api: Api, name: str | None) -> None:
    app = api.store.get("App", "hello")
    app.status.live_deployment = name
    api.store.update_status(app)


@pytest.fixture
def history(api: Api) -> Api:
    """hello-1 was live, hello-2 failed (never live), hello-3 is live."""
    api.create("apps", app_body())
    _release(api, 1, COMMIT1, live=True, replicas=2)
    _release(api, 2, COMMIT2, live=False)
    _release(api, 3, COMMIT3, live=True)
    _set_live(api, "hello-3")
    return api


def test_rollback_default_target(history: Api) -> None:
    """Rollback without a target re-releases the newest earlier once-live release with its config
    — but the App's replica count (1), not the target's (2): counts are not release config."""
    r = history.req("POST", "/api/v1/apps/hello/rollback")
    assert r.status_code == 201, r.text
    dep = r.json
    assert dep["metadata"]["name"] == "hello-4" and dep["metadata"]["labels"] == {"forge.dev/app": "hello"}
    assert dep["spec"]["commit"] == COMMIT1 and dep["spec"]["rollbackOf"] == "hello-1"
    assert dep["spec"]["trigger"]["type"] == "rollback"
    assert dep["spec"]["config"] == {"env": {"N": "1"}, "replicas": 1, "domains": []}


def test_rollback_to_named_release(history: Api) -> None:
    """{"to": "hello-2"} rolls back to that release even if it never went live."""
    r = history.req("POST", "/api/v1/apps/hello/rollback", json={"to": "hello-2"})
    assert r.status_code == 201 and r.json["spec"]["commit"] == COMMIT2 and r.json["spec"]["rollbackOf"] == "hello-2"


ROLLBACK_ERRORS: list[tuple[str, dict[str, Any] | None, str | None, int, str]] = [
    ("to-live", {"to": "hello-3"}, "hello-3", 400, "already the live release"),
    ("to-missing", {"to": "hello-9"}, "hello-3", 404, "not found"),
    ("no-live", None, None, 400, "no live release"),
    ("nothing-older", None, "hello-1", 400, "no earlier release"),
    ("unknown-field", {"too": "x"}, "hello-3", 400, "too"),
]


@pytest.mark.parametrize(("body", "live", "status", "text"), [e[1:] for e in ROLLBACK_ERRORS],
                         ids=[e[0] for e in ROLLBACK_ERRORS])
def test_rollback_errors(history: Api, body: dict[str, Any] | None, live: str | None, status: int, text: str) -> None:
    """Rollback explains clearly when there is nothing to roll back to."""
    _set_live(history, live)
    r = history.req("POST", "/api/v1/apps/hello/rollback", **({"json": body} if body is not None else {}))
    assert r.status_code == status and text in r.text


def test_rollback_unknown_app_is_404(api: Api) -> None:
    """Rolling back an App that does not exist is 404."""
    assert api.req("POST", "/api/v1/apps/ghost/rollback").status_code == 404


def test_deploy(history: Api) -> None:
    """deploy writes APP-(N+1) with trigger api, the App's repo and its current config."""
    r = history.req("POST", "/api/v1/apps/hello/deploy", json={"commit": "a" * 40, "ref": "refs/heads/main"})
    assert r.status_code == 201, r.text
    assert r.json["metadata"]["name"] == "hello-4" and r.json["spec"]["trigger"]["type"] == "api"
    assert r.json["spec"]["repo"] == "acme/hello" and r.json["spec"]["config"]["replicas"] == 1


@pytest.mark.parametrize("body", [{"commit": "abc"}, {"commit": "A" * 40}], ids=["short", "upper"])
def test_deploy_needs_commit(history: Api, body: dict[str, Any]) -> None:
    """deploy with a malformed commit is 400 naming commit."""
    r = history.req("POST", "/api/v1/apps/hello/deploy", json=body)
    assert r.status_code == 400
    assert "commit" in r.text


@pytest.mark.parametrize(("live", "commit"), [("hello-3", COMMIT3), ("hello-1", COMMIT1), (None, COMMIT3)],
                         ids=["live", "older-live", "no-live-newest"])
def test_deploy_without_commit_redeploys(history: Api, live: str | None, commit: str) -> None:
    """deploy without a commit re-releases the live release's commit, else the newest release's."""
    _set_live(history, live)
    r = history.req("POST", "/api/v1/apps/hello/deploy", json={})
    assert r.status_code == 201, r.text
    assert r.json["metadata"]["name"] == "hello-4" and r.json["spec"]["commit"] == commit
    assert r.json["spec"]["ref"] == "refs/heads/main" and r.json["spec"]["trigger"]["type"] == "api"


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True, timeout=30).stdout.strip()


@pytest.fixture
def remote_api(tmp_path: Path) -> Iterator[tuple[Api, dict[str, str]]]:
    """An API whose git URL template points at a real bare repo acme/hello with main, dev and tag v1."""
    bare, work = tmp_path / "remotes" / "acme" / "hello.git", tmp_path / "work"
    bare.parent.mkdir(parents=True)
    _git("init", "--bare", "-q", "-b", "main", str(bare))
    _git("init", "-q", "-b", "main", str(work))
    shas = {}
    for branch, text in (("main", "one"), ("dev", "two")):
        if branch != "main":
            _git("-C", str(work), "checkout", "-q", "-b", branch)
        (work / "f.txt").write_text(text)
        _git("-C", str(work), "add", "-A")
        _git("-C", str(work), "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "-m", text)
        shas[branch] = _git("-C", str(work), "rev-parse", "HEAD")
        _git("-C", str(work), "push", "-q", str(bare), f"HEAD:refs/heads/{branch}")
    _git("-C", str(work), "-c", "user.name=t", "-c", "user.email=t@e", "tag", "-a", "v1", "-m", "v1", shas["main"])
    _git("-C", str(work), "push", "-q", str(bare), "refs/tags/v1")
    shas["v1"] = shas["main"]
    api = make_api(tmp_path / "data", git_url_template=f"file://{tmp_path}/remotes/{{full_name}}.git")
    api.create("apps", app_body())
    yield api, shas
    api.store.close()


@pytest.mark.parametrize("ref", ["main", "dev", "v1", "refs/heads/dev"], ids=["branch", "other-branch", "annotated-tag", "full-ref"])
def test_deploy_ref_resolves_to_the_remote_commit(remote_api: tuple[Api, dict[str, str]], ref: str) -> None:
    """deploy with only a ref releases the commit that branch or tag names on the remote now."""
    api, shas = remote_api
    r = api.req("POST", "/api/v1/apps/hello/deploy", json={"ref": ref})
    assert r.status_code == 201, r.text
    assert r.json["spec"]["commit"] == shas[ref.rpartition("/")[2]] and r.json["spec"]["ref"] == ref


@pytest.mark.parametrize("ref", ["nope", "-upload-pack=evil", "a..b"], ids=["unknown", "option-like", "dotdot"])
def test_deploy_unknown_or_hostile_ref_is_400(remote_api: tuple[Api, dict[str, str]], ref: str) -> None:
    """A ref the repository lacks, or one that is not a ref name at all, is 400 naming ref; nothing is created."""
    api, _ = remote_api
    r = api.req("POST", "/api/v1/apps/hello/deploy", json={"ref": ref})
    assert r.status_code == 400, r.text
    assert r.json["details"][0]["path"] == "ref"
    assert api.store.list("Deployment")[0] == []


def test_deploy_without_commit_and_no_release_is_400(api: Api) -> None:
    """The first release of an App needs a commit: without one deploy is 400 naming commit."""
    api.create("apps", app_body())
    r = api.req("POST", "/api/v1/apps/hello/deploy", json={})
    assert r.status_code == 400 and "commit" in r.text and "no release" in r.text


def _ship(api: Api, instance: str, dep: str, source: str, lines: list[str], start: int = 0) -> None:
    api.store.append_logs(instance, "hello", dep, source,
                          [(start + i, SystemClock().now_iso(), line) for i, line in enumerate(lines)])


LOG_QUERIES: list[tuple[str, dict[str, str], list[str]]] = [
    ("all", {}, ["b1", "a1", "a2", "c1"]),
    ("build-only", {"source": "build"}, ["b1"]),
    ("deployment", {"deployment": "hello-2"}, ["c1"]),
    ("tail", {"tail": "2"}, ["a2", "c1"]),
    ("since", {"since": "10m"}, ["b1", "a1", "a2", "c1"]),
]


@pytest.mark.parametrize(("params", "want"), [q[1:] for q in LOG_QUERIES], ids=[q[0] for q in LOG_QUERIES])
def test_app_logs(api: Api, params: dict[str, str], want: list[str]) -> None:
    """App logs come back as NDJSON lines filtered by deployment, source, since and tail."""
    api.create("apps", app_body())
    _ship(api, "hello-1-0", "hello-1", "build", ["b1"])
    _ship(api, "hello-1-0", "hello-1", "app", ["a1", "a2"])
    _ship(api, "hello-2-0", "hello-2", "app", ["c1"])
    r = api.req("GET", "/api/v1/apps/hello/logs", params=params)
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(x) for x in r.text.splitlines() if x.strip()]
    assert [x["line"] for x in lines] == want
    assert set(lines[0]) == {"id", "time", "instance", "deployment", "source", "line"}


@pytest.mark.parametrize("params", [{"source": "stdout"}, {"since": "yesterday"}, {"tail": "-1"}],
                         ids=["source", "since", "tail"])
def test_app_logs_bad_query(api: Api, params: dict[str, str]) -> None:
    """Bad log queries are 400 naming the parameter."""
    api.create("apps", app_body())
    r = api.req("GET", "/api/v1/apps/hello/logs", params=params)
    assert r.status_code == 400 and list(params)[0] in r.text


def test_rollback_to_a_failed_release_needs_force(history: Api) -> None:
    """A release that had Failed is refused (409, saying why it failed) unless force is given."""
    dep = history.store.get("Deployment", "hello-2")
    dep.status.phase, dep.status.reason, dep.status.message = "Failed", "CrashLoopBackOff", "exited with code 3"
    history.store.update_status(dep)
    r = history.req("POST", "/api/v1/apps/hello/rollback", json={"to": "hello-2"})
    assert r.status_code == 409, r.text
    assert "CrashLoopBackOff: exited with code 3" in r.json["message"] and "force" in r.json["message"]
    assert len(history.store.list("Deployment")[0]) == 3, "nothing was created"
    r = history.req("POST", "/api/v1/apps/hello/rollback", json={"to": "hello-2", "force": True})
    assert r.status_code == 201 and r.json["spec"]["rollbackOf"] == "hello-2"
