"""POST /api/v1/webhook/github over falcon.testing with a real SQLite store."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import falcon
import falcon.testing
import pytest
from prometheus_client import CollectorRegistry

from forge.api.webhook import GithubWebhookResource
from forge.clock import FakeClock
from forge.config import Config
from forge.errors import ForgeError
from forge.models import App, AppSpec, Deployment, DeploymentSpec, Event, ObjectMeta
from forge.store.sqlite import SqliteStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "github"  # copied from shared/fixtures
SECRET = "webhook-test-secret"
URL = "/api/v1/webhook/github"
SHA1 = "1111111111111111111111111111111111111111"
SHA2 = "2222222222222222222222222222222222222222"


@dataclass
class Env:
    client: falcon.testing.TestClient
    store: SqliteStore
    registry: CollectorRegistry

    def deployments(self) -> list[Deployment]:
        items, _ = self.store.list("Deployment")
        return sorted(items, key=lambda d: d.metadata.name)  # type: ignore[return-value]

    def count(self, outcome: str) -> float:
        return self.registry.get_sample_value("forge_webhook_deliveries_total", {"outcome": outcome}) or 0.0


def _render(req: falcon.Request, resp: falcon.Response, exc: ForgeError, params: dict[str, Any]) -> None:
    resp.media = exc.to_dict()
    resp.status = falcon.code_to_http_status(exc.status)


def _make(tmp_path: Path, secret: str) -> Iterator[Env]:
    store = SqliteStore(str(tmp_path / "forge.db"))
    registry = CollectorRegistry()
    app = falcon.App()
    app.add_error_handler(ForgeError, _render)
    config = Config(data_dir=tmp_path, webhook_secret=secret)
    app.add_route(URL, GithubWebhookResource(store, config, FakeClock(), registry))
    for name, repo, branches, auto in (("hello", "acme/hello", ["main"], True),
                                        ("hello-staging", "acme/hello", ["staging"], True),
                                        ("manual", "acme/manual", ["main"], False)):
        store.create(App(metadata=ObjectMeta(name=name),
                         spec=AppSpec(repo=repo, branches=branches, auto_deploy=auto, env={"MODE": name},
                                      replicas=2)))
    yield Env(falcon.testing.TestClient(app), store, registry)
    store.close()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from _make(tmp_path, SECRET)


def sign(body: bytes, secret: str = SECRET) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def push(repo: str = "acme/hello", ref: str = "refs/heads/main", after: str = SHA1, **over: Any) -> dict[str, Any]:
    """A push payload in the shape GitHub sends (see the fixtures)."""
    owner, name = repo.split("/")
    data: dict[str, Any] = {
        "ref": ref, "before": "0" * 40, "after": after, "created": False, "deleted": False, "forced": False,
        "base_ref": None, "compare": f"https://github.com/{repo}/compare/000000000000...{str(after)[:12]}",
        "commits": [{"id": after, "message": "change", "distinct": True}],
        "head_commit": {"id": after, "message": "change"},
        "repository": {"id": 1, "name": name, "full_name": repo, "private": False,
                       "owner": {"login": owner, "name": owner}, "default_branch": "main"},
        "pusher": {"name": owner, "email": f"{owner}@example.com"}, "sender": {"login": owner},
    }
    data.update(over)
    return data


def deliver(env: Env, payload: dict[str, Any] | bytes, event: str = "push", delivery: str = "d-1",
            form: bool = False, signature: str | None = "auto", secret: str = SECRET) -> falcon.testing.Result:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    if form:
        raw = urlencode({"payload": raw.decode()}).encode()
    headers = {"X-GitHub-Event": event, "X-GitHub-Delivery": delivery, "User-Agent": "GitHub-Hookshot/abc",
               "Content-Type": "application/x-www-form-urlencoded" if form else "application/json"}
    if signature == "auto":
        headers["X-Hub-Signature-256"] = sign(raw, secret)
    elif signature is not None:
        headers["X-Hub-Signature-256"] = signature
    return env.client.simulate_post(URL, body=raw, headers=headers)


@pytest.mark.parametrize("form", [False, True], ids=["json", "form-urlencoded"])
def test_push_creates_deployment(env: Env, form: bool) -> None:
    """A signed push of a tracked branch creates Deployment APP-1 with spec only, in either content type."""
    res = deliver(env, push(), form=form)
    assert res.status_code == 202, res.text
    assert res.json["created"] == ["hello-1"] and res.json["deliveryId"] == "d-1"
    [dep] = env.deployments()
    assert dep.metadata.labels == {"forge.dev/app": "hello"}
    assert dep.dump()["spec"] == {
        "app": "hello", "commit": SHA1, "ref": "refs/heads/main", "repo": "acme/hello",
        "trigger": {"type": "webhook", "deliveryId": "d-1"},
        "config": {"env": {"MODE": "hello"}, "replicas": 2, "domains": []}}
    assert dep.status.phase == "" and dep.status.manifest is None
    assert env.count("created") == 1


def test_release_numbers_continue_from_highest(env: Env) -> None:
    """N is one more than the App's highest release, other Apps' releases aside."""
    env.store.create(Deployment(metadata=ObjectMeta(name="hello-7", labels={"forge.dev/app": "hello"}),
                                spec=DeploymentSpec(app="hello", commit=SHA1)))
    env.store.create(Deployment(metadata=ObjectMeta(name="manual-40", labels={"forge.dev/app": "manual"}),
                                spec=DeploymentSpec(app="manual", commit=SHA1)))
    assert deliver(env, push(), delivery="a").json["created"] == ["hello-8"]
    assert deliver(env, push(after=SHA2), delivery="b").json["created"] == ["hello-9"]
    assert deliver(env, push(ref="refs/heads/staging"), delivery="c").json["created"] == ["hello-staging-1"]


def test_case_insensitive_repo_match(env: Env) -> None:
    """GitHub owner/name compare case-insensitively; the App's spelling is kept."""
    res = deliver(env, push(repo="ACME/Hello"))
    assert res.json["created"] == ["hello-1"] and env.deployments()[0].spec.repo == "acme/hello"


def test_replayed_delivery_creates_one(env: Env) -> None:
    """The same X-GitHub-Delivery twice creates one Deployment; the second answers duplicate."""
    first = deliver(env, push(), delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    again = deliver(env, push(), delivery="72d3162e-cc78-11e3-81ab-4c9367dc0958")
    assert first.json["created"] == ["hello-1"]
    assert again.status_code == 202 and again.json["duplicate"] is True
    assert again.json["created"] == [] and again.json["existing"] == ["hello-1"]
    assert [d.metadata.name for d in env.deployments()] == ["hello-1"]
    assert (env.count("created"), env.count("duplicate")) == (1, 1)
    assert deliver(env, push(after=SHA2), delivery="another").json["created"] == ["hello-2"]


def test_replay_with_new_delivery_id_of_live_commit_creates_nothing(env: Env) -> None:
    """A push of the commit already live with the App's config — a replay under a new delivery id
    (the signature does not cover it) — creates no release; an Event says it is already live.
    A new commit, or the same commit after a config change, still releases."""
    assert deliver(env, push(), delivery="d-1").json["created"] == ["hello-1"]
    dep = env.store.get(Deployment, "hello-1")
    dep.status.phase, dep.status.live_time = "Live", "2027-01-01T00:00:00.000Z"
    dep.status.applied_config = dep.spec.config
    env.store.update_status(dep)
    app = env.store.get(App, "hello")
    app.status.live_deployment = "hello-1"
    env.store.update_status(app)
    for i in range(3):
        again = deliver(env, push(), delivery=f"replay-{i}")
        assert again.json["created"] == [] and again.json["existing"] == ["hello-1"]
    assert [d.metadata.name for d in env.deployments()] == ["hello-1"]
    events = [e.spec for e in env.store.list(Event)[0] if e.spec.reason == "AlreadyLive"]
    assert events and "already live" in events[0].message and events[0].count == 3
    app = env.store.get(App, "hello")
    app.spec.env = {"COLOR": "blue"}
    env.store.update(app)
    assert deliver(env, push(), delivery="after-env").json["created"] == ["hello-2"]
    assert env.store.get(Deployment, "hello-2").spec.config.env == {"COLOR": "blue"}  # type: ignore[union-attr]


def test_ping_writes_nothing(env: Env) -> None:
    """GitHub's ping fixture answers 200 ok and writes nothing."""
    before = env.store.revision()
    res = deliver(env, (FIXTURES / "ping.json").read_bytes(), event="ping")
    assert res.status_code == 200 and res.json["ok"] is True and res.json["event"] == "ping"
    assert env.store.revision() == before and env.count("ping") == 1


@pytest.mark.parametrize(("payload", "event", "reason"), [
    ((FIXTURES / "push-tag-deleted.json").read_bytes(), "push", "tag deletion of refs/tags/simple-tag"),
    (push(ref="refs/tags/v1.0"), "push", "refs/tags/v1.0 is not a branch"),
    (push(deleted=True, after="0" * 40), "push", "branch deletion of refs/heads/main"),
    (push(repo="acme/unknown"), "push", "no App tracks repository acme/unknown"),
    (push(ref="refs/heads/dev"), "push", "no App tracks branch dev of acme/hello"),
    (push(repo="acme/manual"), "push", "autoDeploy is off for manual"),
    (push(), "issues", "event 'issues' deploys nothing"),
    (push(), "", "event '(none)' deploys nothing"),
], ids=["tag-deleted-fixture", "tag-push", "branch-deletion", "unknown-repo", "unknown-branch",
        "auto-deploy-off", "other-event", "no-event"])
def test_untracked_pushes_create_nothing(env: Env, payload: Any, event: str, reason: str) -> None:
    """Tags, deletions, untracked repos/branches, autoDeploy off and other events: 202 with a reason."""
    before = env.store.revision()
    res = deliver(env, payload, event=event)
    assert res.status_code == 202 and res.json["created"] == []
    assert reason in res.json["reason"]
    assert env.store.revision() == before and env.count("ignored") == 1


@pytest.mark.parametrize(("signature", "form"), [
    (None, False), ("", False), ("sha256=" + "0" * 64, False), (sign(b"other body"), False),
    ("auto-wrong-secret", False), (None, True), ("sha256=" + "0" * 64, True),
], ids=["missing", "empty", "zeros", "other-body", "wrong-secret", "form-missing", "form-bad"])
def test_bad_or_missing_signature_401(env: Env, signature: str | None, form: bool) -> None:
    """Missing or wrong signatures answer 401 JSON and write nothing."""
    before = env.store.revision()
    if signature == "auto-wrong-secret":
        res = deliver(env, push(), form=form, secret="not-the-secret")
    else:
        res = deliver(env, push(), form=form, signature=signature)
    assert res.status_code == 401
    assert res.json["error"] == "Unauthorized" and "signature" in res.json["message"].lower()
    assert SECRET not in res.text
    assert env.store.revision() == before and env.count("invalid_signature") == 1


def test_signature_checked_before_parsing(env: Env) -> None:
    """An unsigned malformed body is a 401, not a 400: nothing is parsed before the signature."""
    res = deliver(env, b"{not json", signature=None)
    assert res.status_code == 401 and env.count("bad_request") == 0


@pytest.mark.parametrize("secret", ["", None], ids=["empty", "unset"])
def test_unset_secret_refuses_everything(tmp_path: Path, secret: str | None,
                                         caplog: pytest.LogCaptureFixture) -> None:
    """With no webhook secret configured every delivery is 401, even an empty-key HMAC, logged once."""
    for env in _make(tmp_path, secret or ""):
        for delivery in ("a", "b"):
            res = deliver(env, push(), delivery=delivery, secret="")
            assert res.status_code == 401 and "not configured" in res.json["message"]
        assert env.deployments() == [] and env.count("invalid_signature") == 2
        assert sum("FORGE_GITHUB_WEBHOOK_SECRET is not set" in r.message for r in caplog.records) == 1


@pytest.mark.parametrize(("payload", "path"), [
    (push(after="not-a-sha"), "after"),
    (push(after="ABCDEF0123" * 4), "after"),
    (push(after=SHA1[:39]), "after"),
    (push(after=None), "after"),
    (push(ref=None), "ref"),
    (push(repository=None), "repository.full_name"),
], ids=["garbage-after", "uppercase-after", "short-after", "null-after", "no-ref", "no-repository"])
def test_bad_push_fields_400(env: Env, payload: dict[str, Any], path: str) -> None:
    """A push with a bad field answers 400 naming it and creates nothing."""
    res = deliver(env, payload)
    assert res.status_code == 400 and res.json["details"][0]["path"] == path
    assert path in res.json["message"] and env.deployments() == []
    assert env.count("bad_request") == 1


@pytest.mark.parametrize(("body", "form", "headers", "message"), [
    (b"{not json", False, {}, "not valid JSON"),
    (b"[]", False, {}, "must be a JSON object"),
    (b"{not json", True, {}, "not valid JSON"),
    (b"payload_missing=1", False, {"Content-Type": "application/x-www-form-urlencoded"}, "payload"),
    (b"{}", False, {"Content-Type": "text/plain"}, "not supported"),
    (b"{}", False, {"X-GitHub-Delivery": "x" * 200}, "X-GitHub-Delivery"),
], ids=["json", "array", "form-json", "form-no-payload", "text-plain", "long-delivery-id"])
def test_malformed_body_400(env: Env, body: bytes, form: bool, headers: dict[str, str], message: str) -> None:
    """Signed but malformed deliveries answer 400 with a JSON error."""
    raw = urlencode({"payload": body.decode()}).encode() if form else body
    hdrs = {"X-GitHub-Event": "push", "X-GitHub-Delivery": "d-1", "X-Hub-Signature-256": sign(raw),
            "Content-Type": "application/x-www-form-urlencoded" if form else "application/json", **headers}
    res = env.client.simulate_post(URL, body=raw, headers=hdrs)
    assert res.status_code == 400 and message in res.text
    assert set(res.json) == {"error", "message", "details"}


def test_oversize_body_413(env: Env) -> None:
    """A body over 25 MiB answers 413 before anything else happens."""
    raw = b" " * (25 * 1024 * 1024 + 1)
    res = env.client.simulate_post(URL, body=raw, headers={"X-GitHub-Event": "push",
                                                           "X-Hub-Signature-256": sign(raw),
                                                           "Content-Type": "application/json"})
    assert res.status_code == 413 and res.json["error"] == "PayloadTooLarge"
    assert env.count("too_large") == 1


def test_body_at_limit_is_read(env: Env) -> None:
    """A signed push padded to just under 25 MiB is accepted (the cap is not off by one)."""
    base = json.dumps(push()).encode()
    raw = base[:-1] + b" " * (25 * 1024 * 1024 - len(base)) + b"}"
    assert len(raw) == 25 * 1024 * 1024
    res = deliver(env, raw)
    assert res.status_code == 202 and res.json["created"] == ["hello-1"]


def test_metrics_registered_for_every_outcome(env: Env) -> None:
    """Every outcome is exported from the start so alerts can rate() it."""
    for outcome in ("created", "ignored", "duplicate", "invalid_signature", "bad_request", "too_large", "ping"):
        assert env.registry.get_sample_value("forge_webhook_deliveries_total", {"outcome": outcome}) == 0.0


class _RacingStore(SqliteStore):
    """A real store where another worker creates the same delivery's release just before us."""

    raced = False

    def create(self, obj: Any) -> Any:
        if obj.kind == "Deployment" and not self.raced:
            self.raced = True
            super().create(obj.model_copy(deep=True))  # the other worker's copy wins the name
        return super().create(obj)


def test_concurrent_redelivery_resolves_to_one(tmp_path: Path) -> None:
    """Two copies of one delivery racing for APP-N leave one Deployment; the loser answers duplicate."""
    store = _RacingStore(str(tmp_path / "forge.db"))
    store.create(App(metadata=ObjectMeta(name="hello"), spec=AppSpec(repo="acme/hello")))
    app = falcon.App()
    app.add_error_handler(ForgeError, _render)
    registry = CollectorRegistry()
    app.add_route(URL, GithubWebhookResource(store, Config(data_dir=tmp_path, webhook_secret=SECRET),
                                             FakeClock(), registry))
    env = Env(falcon.testing.TestClient(app), store, registry)
    res = deliver(env, push(), delivery="same")
    assert store.raced and res.status_code == 202
    assert res.json["duplicate"] is True and res.json["existing"] == ["hello-1"]
    assert [d.metadata.name for d in env.deployments()] == ["hello-1"]
    store.close()


def test_unrecorded_delivery_says_exactly_what_to_redeliver(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verified push the store cannot record (disk full, store down) is a 503 naming the
    delivery to redeliver from GitHub (which never retries by itself); nothing half-written."""
    from forge.errors import Unavailable

    def full(*_a: Any, **_k: Any) -> Any:
        raise Unavailable("store write failed: database or disk is full")

    monkeypatch.setattr(env.store, "create", full)
    res = deliver(env, push(), delivery="8f1c2d30-0000-11ef-9a3b-abcdef012345")
    assert res.status_code == 503, res.text
    assert "8f1c2d30-0000-11ef-9a3b-abcdef012345 was not recorded: redeliver it" in res.json["message"]
    assert "Recent Deliveries" in res.json["message"] and env.deployments() == []
    assert env.count("error") == 1
