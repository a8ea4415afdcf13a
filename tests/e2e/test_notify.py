"""Notifications end to end: a real ``forge up``, ``forge notify`` from the CLI, and a failing
build that posts one message to a real HTTP receiver on loopback."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

from tests.e2e.harness import Forge, Remote, running_forge, wait_for
from tests.e2e.test_build_deadlines import with_build
from tests.e2e.test_cli_live import cli, ok
from tests.e2e.test_push_to_live import push, register
from tests.receiver import Receiver

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed"),
]

SECRET_PATH = "/services/T9/B9/n0t1fyS3cr3tT0k3n"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    with running_forge("forge-e2e-notify-", FORGE_PUBLIC_URL="https://forge.example") as f:
        yield f


def test_failing_build_posts_once_to_the_apps_webhook(forge: Forge, receiver: Receiver) -> None:
    """forge notify add (URL on stdin) → forge notify test is answered Sent → a push whose build
    fails posts one DeployFailed message with app, release, commit, reason and dashboard link;
    the URL shows up nowhere: not in the CLI's output, the API, nor forge up's log."""
    url = receiver.url(SECRET_PATH)
    register(forge, "nbad", "acme/nbad")
    added = ok(forge, "notify", "add", "nbad", "--format", "generic", stdin=url + "\n")
    assert "nbad" in added and "n0t1fy" not in added
    listed = ok(forge, "notify", "nbad")
    assert "127.0.0.1" in listed and "n0t1fy" not in listed

    tested = ok(forge, "notify", "test", "nbad")
    assert "Sent" in tested, tested
    (test_msg,) = receiver.wait_for(1, timeout=5)
    assert test_msg.path == SECRET_PATH and test_msg.body["forge"]["event"] == "Test"

    remote = Remote(forge.root, "acme/nbad")
    commit = with_build(remote, "nbad", "v1", "echo broken build >&2; exit 3")
    assert push(forge, "acme/nbad", commit) == ["nbad-1"]
    failed = forge.wait_phase("nbad-1", {"Failed", "Live"}, timeout=120)
    assert failed["status"]["phase"] == "Failed", failed["status"]
    got = receiver.wait_for(2, timeout=60)
    assert len(got) >= 2, "no DeployFailed message arrived"
    msg = got[1].body
    assert msg["forge"]["event"] == "DeployFailed"
    assert msg["forge"]["app"] == "nbad" and msg["forge"]["release"] == "nbad-1"
    assert msg["forge"]["commit"] == commit and msg["forge"]["reason"] == failed["status"]["reason"]
    assert msg["forge"]["url"] == "https://forge.example/ui/index.html#/apps/nbad"
    assert "nbad-1" in msg["text"] and msg["blocks"]

    def delivered() -> dict | None:
        note = forge.get("notifications", "nbad-1.deployfailed")
        return note if note.get("status", {}).get("phase") == "Delivered" else None

    note = wait_for(delivered, 30, "the notification to be recorded as delivered", step=0.2)
    assert [d["attempts"] for d in note["status"]["deliveries"].values()] == [1]
    assert len(receiver.requests) == 2  # one test message, one failure: nothing twice

    with forge.client as c:
        api_text = c.get("/api/v1/notifiers").text + c.get("/api/v1/notifications").text
    assert "n0t1fy" not in api_text
    assert forge.log is not None and "n0t1fy" not in forge.log.read_text(errors="replace")
    removed = cli(forge, "notify", "remove", "nbad", "-", stdin=url + "\n")
    assert removed.returncode == 0 and "removed" in removed.stdout, removed.stderr
    assert "no notifiers" in ok(forge, "notify", "nbad")


def test_error_rate_alert_from_the_proxies_counts(forge: Forge, receiver: Receiver) -> None:
    """Request counts sent as a proxy sends them (12 % of 50 answered 5xx) and an install-wide
    notifier: one ErrorRate message for that App, with its live release's name left empty."""
    register(forge, "nerr", "acme/nerr")
    at = int(time.time()) // 10 * 10
    sample = {
        "app": "nerr",
        "release": "",
        "at": at,
        "byClass": {"2xx": 44, "5xx": 6},
        "buckets": [50] + [0] * 11,
        "sum": 1.0,
    }
    with forge.client as c:
        r = c.post("/api/v1/metrics/requests", json={"proxy": "e2e", "id": "b1", "samples": [sample]})
        assert r.status_code == 200 and r.json()["accepted"] == 1, r.text
    before = len(receiver.requests)
    ok(forge, "notify", "add", receiver.url("/install/errors-hook-00000000"), "--event", "ErrorRate")
    got = receiver.wait_for(before + 1, timeout=45)
    assert len(got) > before, "no ErrorRate message arrived"
    msg = got[before].body
    assert got[before].path == "/install/errors-hook-00000000"
    assert msg["forge"]["event"] == "ErrorRate" and msg["forge"]["app"] == "nerr"
    assert "6 of 50 requests" in msg["forge"]["message"]
