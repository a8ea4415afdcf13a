"""Push to live, end to end: real git, real ``forge up`` (API, controllers, agent, Caddy), real apps."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.e2e.harness import Forge, Remote, push_payload, wait_for

pytestmark = [pytest.mark.e2e]


def register(forge: Forge, name: str, repo: str, **spec: object) -> None:
    body = {"apiVersion": "forge/v1", "kind": "App", "metadata": {"name": name},
            "spec": {"repo": repo, "branches": ["main"], **spec}}
    with forge.client as c:
        r = c.post("/api/v1/apps", json=body)
        assert r.status_code == 201, r.text


def push(forge: Forge, repo: str, commit: str, ref: str = "refs/heads/main") -> list[str]:
    r = forge.webhook("push", push_payload(repo, ref, commit))
    assert r.status_code == 202, r.text
    return list(r.json().get("created", []))



def test_signed_push_goes_live_and_unknown_hosts_get_404(forge: Forge) -> None:
    """A registered app and a signed push become a live app behind Caddy; unknown hosts get 404."""
    remote = Remote(forge.root, "acme/hello")
    register(forge, "hello", "acme/hello")
    commit = remote.app_release("hello", "v1")
    created = push(forge, "acme/hello", commit)
    assert created == ["hello-1"]
    dep = forge.wait_phase("hello-1", {"Live", "Failed"})
    assert dep["status"]["phase"] == "Live", dep["status"]
    wait_for(lambda: forge.serves("hello.localhost", "v1"), 10, "hello.localhost to serve v1")
    r = forge.through_caddy("nobody.localhost")
    assert r.status_code == 404 and r.text
    assert forge.get("apps", "hello")["status"]["liveDeployment"] == "hello-1"


def test_push_while_serving_drops_no_request(forge: Forge) -> None:
    """A v2 push while a client loops on the route: every request is answered 200, then v2 serves."""
    remote = Remote(forge.root, "acme/blue")
    register(forge, "blue", "acme/blue")
    push(forge, "acme/blue", remote.app_release("blue", "v1"))
    forge.wait_phase("blue-1", {"Live"})
    wait_for(lambda: forge.serves("blue.localhost", "v1"), 10, "blue v1")

    stop = threading.Event()
    results: list[tuple[int, str]] = []

    def loop() -> None:
        with httpx.Client(timeout=5) as c:
            for _ in range(5000):  # bounded; stops when told
                if stop.is_set():
                    return
                try:
                    r = c.get(f"{forge.http}/", headers={"Host": "blue.localhost"})
                    results.append((r.status_code, r.text.strip()))
                except httpx.HTTPError as exc:
                    results.append((0, type(exc).__name__))
                time.sleep(0.02)

    t = threading.Thread(target=loop)
    t.start()
    try:
        push(forge, "acme/blue", remote.app_release("blue", "v2"))
        forge.wait_phase("blue-2", {"Live", "Failed"})
        wait_for(lambda: results and results[-1][1].startswith("v2"), 15, "v2 to serve")
        # Keep looping (over the same keep-alive connection) through v1's drain and stop.
        wait_for(lambda: all(i["status"].get("phase") == "Stopped" for i in forge.list("instances", "forge.dev/deployment=blue-1")),
                 60, "blue-1 to stop after its drain")
        time.sleep(0.5)
    finally:
        stop.set()
        t.join(timeout=30)
    failed = [r for r in results if r[0] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    bodies = [b for _, b in results]
    assert bodies[0].startswith("v1") and bodies[-1].startswith("v2")
    assert forge.get("deployments", "blue-1")["status"]["phase"] == "Superseded"


def test_failing_health_check_and_invalid_manifest_never_take_traffic(forge: Forge) -> None:
    """v3 failing its health check and v4 with an unknown manifest field fail; v2 keeps serving."""
    remote = Remote(forge.root, "acme/guard")
    register(forge, "guard", "acme/guard")
    push(forge, "acme/guard", remote.app_release("guard", "v2"))
    forge.wait_phase("guard-1", {"Live"})

    push(forge, "acme/guard", remote.app_release("guard", "v3", health=500))
    bad = forge.wait_phase("guard-2", {"Failed", "Live"}, timeout=120)
    assert bad["status"]["phase"] == "Failed" and bad["status"]["reason"] == "HealthCheckFailed", bad["status"]
    assert forge.serves("guard.localhost", "v2")
    assert forge.get("apps", "guard")["status"]["liveDeployment"] == "guard-1"
    warnings = [e for e in forge.list("events") if e["spec"]["type"] == "Warning"
                and e["spec"]["involvedObject"]["name"] == "guard-2"]
    assert any(e["spec"]["reason"] == "HealthCheckFailed" for e in warnings), warnings

    push(forge, "acme/guard", remote.app_release("guard", "v4", extra="colour: blue\n"))
    inv = forge.wait_phase("guard-3", {"Failed", "Live"})
    assert inv["status"]["reason"] == "InvalidManifest" and "colour" in inv["status"]["message"], inv["status"]
    assert forge.serves("guard.localhost", "v2")


def test_manual_rollback_serves_the_earlier_release(forge: Forge) -> None:
    """POST /apps/NAME/rollback to v1 writes a new release of v1's commit that goes live."""
    remote = Remote(forge.root, "acme/back")
    register(forge, "back", "acme/back")
    push(forge, "acme/back", remote.app_release("back", "v1"))
    forge.wait_phase("back-1", {"Live"})
    push(forge, "acme/back", remote.app_release("back", "v2"))
    forge.wait_phase("back-2", {"Live"})
    wait_for(lambda: forge.serves("back.localhost", "v2"), 10, "back v2")
    with forge.client as c:
        r = c.post("/api/v1/apps/back/rollback", json={"to": "back-1"})
    assert r.status_code == 201, r.text
    new = r.json()["metadata"]["name"]
    assert new == "back-3" and r.json()["spec"]["trigger"]["type"] == "rollback"
    forge.wait_phase(new, {"Live"})
    wait_for(lambda: forge.serves("back.localhost", "v1"), 10, "back to serve v1 again")


@pytest.mark.parametrize("case", ["tag", "deletion", "unknown-repo", "unknown-branch"])
def test_pushes_nothing_tracks_create_nothing(forge: Forge, case: str) -> None:
    """Tag pushes, branch deletions and untracked repos or branches answer 202 and create nothing."""
    sha = "1" * 40
    payload = {
        "tag": push_payload("acme/hello", "refs/tags/v9", sha),
        "deletion": push_payload("acme/hello", "refs/heads/main", "0" * 40, before=sha, deleted=True),
        "unknown-repo": push_payload("acme/nobody", "refs/heads/main", sha),
        "unknown-branch": push_payload("acme/hello", "refs/heads/feature", sha),
    }[case]
    before = {d["metadata"]["name"] for d in forge.list("deployments")}
    r = forge.webhook("push", payload)
    assert r.status_code == 202, r.text
    assert {d["metadata"]["name"] for d in forge.list("deployments")} == before


@pytest.mark.parametrize("case", ["bad-signature", "missing-signature"])
def test_unsigned_or_badly_signed_deliveries_are_refused(forge: Forge, case: str) -> None:
    """A delivery with a wrong or missing signature answers 401 and creates nothing."""
    before = {d["metadata"]["name"] for d in forge.list("deployments")}
    payload = push_payload("acme/hello", "refs/heads/main", "2" * 40)
    if case == "bad-signature":
        r = forge.webhook("push", payload, secret="not-the-secret")
    else:
        r = forge.webhook("push", payload, secret=None)
    assert r.status_code == 401, r.text
    assert {d["metadata"]["name"] for d in forge.list("deployments")} == before


def test_replayed_delivery_creates_one_release(forge: Forge) -> None:
    """GitHub's redelivery of the same X-GitHub-Delivery creates one Deployment, not two."""
    remote = Remote(forge.root, "acme/replay")
    register(forge, "replay", "acme/replay", autoDeploy=True)
    commit = remote.app_release("replay", "v1")
    payload = push_payload("acme/replay", "refs/heads/main", commit)
    first = forge.webhook("push", payload, delivery="11111111-2222-3333-4444-555555555555")
    again = forge.webhook("push", payload, delivery="11111111-2222-3333-4444-555555555555", form=True)
    assert first.status_code == 202 and again.status_code == 202
    assert [d["metadata"]["name"] for d in forge.list("deployments", "forge.dev/app=replay")] == ["replay-1"]


def test_replayed_old_push_never_rolls_the_app_back(forge: Forge) -> None:
    """A captured, validly signed push of v1, re-sent with a fresh delivery id after v2 went live,
    ends Cancelled (StalePush) and v2 keeps serving; the app never answers v1 again."""
    remote = Remote(forge.root, "acme/rewind")
    register(forge, "rewind", "acme/rewind")
    v1 = remote.app_release("rewind", "v1")
    push(forge, "acme/rewind", v1)
    forge.wait_phase("rewind-1", {"Live"})
    push(forge, "acme/rewind", remote.app_release("rewind", "v2"))
    forge.wait_phase("rewind-2", {"Live"})
    wait_for(lambda: forge.serves("rewind.localhost", "v2"), 15, "v2")
    r = forge.webhook("push", push_payload("acme/rewind", "refs/heads/main", v1))  # fresh X-GitHub-Delivery
    assert r.status_code == 202 and r.json()["created"] == ["rewind-3"], r.text
    dep = forge.wait_phase("rewind-3", {"Cancelled", "Live", "Failed"})
    assert (dep["status"]["phase"], dep["status"]["reason"]) == ("Cancelled", "StalePush"), dep["status"]
    assert forge.get("apps", "rewind")["status"]["liveDeployment"] == "rewind-2"
    assert all(forge.serves("rewind.localhost", "v2") for _ in range(10))
    assert any(e["spec"]["reason"] == "StalePush" for e in forge.list("events"))
