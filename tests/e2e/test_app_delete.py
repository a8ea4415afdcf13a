"""Delete means gone (issue 19).

An app with persistent storage and two releases (each its own loop-mounted image) runs; then:

* ``forge apps delete NAME </dev/null`` refuses (non-zero, naming what would be lost) and
  deletes nothing;
* ``forge apps delete NAME --yes``: within 30 s its processes are gone, its release images
  unmounted and removed, its release dirs, storage, node logs and shipped log lines deleted;
* the app's uid is retired: a new app of the same name runs as another uid.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.store.factory import open_store
from tests.e2e.harness import ADMIN_TOKEN, APP_PY, Forge, Remote, push_payload, running_forge, wait_for

pytestmark = [pytest.mark.timeout(600)]

APP = "doomed"


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    if shutil.which("caddy") is None:
        pytest.skip("caddy is not installed (make setup)")
    with running_forge("forge-e2e-delete-", FORGE_MODE="dev") as f:
        yield f


def cli(forge: Forge, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FORGE_")}
    env.update(FORGE_URL=forge.api, FORGE_ADMIN_TOKEN=ADMIN_TOKEN, FORGE_DATA_DIR=str(forge.root / "no-cli-data"))
    return subprocess.run([sys.executable, "-m", "forge", *args], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)


# An app that ignores SIGTERM: each stop takes its whole stop_timeout, the window in which a new
# app of the same name must be refused.
MANIFEST = """name: doomed
build:
  commands: ["test -f app.py"]
run:
  command: trap '' TERM; exec python3 app.py
  stop_timeout: 4s
storage: {size: 32M}
resources: {memory: 128M}
health: {path: /health, interval: 1s, timeout: 1s, retries: 2, min_ready: 1s}
"""


def deploy(forge: Forge, remote: Remote, version: str, n: int) -> None:
    sha = remote.commit({"app.py": APP_PY, "version.txt": version + "\n", "forge.yaml": MANIFEST}, version)
    forge.webhook("push", push_payload(f"acme/{APP}", "refs/heads/main", sha)).raise_for_status()
    forge.wait_phase(f"{APP}-{n}", {"Live"}, 180)


def leftovers(forge: Forge, pids: list[int]) -> dict[str, object]:
    """Everything of the app still on this host (empty when it is gone)."""
    node = forge.data / "node"
    with open("/proc/self/mountinfo") as f:
        mounts = [ln.split()[4] for ln in f if f"/{APP}" in ln.split()[4] and str(node) in ln.split()[4]]
    left: dict[str, object] = {
        "processes": [p for p in pids if os.path.exists(f"/proc/{p}") and "Z" not in _state(p)],
        "mounts": mounts,
        "release dirs": sorted(str(p) for p in (node / "releases").glob(f"{APP}*")),
        "images": sorted(str(p) for p in (node / "images").rglob(f"{APP}*")),
        "storage": sorted(str(p) for p in (node / "storage").glob(f"{APP}*")),
        "node logs": sorted(str(p) for p in (node / "logs").glob(f"{APP}-*")),
    }
    store = open_store(f"sqlite:///{forge.data / 'forge.db'}")
    try:
        left["shipped log lines"] = len(store.read_logs(APP))
    finally:
        store.close()
    return {k: v for k, v in left.items() if v}


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def uid_of(forge: Forge) -> int:
    raw = json.loads((forge.data / "node" / "uids.json").read_text())
    return int(raw.get("apps", raw)[APP])


def test_deleting_an_app_leaves_nothing_and_its_uid_is_never_reused(forge: Forge) -> None:
    remote = Remote(forge.root, f"acme/{APP}")
    with forge.client as c:
        c.post("/api/v1/apps", json={"metadata": {"name": APP},
                                     "spec": {"repo": f"acme/{APP}", "branches": ["main"]}}).raise_for_status()
    deploy(forge, remote, "v1", 1)
    deploy(forge, remote, "v2", 2)
    old_uid = uid_of(forge)
    pids = [i["status"]["pid"] for i in forge.list("instances") if i["spec"]["app"] == APP and i["status"].get("pid")]
    assert pids and leftovers(forge, pids).keys() >= {"processes", "mounts", "release dirs", "images", "storage"}
    wait_for(lambda: "shipped log lines" in leftovers(forge, pids), 30, "the app's logs to be shipped")

    # No terminal: nothing is deleted without --yes, and the refusal says what would be lost.
    r = cli(forge, "apps", "delete", APP)
    assert r.returncode != 0 and "--yes" in r.stderr, (r.returncode, r.stdout, r.stderr)
    assert "STORAGE" in r.stderr and "release" in r.stderr, r.stderr
    assert forge.get("apps", APP)["metadata"]["name"] == APP

    started = time.monotonic()
    with forge.client as c:  # what forge apps delete --yes does (tests/cli), without a CLI's start-up
        c.delete(f"/api/v1/apps/{APP}").raise_for_status()
    # Re-created at once and again until the name is free (409 while the old one is deleted):
    # by the time it is, nothing of the old app is left on the node, and its uid is retired.
    refused = 0
    with forge.client as c:
        while True:
            r2 = c.post("/api/v1/apps", json={"metadata": {"name": APP},
                                              "spec": {"repo": f"acme/{APP}", "branches": ["main"]}})
            if r2.status_code == 201:
                break
            assert r2.status_code == 409 and "still being deleted" in r2.json()["message"], r2.text
            refused += 1
            assert time.monotonic() - started < 30, f"30 s after deleting {APP} still left: {leftovers(forge, pids)}"
            time.sleep(0.2)
    took = time.monotonic() - started
    assert refused > 0, "the old app's stop takes 4 s: a re-creation meanwhile must be refused"
    assert leftovers(forge, pids) == {}, f"the name was free with {leftovers(forge, pids)} of the old app left"
    assert APP not in json.loads((forge.data / "node" / "uids.json").read_text()).get("apps", {})
    print(f"old app gone {took:.1f}s after delete --yes ({refused} re-creations refused meanwhile)")

    # The new app of the same name starts from nothing, as another uid.
    deploy(forge, remote, "v3", 1)
    assert uid_of(forge) != old_uid
    assert forge.serves(f"{APP}.localhost", "v3")
