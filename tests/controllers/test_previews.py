"""Pull-request previews: GitHub's published pull_request / issue_comment payloads through the
webhook's preview writer, the previews controller on a real SQLite store with a fake clock, and
the github-previews controller against the fake GitHub (OpenAPI-validated)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from forge.api.previews import PreviewDeliveries
from forge.clock import FakeClock, iso, parse_iso
from forge.config import Config
from forge.controllers.github import GithubController, GithubPreviewsController
from forge.controllers.previews import PreviewsController
from forge.errors import NotFound
from forge.models import LABEL_PREVIEW_OF, App, Deployment, ObjectMeta, Preview, Secret, SecretSpec
from forge.secrets import Keyring, aad_for
from forge.store.base import Store
from tests.controllers.conftest import commit_for
from tests.github.fakegithub import FakeGithub
from tests.github.openapi import needs_octokit, webhook_example

pytestmark = needs_octokit

TOKEN = "ghp_" + "P" * 36
SHA1, SHA2, SHA3 = commit_for("pr-1"), commit_for("pr-2"), commit_for("pr-3")


def pr_event(
    clock: FakeClock,
    action: str,
    sha: str,
    number: int = 7,
    head_repo: str = "acme/hello",
    association: str = "OWNER",
    draft: bool = False,
    base: str = "main",
) -> dict[str, Any]:
    """GitHub's published example of ``pull_request`` ``action``, pointed at acme/hello."""
    p = webhook_example("pull_request", action)
    p["number"] = p["pull_request"]["number"] = number
    p["repository"]["full_name"] = "acme/hello"
    pr = p["pull_request"]
    pr["base"]["ref"] = base
    pr["base"]["repo"]["full_name"] = "acme/hello"
    pr["head"]["sha"] = sha
    pr["head"]["repo"]["full_name"] = head_repo
    pr["author_association"] = association
    pr["draft"] = draft
    pr["updated_at"] = iso(clock.now()).replace(".000Z", "Z")
    return p


def comment_event(
    clock: FakeClock, body: str, association: str, number: int = 7, ago: float = 0
) -> dict[str, Any]:
    """GitHub's published issue_comment example, as on a pull request (``issue.pull_request``)."""
    p = webhook_example("issue_comment", "created")
    p["repository"]["full_name"] = "acme/hello"
    p["issue"]["number"] = number
    p["issue"]["pull_request"] = {"url": f"https://api.github.com/repos/acme/hello/pulls/{number}"}
    p["comment"].update(body=body, author_association=association, created_at=iso(clock.now() - ago))
    return p


@pytest.fixture
def hooks(store: Store, clock: FakeClock) -> PreviewDeliveries:
    return PreviewDeliveries(store, clock)


@pytest.fixture
def previews(store: Store, clock: FakeClock, config: Config) -> PreviewsController:
    return PreviewsController(store, clock, config)


@pytest.fixture
def parent(store: Store, config: Config) -> App:
    """App hello with previews (secrets inherited, an env override) and a Secret."""
    app = store.create(
        App.model_validate(
            {
                "metadata": {"name": "hello"},
                "spec": {
                    "repo": "acme/hello",
                    "branches": ["main"],
                    "env": {"MODE": "prod", "KEEP": "1"},
                    "previews": {
                        "enabled": True,
                        "ttl": "1h",
                        "secrets": "inherit",
                        "env": {"MODE": "preview"},
                    },
                },
            }
        )
    )
    keyring = Keyring.load(config)
    secret = Secret(
        metadata=ObjectMeta(name="hello"),
        spec=SecretSpec(
            app="hello", data={"DB": keyring.encrypt("postgres://x", aad_for("Secret", "hello", "DB"))}
        ),
    )
    s = store.create(secret)
    s.status.keys, s.status.data_digest = ["DB"], "hs256:digest-of-hello"
    store.update_status(s)
    return app


def deployments(store: Store, app: str) -> list[Deployment]:
    return sorted((d for d in store.list(Deployment)[0] if d.spec.app == app), key=lambda d: d.metadata.name)


def get(store: Store, kind: type, name: str) -> Any:
    try:
        return store.get(kind, name)
    except NotFound:
        return None


def test_trusted_pr_opened_pushed_closed(store, clock, config, hooks, previews, parent) -> None:
    """opened → preview App + release of refs/pull/7/head with the markers and the App's secret;
    synchronize → a new release; closed → App and Secret gone, and the Preview with them."""
    status, body, _ = hooks.handle("pull_request", pr_event(clock, "opened", SHA1), {})
    assert status == 202 and body["previews"] == ["hello-pr-7"]
    previews.reconcile("hello-pr-7")
    app = store.get(App, "hello-pr-7")
    assert app.metadata.labels[LABEL_PREVIEW_OF] == "hello"
    assert app.spec.env == {"MODE": "preview", "KEEP": "1", "FORGE_PREVIEW": "1", "FORGE_PR_NUMBER": "7"}
    assert app.spec.branches == [] and app.spec.auto_deploy is False
    [dep] = deployments(store, "hello-pr-7")
    assert (dep.spec.commit, dep.spec.ref, dep.spec.repo) == (SHA1, "refs/pull/7/head", "acme/hello")
    secret = store.get(Secret, "hello-pr-7")
    assert (
        Keyring.load(config).decrypt(secret.spec.data["DB"], aad_for("Secret", "hello-pr-7", "DB"))
        == "postgres://x"
    )
    rv = {k.metadata.name: k.metadata.resource_version for k in (store.get(App, "hello-pr-7"), dep, secret)}
    previews.reconcile("hello-pr-7")
    assert {
        k.metadata.name: k.metadata.resource_version
        for k in (
            store.get(App, "hello-pr-7"),
            *deployments(store, "hello-pr-7"),
            store.get(Secret, "hello-pr-7"),
        )
    } == rv, "idempotent"

    hooks.handle("pull_request", pr_event(clock, "synchronize", SHA2), {})
    previews.reconcile("hello-pr-7")
    assert [d.spec.commit for d in deployments(store, "hello-pr-7")] == [SHA1, SHA2]

    hooks.handle("pull_request", pr_event(clock, "closed", SHA2), {})
    previews.reconcile("hello-pr-7")
    assert get(store, App, "hello-pr-7") is None and get(store, Secret, "hello-pr-7") is None
    assert get(store, Preview, "hello-pr-7") is None, "without GitHub reporting the record goes at once"
    assert get(store, App, "hello") is not None and get(store, Secret, "hello") is not None


def test_fork_waits_for_approval_and_every_push_needs_a_new_one(
    store, clock, hooks, previews, parent
) -> None:
    """A fork builds nothing until approved by an OWNER/MEMBER/COLLABORATOR after the push; it never
    gets the App's secrets; a new push needs a new approval."""
    hooks.handle(
        "pull_request",
        pr_event(clock, "opened", SHA1, head_repo="forker/hello", association="CONTRIBUTOR"),
        {},
    )
    previews.reconcile("hello-pr-7")
    p = store.get(Preview, "hello-pr-7")
    assert p.status.phase == "AwaitingApproval" and "approve" in p.status.message
    assert get(store, App, "hello-pr-7") is None and deployments(store, "hello-pr-7") == []

    clock.advance(10)
    _, body, _ = hooks.handle("issue_comment", comment_event(clock, "/forge approve", "NONE"), {})
    assert body["approved"] == [] and "may not approve" in body["reason"]
    _, body, _ = hooks.handle("issue_comment", comment_event(clock, "/forge approve", "MEMBER", ago=60), {})
    assert body["approved"] == [], "a comment written before the push does not approve it"
    _, body, _ = hooks.handle("issue_comment", comment_event(clock, "/forge approve", "MEMBER"), {})
    assert body["approved"] == ["hello-pr-7"]
    previews.reconcile("hello-pr-7")
    assert [d.spec.commit for d in deployments(store, "hello-pr-7")] == [SHA1]
    assert get(store, Secret, "hello-pr-7") is None, "a fork never gets secrets, even with secrets: inherit"

    clock.advance(10)
    hooks.handle(
        "pull_request",
        pr_event(clock, "synchronize", SHA2, head_repo="forker/hello", association="CONTRIBUTOR"),
        {},
    )
    previews.reconcile("hello-pr-7")
    assert store.get(Preview, "hello-pr-7").status.phase == "AwaitingApproval"
    assert [d.spec.commit for d in deployments(store, "hello-pr-7")] == [SHA1], "the new head waits"
    store.update(_approved(store.get(Preview, "hello-pr-7")))
    previews.reconcile("hello-pr-7")
    assert [d.spec.commit for d in deployments(store, "hello-pr-7")] == [SHA1, SHA2]


def _approved(p: Preview) -> Preview:
    """What ``forge previews approve`` writes (the API route is tested in tests/api)."""
    q = p.model_copy(deep=True)
    q.spec.approved_sha, q.spec.approved_by = p.spec.head_sha, "admin"
    return q


def test_outside_author_in_the_same_repo_is_untrusted(store, clock, hooks, previews, parent) -> None:
    """A branch of the repo itself by an author who is no OWNER/MEMBER/COLLABORATOR waits too, and
    once approved still gets no secrets: only trusted heads inherit them."""
    hooks.handle("pull_request", pr_event(clock, "opened", SHA1, association="FIRST_TIME_CONTRIBUTOR"), {})
    previews.reconcile("hello-pr-7")
    assert store.get(Preview, "hello-pr-7").status.phase == "AwaitingApproval"
    store.update(_approved(store.get(Preview, "hello-pr-7")))
    previews.reconcile("hello-pr-7")
    assert len(deployments(store, "hello-pr-7")) == 1 and get(store, Secret, "hello-pr-7") is None


def test_draft_waits_until_ready(store, clock, hooks, previews, parent) -> None:
    """Drafts build nothing; ready_for_review builds."""
    hooks.handle("pull_request", pr_event(clock, "opened", SHA1, draft=True), {})
    previews.reconcile("hello-pr-7")
    assert store.get(Preview, "hello-pr-7").status.phase == "Draft" and get(store, App, "hello-pr-7") is None
    hooks.handle("pull_request", pr_event(clock, "ready_for_review", SHA1), {})
    previews.reconcile("hello-pr-7")
    assert len(deployments(store, "hello-pr-7")) == 1


def test_ttl_without_a_push_deletes_and_a_push_brings_it_back(store, clock, hooks, previews, parent) -> None:
    """ttl 1h: the reconcile asks to come back at the expiry; then the preview is deleted; a push revives it."""
    hooks.handle("pull_request", pr_event(clock, "opened", SHA1), {})
    res = previews.reconcile("hello-pr-7")
    assert res is not None and 3590 <= res.requeue_after <= 3600
    clock.advance(1800)
    hooks.handle("issue_comment", comment_event(clock, "nice", "OWNER"), {})  # a comment is no push
    clock.advance(1801)
    previews.reconcile("hello-pr-7")
    p = store.get(Preview, "hello-pr-7")
    assert p.status.phase == "Expired" and get(store, App, "hello-pr-7") is None
    hooks.handle("pull_request", pr_event(clock, "synchronize", SHA2), {})
    previews.reconcile("hello-pr-7")
    assert store.get(App, "hello-pr-7") is not None
    # (the rollout controller, not running here, removes the deleted App's releases)
    assert deployments(store, "hello-pr-7")[-1].spec.commit == SHA2


@pytest.mark.parametrize(
    ("base", "enabled"), [("develop", True), ("main", False)], ids=["other-branch", "previews-off"]
)
def test_no_preview_when_not_wanted(store, clock, hooks, base, enabled) -> None:
    """A PR against an untracked branch, or an App without previews, creates nothing."""
    store.create(
        App.model_validate(
            {
                "metadata": {"name": "hello"},
                "spec": {"repo": "acme/hello", "branches": ["main"], "previews": {"enabled": enabled}},
            }
        )
    )
    _, body, outcome = hooks.handle("pull_request", pr_event(clock, "opened", SHA1, base=base), {})
    assert body["previews"] == [] and outcome == "ignored"
    assert store.list(Preview)[0] == []


# ---------------------------------------------------------------------- GitHub's side


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeGithub]:
    gh = FakeGithub(clock=clock, tokens={TOKEN}).start()
    yield gh
    gh.stop()


def test_github_sees_waiting_then_live_then_inactive(store, clock, config, hooks, parent, fake) -> None:
    """Fork PR: a pending 'waits for approval' commit status; approved → a transient Deployment that
    goes success; closed → the environment inactive, then the Preview record is gone."""
    cfg = dataclasses.replace(config, github_api_url=fake.url, github_token=TOKEN)
    previews = PreviewsController(store, clock, cfg)
    reports = GithubController(store, clock, cfg)
    gh_previews = GithubPreviewsController(store, clock, cfg, client=reports.client)
    try:
        hooks.handle(
            "pull_request", pr_event(clock, "opened", SHA1, head_repo="forker/hello", association="NONE"), {}
        )
        previews.reconcile("hello-pr-7")
        gh_previews.reconcile("hello-pr-7")
        [waiting] = fake.commit_statuses[SHA1]
        assert waiting["state"] == "pending" and waiting["context"] == "forge/hello-pr-7"
        assert "approv" in waiting["description"] and len(waiting["description"]) <= 140
        gh_previews.reconcile("hello-pr-7")
        assert len(fake.commit_statuses[SHA1]) == 1, "said once per head"

        clock.advance(5)
        hooks.handle("issue_comment", comment_event(clock, "/forge approve\nlooks fine", "COLLABORATOR"), {})
        previews.reconcile("hello-pr-7")
        [dep] = deployments(store, "hello-pr-7")
        reports.reconcile(dep.metadata.name)
        dep = store.get(Deployment, dep.metadata.name)
        dep.status.phase, dep.status.live_time = "Live", clock.now_iso()
        store.update_status(dep)
        reports.reconcile(dep.metadata.name)
        gh = fake.deployment_of(dep.metadata.name)
        assert (
            gh["environment"] == "hello-pr-7"
            and gh["transient_environment"]
            and not gh["production_environment"]
        )
        assert fake.states_of(dep.metadata.name) == ["in_progress", "success"]

        hooks.handle(
            "pull_request", pr_event(clock, "closed", SHA1, head_repo="forker/hello", association="NONE"), {}
        )
        previews.reconcile("hello-pr-7")
        assert get(store, App, "hello-pr-7") is None
        assert get(store, Preview, "hello-pr-7") is not None, "kept until GitHub heard of the teardown"
        reports.reconcile(dep.metadata.name)  # a late report of the release sends nothing more
        assert fake.states_of(dep.metadata.name) == ["in_progress", "success"]
        fake.down = True
        with pytest.raises(Exception):  # noqa: B017 - GithubError: GitHub down, retried by the work queue
            gh_previews.reconcile("hello-pr-7")
        fake.down = False
        gh_previews.reconcile("hello-pr-7")
        assert fake.states_of(dep.metadata.name) == ["in_progress", "success", "inactive"]
        previews.reconcile("hello-pr-7")
        assert get(store, Preview, "hello-pr-7") is None
        assert fake.violations == []
    finally:
        reports.close()


def test_secret_change_reaches_the_preview(store, clock, config, hooks, previews, parent) -> None:
    """A change of the App's Secret wakes its previews and their copy follows it."""
    from forge.store.base import WatchEvent

    hooks.handle("pull_request", pr_event(clock, "opened", SHA1), {})
    previews.reconcile("hello-pr-7")
    keyring = Keyring.load(config)
    s = store.get(Secret, "hello")
    s.spec.data = {"DB": keyring.encrypt("postgres://y", aad_for("Secret", "hello", "DB"))}
    s = store.update(s)
    s.status.data_digest = "hs256:digest-2"
    s = store.update_status(s)
    assert list(previews.keys_for(WatchEvent("MODIFIED", s, 0))) == ["hello-pr-7"]
    previews.reconcile("hello-pr-7")
    mine = store.get(Secret, "hello-pr-7")
    assert keyring.decrypt(mine.spec.data["DB"], aad_for("Secret", "hello-pr-7", "DB")) == "postgres://y"
    assert mine.status.data_digest == "hs256:digest-2"


def test_ttl_marks_the_environment_inactive_on_github(store, clock, config, hooks, parent, fake) -> None:
    """The ttl deletes the preview and GitHub hears its environment is inactive; a later push
    brings a new preview whose release reports afresh."""
    cfg = dataclasses.replace(config, github_api_url=fake.url, github_token=TOKEN)
    previews = PreviewsController(store, clock, cfg)
    reports = GithubController(store, clock, cfg)
    gh_previews = GithubPreviewsController(store, clock, cfg, client=reports.client)
    try:
        hooks.handle("pull_request", pr_event(clock, "opened", SHA1), {})
        previews.reconcile("hello-pr-7")
        [dep] = deployments(store, "hello-pr-7")
        reports.reconcile(dep.metadata.name)
        assert fake.states_of(dep.metadata.name) == ["in_progress"]
        clock.advance(3601)
        previews.reconcile("hello-pr-7")
        assert (
            store.get(Preview, "hello-pr-7").status.phase == "Expired"
            and get(store, App, "hello-pr-7") is None
        )
        gh_previews.reconcile("hello-pr-7")
        assert fake.states_of(dep.metadata.name) == ["in_progress", "inactive"]
        previews.reconcile("hello-pr-7")
        assert get(store, Preview, "hello-pr-7") is not None, (
            "an expired preview's record stays for the next push"
        )
        store.delete(Deployment, dep.metadata.name)  # what the rollout controller does for a deleted App

        hooks.handle("pull_request", pr_event(clock, "synchronize", SHA3), {})
        previews.reconcile("hello-pr-7")
        [dep2] = deployments(store, "hello-pr-7")
        reports.reconcile(dep2.metadata.name)
        assert dep2.spec.commit == SHA3 and fake.states_of(dep2.metadata.name) == ["in_progress"]
        assert len(fake.deployments) == 2, "a new record of a reused name is a new GitHub Deployment"
        assert fake.violations == []
    finally:
        reports.close()


@pytest.mark.parametrize("seed", range(10))
def test_any_sequence_keeps_forks_fenced(store, clock, hooks, previews, parent, seed) -> None:
    """Random sequences of pushes (own branch or fork), approvals (in time, too early, by whom),
    drafts, closes, reopenings, ttl expiries and late or repeated reconciles: a release is only
    ever made of a head that was trusted or approved for exactly that head, a fork's preview never
    has a Secret, and a closed or expired preview has no App once reconciled."""
    import random

    rnd = random.Random(seed)
    shas = [commit_for(f"seq-{seed}-{i}") for i in range(12)]
    allowed: set[str] = set()  # heads that may build: trusted, or approved after their push
    fork, head, draft = False, shas[0], False
    for step in range(40):
        action = rnd.choice(
            [
                "push",
                "push",
                "approve",
                "early",
                "stranger",
                "draft",
                "ready",
                "close",
                "reopen",
                "reconcile",
                "reconcile",
                "wait",
                "cli",
            ]
        )
        if action in ("push", "reopen") or step == 0:
            fork = rnd.random() < 0.5 if action == "push" or step == 0 else fork
            head = shas[rnd.randrange(len(shas))] if action == "push" or step == 0 else head
            kind = "opened" if step == 0 else ("synchronize" if action == "push" else "reopened")
            assoc = "CONTRIBUTOR" if fork else "MEMBER"
            hooks.handle(
                "pull_request",
                pr_event(
                    clock,
                    kind,
                    head,
                    head_repo="forker/hello" if fork else "acme/hello",
                    association=assoc,
                    draft=draft,
                ),
                {},
            )
            if not fork:
                allowed.add(head)
        elif action in ("approve", "early", "stranger"):
            clock.advance(1)
            assoc = "NONE" if action == "stranger" else "OWNER"
            cur = get(store, Preview, "hello-pr-7")
            # "early": written a second before the current head was pushed
            ago = (
                clock.now() - parse_iso(cur.spec.head_time) + 1
                if action == "early" and cur and cur.spec.head_time
                else 0
            )
            _, body, _ = hooks.handle(
                "issue_comment", comment_event(clock, "/forge approve", assoc, ago=ago), {}
            )
            before = cur is not None and cur.spec.approved_sha == cur.spec.head_sha
            if body.get("approved"):
                assert action == "approve" or before, f"step {step}: an {action} comment approved"
                allowed.add(store.get(Preview, "hello-pr-7").spec.head_sha)
        elif action in ("draft", "ready"):
            draft = action == "draft"
            hooks.handle(
                "pull_request",
                pr_event(
                    clock,
                    "converted_to_draft" if draft else "ready_for_review",
                    head,
                    head_repo="forker/hello" if fork else "acme/hello",
                    association="CONTRIBUTOR" if fork else "MEMBER",
                    draft=draft,
                ),
                {},
            )
        elif action == "close":
            hooks.handle("pull_request", pr_event(clock, "closed", head), {})
        elif action == "cli":
            p = get(store, Preview, "hello-pr-7")
            if p is not None and p.spec.state == "open":
                store.update(_approved(p))
                allowed.add(p.spec.head_sha)
        elif action == "wait":
            clock.advance(rnd.choice([60, 1800, 3700]))
        else:
            previews.reconcile("hello-pr-7")
        for d in deployments(store, "hello-pr-7"):
            assert d.spec.commit in allowed, (
                f"step {step}: {d.spec.commit[:12]} built without trust or approval"
            )
        p = get(store, Preview, "hello-pr-7")
        if p is not None and p.spec.head_repo != "acme/hello" and action == "reconcile":
            assert get(store, Secret, "hello-pr-7") is None, f"step {step}: a fork's preview has a Secret"
        if p is not None and p.status.phase in ("Closed", "Expired") and action == "reconcile":
            assert get(store, App, "hello-pr-7") is None
