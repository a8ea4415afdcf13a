"""GitHub both ways, end to end: a real ``forge up`` fed GitHub's published push payloads reports
back to a fake GitHub on loopback that validates every request by GitHub's OpenAPI description."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from forge.clock import SystemClock
from tests.e2e.harness import Forge, Remote, running_forge, wait_for
from tests.github.fakegithub import FakeGithub
from tests.github.openapi import needs_octokit, webhook_example

pytestmark = [pytest.mark.e2e, needs_octokit]

TOKEN = "ghp_e2e" + "x" * 33


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGithub]:
    gh = FakeGithub(clock=SystemClock(), tokens={TOKEN}).start()
    yield gh
    gh.stop()


@pytest.fixture(scope="module")
def forge(github: FakeGithub) -> Iterator[Forge]:
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (make setup)")
    with running_forge(
        "forge-e2e-gh-",
        FORGE_MODE="dev",
        FORGE_GITHUB_API_URL=github.url,
        FORGE_GITHUB_TOKEN=TOKEN,
        FORGE_PUBLIC_URL="https://forge.example",
    ) as f:
        yield f


def push(forge: Forge, repo: str, commit: str) -> list[str]:
    """GitHub's own published push example, pointed at this repository and commit."""
    payload = webhook_example("push")
    owner, name = repo.split("/")
    payload["ref"], payload["after"] = "refs/heads/main", commit
    payload["deleted"] = False
    payload["repository"].update(full_name=repo, name=name)
    payload["repository"]["owner"].update(login=owner, name=owner)
    r = forge.webhook("push", payload)
    assert r.status_code == 202, r.text
    return list(r.json()["created"])


def register(forge: Forge, name: str, repo: str) -> None:
    with forge.client as c:
        r = c.post(
            "/api/v1/apps", json={"metadata": {"name": name}, "spec": {"repo": repo, "branches": ["main"]}}
        )
        assert r.status_code == 201, r.text


def states(github: FakeGithub, release: str, want: list[str], timeout: float = 90) -> list[str]:
    return wait_for(
        lambda: github.states_of(release) == want and want,
        timeout,
        f"{release} to report {want} (has {github.states_of(release)})",
        step=0.2,
    )


def test_push_lifecycle_failure_supersede_and_outage(forge: Forge, github: FakeGithub) -> None:
    """Live → success with its URL; a failing release → failure with its reason; a newer live
    release → the old one inactive; GitHub down while a release goes live → reported once it is back."""
    remote = Remote(forge.root, "acme/hello")
    register(forge, "hello", "acme/hello")
    c1 = remote.app_release("hello", "v1")
    assert push(forge, "acme/hello", c1) == ["hello-1"]
    assert forge.wait_phase("hello-1", {"Live", "Failed"})["status"]["phase"] == "Live"
    states(github, "hello-1", ["in_progress", "success"])
    gh1 = github.deployment_of("hello-1")
    assert gh1["environment"] == "hello" and gh1["sha"] == c1
    success = github.statuses[gh1["id"]][-1]
    assert success["environment_url"].startswith("http") and "hello" in success["environment_url"]
    assert success["log_url"] == "https://forge.example/ui/index.html#/apps/hello"
    wait_for(lambda: github.commit_states(c1, "forge/hello") == ["pending", "success"], 30, "commit status")

    c2 = remote.app_release("hello", "v2", health=500)
    assert push(forge, "acme/hello", c2) == ["hello-2"]
    assert forge.wait_phase("hello-2", {"Live", "Failed"}, timeout=120)["status"]["phase"] == "Failed"
    states(github, "hello-2", ["in_progress", "failure"])
    failure = github.statuses[github.deployment_of("hello-2")["id"]][-1]
    assert 0 < len(failure["description"]) <= 140
    assert github.states_of("hello-1") == ["in_progress", "success"], "the failed release took nothing away"

    github.down = True
    c3 = remote.app_release("hello", "v3")
    assert push(forge, "acme/hello", c3) == ["hello-3"]
    assert forge.wait_phase("hello-3", {"Live", "Failed"})["status"]["phase"] == "Live", (
        "GitHub down held nothing"
    )
    forge.wait_phase("hello-1", {"Superseded"})
    assert github.states_of("hello-3") == []
    github.down = False
    states(github, "hello-3", ["in_progress", "success"], timeout=120)
    states(github, "hello-1", ["in_progress", "success", "inactive"], timeout=120)
    assert github.violations == []
    logs = [forge.log, *sorted((forge.data / "logs").glob("*.log"))] if forge.log else []
    assert logs and all(TOKEN not in p.read_text(errors="replace") for p in logs)
    assert TOKEN not in str(forge.list("events")) + str(forge.list("deployments"))
