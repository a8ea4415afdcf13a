"""GitHub controller: releases report back as GitHub Deployments, statuses and commit statuses,
against a fake GitHub on loopback that validates every request by GitHub's OpenAPI description."""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from collections.abc import Iterator
from typing import Any

import pytest

from forge.clock import FakeClock
from forge.config import Config
from forge.controllers.github import GithubController
from forge.errors import TerminalError
from forge.github.client import GithubError
from forge.github.reports import DESCRIPTION_MAX
from forge.models import LABEL_PREVIEW_OF, App, Deployment, Event, ObjectMeta
from forge.store.base import Store
from tests.github.fakegithub import FakeGithub
from tests.github.openapi import needs_octokit

pytestmark = needs_octokit

TOKEN = "ghp_" + "T0k3n" * 7


@pytest.fixture
def fake(clock: FakeClock) -> Iterator[FakeGithub]:
    gh = FakeGithub(clock=clock, tokens={TOKEN}).start()
    yield gh
    gh.stop()


@pytest.fixture
def ctl(store: Store, clock: FakeClock, config: Config, fake: FakeGithub) -> Iterator[GithubController]:
    cfg = dataclasses.replace(
        config, github_api_url=fake.url, github_token=TOKEN, public_url="https://forge.example"
    )
    c = GithubController(store, clock, cfg)
    yield c
    c.close()


def move(store: Store, clock: FakeClock, name: str, phase: str, **status: Any) -> Deployment:
    """Advance a release as the rollout/source controllers would (their fields, not ours)."""
    dep = store.get(Deployment, name)
    dep.status.phase = phase  # type: ignore[assignment]
    if phase == "Live":
        dep.status.live_time = clock.now_iso()
    if phase == "Superseded":
        dep.status.superseded_time = clock.now_iso()
    if phase in ("Failed", "Cancelled"):
        dep.status.finished_time = clock.now_iso()
    for k, v in status.items():
        setattr(dep.status, k, v)
    return store.update_status(dep)  # type: ignore[return-value]


def set_url(store: Store, app: str, url: str) -> None:
    a = store.get(App, app)
    a.status.url = url
    store.update_status(a)


def test_push_lifecycle(ctl, store, clock, fake, make_app, make_deployment) -> None:
    """A release is a GitHub Deployment that moves in_progress → success (URL, log) → inactive."""
    make_app("hello")
    d1 = make_deployment("hello", 1, phase="Pending")
    ctl.reconcile("hello-1")
    gh = fake.deployment_of("hello-1")
    assert gh is not None
    assert (gh["environment"], gh["production_environment"], gh["transient_environment"]) == (
        "hello",
        True,
        False,
    )
    assert gh["sha"] == d1.spec.commit
    creates = [
        r.body
        for r in fake.requests
        if r.method == "POST" and r.template == "/repos/{owner}/{repo}/deployments"
    ]
    assert creates[0]["auto_merge"] is False and creates[0]["required_contexts"] == []
    assert fake.states_of("hello-1") == ["in_progress"]
    assert fake.commit_states(d1.spec.commit, "forge/hello") == ["pending"]

    move(store, clock, "hello-1", "Building")
    ctl.reconcile("hello-1")
    assert fake.states_of("hello-1") == ["in_progress"], "Building is still in_progress: nothing new"

    set_url(store, "hello", "https://hello.example.com")
    move(store, clock, "hello-1", "Live")
    ctl.reconcile("hello-1")
    assert fake.states_of("hello-1") == ["in_progress", "success"]
    success = fake.statuses[gh["id"]][-1]
    assert success["environment_url"] == "https://hello.example.com"
    assert success["log_url"] == "https://forge.example/ui/index.html#/apps/hello"
    assert fake.commit_states(d1.spec.commit, "forge/hello") == ["pending", "success"]

    make_deployment("hello", 2, phase="Live", live_time=clock.now_iso())
    move(store, clock, "hello-1", "Superseded")
    ctl.reconcile("hello-1")
    ctl.reconcile("hello-2")
    assert fake.states_of("hello-1") == ["in_progress", "success", "inactive"]
    assert fake.states_of("hello-2") == ["in_progress", "success"]
    assert store.get(Deployment, "hello-1").status.github.sent[-1] == "inactive"

    n = len(fake.requests)
    for key in ("hello-1", "hello-2"):
        ctl.reconcile(key)
    assert len(fake.requests) == n, "a second reconcile sends nothing"
    assert list(ctl.all_keys()) == []
    assert fake.violations == []


def test_failure_carries_the_reason(ctl, store, clock, fake, make_app, make_deployment) -> None:
    """A failed release says why, in at most 140 characters, on the Deployment and the commit."""
    make_app("hello")
    d = make_deployment("hello", 1, phase="Building")
    why = "forge.yaml: resources.memory: " + "a value far too long to fit " * 10
    move(store, clock, "hello-1", "Failed", reason="InvalidManifest", message=why)
    ctl.reconcile("hello-1")
    assert fake.states_of("hello-1") == ["in_progress", "failure"]
    gh = fake.deployment_of("hello-1")
    failure = fake.statuses[gh["id"]][-1]
    assert len(failure["description"]) <= DESCRIPTION_MAX
    assert "InvalidManifest" in failure["description"]
    commit = fake.commit_statuses[d.spec.commit][-1]
    assert commit["state"] == "failure" and commit["description"] == failure["description"]
    assert fake.violations == []


def test_cancelled_release_is_inactive_and_its_commit_errored(
    ctl, store, clock, fake, make_app, make_deployment
) -> None:
    """A release a newer push overtook never served: inactive, and its commit says it was not deployed."""
    make_app("hello")
    d = make_deployment("hello", 1, phase="Pending")
    move(store, clock, "hello-1", "Cancelled", reason="StalePush", message="main now points at abc")
    ctl.reconcile("hello-1")
    assert fake.states_of("hello-1") == ["in_progress", "inactive"]
    assert fake.commit_states(d.spec.commit, "forge/hello") == ["pending", "error"]
    assert fake.violations == []


@pytest.mark.parametrize("outage", ["503", "refused"])
def test_github_down_for_a_while(ctl, store, clock, fake, make_app, make_deployment, caplog, outage) -> None:
    """GitHub down: the deploy goes on; the reports wait and then go out in order, no secret anywhere."""
    caplog.set_level(logging.DEBUG)
    make_app("hello")
    make_deployment("hello", 1, phase="Pending")
    if outage == "503":
        fake.down = True
    else:
        fake.stop()
    for _ in range(3):
        with pytest.raises(GithubError) as err:
            ctl.reconcile("hello-1")
        assert err.value.transient
    assert TOKEN not in str(err.value)
    move(store, clock, "hello-1", "Live")
    make_deployment("hello", 2, phase="Live", live_time=clock.now_iso())
    move(store, clock, "hello-1", "Superseded")
    with pytest.raises(GithubError):
        ctl.reconcile("hello-1")
    assert "GitHub" in store.get(Deployment, "hello-1").status.github.message
    if outage == "503":
        fake.down = False
    else:
        fake.start()
    ctl.reconcile("hello-1")
    assert fake.states_of("hello-1") == ["in_progress", "success", "inactive"]
    dep = store.get(Deployment, "hello-1")
    assert dep.status.github.message == ""
    everything = caplog.text + json.dumps([e.dump() for e in store.list(Event)[0]]) + json.dumps(dep.dump())
    assert TOKEN not in everything
    assert fake.violations == []


@pytest.mark.parametrize("kind", ["primary", "secondary"])
def test_rate_limit_is_honoured(ctl, store, clock, fake, make_app, make_deployment, kind) -> None:
    """Rate-limited: wait exactly until GitHub's reset (Retry-After or X-RateLimit-Reset), sending nothing before."""
    make_app("hello")
    make_app("other")
    make_deployment("hello", 1, phase="Pending")
    make_deployment("other", 1, phase="Pending")
    fake.limit(120, kind)
    res = ctl.reconcile("hello-1")
    assert res is not None and 119 <= res.requeue_after <= 122
    limited = len(fake.requests)
    assert limited == 1
    clock.advance(60)
    res2 = ctl.reconcile("other-1")  # another release under the same token waits too
    assert res2 is not None and 59 <= res2.requeue_after <= 62
    assert len(fake.requests) == limited, "nothing is sent before the reset"
    clock.advance(res2.requeue_after)
    ctl.reconcile("hello-1")
    ctl.reconcile("other-1")
    assert fake.states_of("hello-1") == ["in_progress"]
    assert fake.states_of("other-1") == ["in_progress"]
    assert fake.violations == []


class CrashOnce:
    """The real store, except that the next status write after ``arm()`` fails (a crash between
    GitHub accepting a call and Forge recording it)."""

    def __init__(self, store: Store) -> None:
        self.backend, self.armed = store, False

    def arm(self) -> None:
        self.armed = True

    def update_status(self, obj: Any) -> Any:
        if self.armed:
            self.armed = False
            raise RuntimeError("crashed before the write")
        return self.backend.update_status(obj)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.backend, name)


def test_crash_after_create_makes_no_second_deployment(
    store, clock, config, fake, make_app, make_deployment
) -> None:
    """Forge dies after GitHub created the Deployment but before recording it: the retry finds it."""
    make_app("hello")
    make_deployment("hello", 1, phase="Pending")
    crashing = CrashOnce(store)
    cfg = dataclasses.replace(config, github_api_url=fake.url, github_token=TOKEN)
    ctl = GithubController(crashing, clock, cfg)  # type: ignore[arg-type]
    fake.on_request = lambda seen: (
        crashing.arm()
        if seen.method == "POST" and seen.template and seen.template.endswith("/deployments")
        else None
    )
    with pytest.raises(RuntimeError):
        ctl.reconcile("hello-1")
    fake.on_request = None
    ctl.reconcile("hello-1")
    assert len(fake.deployments) == 1
    assert fake.states_of("hello-1") == ["in_progress"]
    ctl.close()
    assert fake.violations == []


def test_no_access_stops_retrying_with_an_event(ctl, store, clock, fake, make_app, make_deployment) -> None:
    """GitHub refuses the token (401): a Warning Event says so and the key is not retried."""
    make_app("hello")
    make_deployment("hello", 1, phase="Pending")
    fake.tokens.clear()
    with pytest.raises(TerminalError):
        ctl.reconcile("hello-1")
    events = [e for e in store.list(Event)[0] if e.spec.reason == "GithubReportFailed"]
    assert events and "401" in events[0].spec.message and TOKEN not in events[0].spec.message


def test_preview_reports_a_transient_environment(ctl, store, clock, fake, make_deployment) -> None:
    """A preview App's release is a transient, non-production environment named after it."""
    store.create(
        App(
            metadata=ObjectMeta(name="hello-pr-7", labels={LABEL_PREVIEW_OF: "hello"}),
            spec={"repo": "acme/hello"},
        )
    )
    make_deployment("hello-pr-7", 1, phase="Pending", repo="acme/hello")
    ctl.reconcile("hello-pr-7-1")
    gh = fake.deployment_of("hello-pr-7-1")
    assert (gh["environment"], gh["production_environment"], gh["transient_environment"]) == (
        "hello-pr-7",
        False,
        True,
    )
    assert fake.violations == []


def test_old_history_is_not_reported(ctl, store, clock, fake, make_app, make_deployment) -> None:
    """Releases that ended long before reporting was switched on are not sent to GitHub."""
    make_app("hello")
    make_deployment("hello", 1, phase="Pending")
    move(store, clock, "hello-1", "Failed", reason="BuildFailed", message="x")
    clock.advance(3 * 24 * 3600)
    assert list(ctl.all_keys()) == []
    ctl.reconcile("hello-1")
    assert fake.requests == []


# ---------------------------------------------------------------------- sequences

PATHS = {
    "live-superseded": ["Building", "Starting", "Live", "Superseded"],
    "failed": ["Building", "Failed"],
    "cancelled": ["Cancelled"],
    "live-then-failed": ["Building", "Live", "Failed"],
}
EXPECTED = {
    "live-superseded": ["in_progress", "success", "inactive"],
    "failed": ["in_progress", "failure"],
    "cancelled": ["in_progress", "inactive"],
    "live-then-failed": ["in_progress", "success", "failure"],
}


@pytest.mark.parametrize("seed", range(12))
def test_any_interleaving_reports_in_order(ctl, store, clock, fake, make_app, make_deployment, seed) -> None:
    """Releases advance while GitHub goes down, rate-limits and returns, and reconciles run late or
    twice: every release's states reach GitHub each once, in order, never an older after a newer."""
    rnd = random.Random(seed)
    make_app("hello")
    plans = {f"hello-{i}": rnd.choice(sorted(PATHS)) for i in range(1, 4)}
    for i in range(1, len(plans) + 1):
        make_deployment("hello", i, phase="Pending")
    progress = dict.fromkeys(plans, 0)
    delays: dict[str, float] = {}
    for _ in range(60):
        action = rnd.random()
        name = rnd.choice(sorted(plans))
        if action < 0.3 and progress[name] < len(PATHS[plans[name]]):
            move(store, clock, name, PATHS[plans[name]][progress[name]])
            progress[name] += 1
        elif action < 0.4:
            fake.down = not fake.down
        elif action < 0.45:
            fake.limit(rnd.choice([5, 30, 90]), rnd.choice(["primary", "secondary"]))
        elif action < 0.6:
            clock.advance(rnd.choice([1, 10, 60]))
        else:
            try:
                res = ctl.reconcile(name)
                if res is not None and res.requeue_after:
                    delays[name] = res.requeue_after
            except GithubError:
                pass
        for n, plan in plans.items():
            got = fake.states_of(n)
            assert got == EXPECTED[plan][: len(got)], f"{n}: {got} is not a prefix of {EXPECTED[plan]}"
    fake.down = False
    clock.advance(200)
    for name in plans:
        while progress[name] < len(PATHS[plans[name]]):
            move(store, clock, name, PATHS[plans[name]][progress[name]])
            progress[name] += 1
        ctl.reconcile(name)
        assert fake.states_of(name) == EXPECTED[plans[name]]
        sha = store.get(Deployment, name).spec.commit
        commits = fake.commit_states(sha, "forge/hello")
        assert commits == sorted(commits, key=["pending", "success", "failure", "error"].index)
    assert fake.violations == []
    assert all(d <= 121 for d in delays.values())


def test_a_deleted_apps_releases_report_nothing_more(
    ctl, store, clock, fake, make_app, make_deployment
) -> None:
    """Once the App is gone (a closed preview's teardown already said inactive), a release that
    still had reports waiting sends none of them: nothing newer may follow the teardown."""
    make_app("hello")
    make_deployment("hello", 1, phase="Pending")
    ctl.reconcile("hello-1")
    move(store, clock, "hello-1", "Live")
    store.delete(App, "hello")
    ctl.reconcile("hello-1")
    assert fake.states_of("hello-1") == ["in_progress"]
