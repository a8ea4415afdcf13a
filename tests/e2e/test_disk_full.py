"""A full disk under ``forge up``: its data dir on a small tmpfs this test mounts, then filled.

* A webhook delivery the store cannot record is a 503 that names the delivery to redeliver.
* A live app whose process dies while the disk is full comes back at the same address and
  port — what the store says stays true, so it keeps serving through Caddy.
* Once space is back, the redelivered push deploys, and nothing was corrupted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import Forge, Remote, new_forge, push_payload, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0 or shutil.which("caddy") is None,
                                                  reason="needs root (to mount a tmpfs) and caddy")]


@pytest.fixture
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Forge, Path]]:
    root = Path(tempfile.mkdtemp(prefix="forge-e2e-full-"))
    mnt = root / "data"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384m,mode=0700", "tmpfs", str(mnt)], check=True)
    forge = new_forge(root)
    try:
        forge.start()
        yield forge, mnt
    finally:
        forge.stop()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
        shutil.rmtree(root, ignore_errors=True)


def fill(mnt: Path) -> Path:
    """Take every free byte of the data dir's filesystem; the file to delete to give them back."""
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
    return filler


def test_full_disk_loses_no_push_and_keeps_the_app_serving(small: tuple[Forge, Path]) -> None:
    forge, mnt = small
    remote = Remote(forge.root, "acme/full")
    register(forge, "full", "acme/full")
    push(forge, "acme/full", remote.app_release("full", "v1"))
    forge.wait_phase("full-1", {"Live"})
    wait_for(lambda: forge.serves("full.localhost", "v1"), 15, "v1")
    inst = next(i for i in forge.list("instances", "forge.dev/app=full") if i["spec"]["desired"] == "Running")

    filler = fill(mnt)
    v2 = remote.app_release("full", "v2")
    delivery = "c0ffee00-1111-2222-3333-444455556666"
    r = forge.webhook("push", push_payload("acme/full", "refs/heads/main", v2), delivery=delivery)
    assert r.status_code == 503, r.text
    assert f"{delivery} was not recorded: redeliver it" in r.json()["message"]

    os.kill(inst["status"]["pid"], signal.SIGKILL)  # the app dies while nothing can be written
    wait_for(lambda: all(forge.serves("full.localhost", "v1") for _ in range(5)), 30,
             "the app to serve again at the address the store holds")
    pids = subprocess.run(["pgrep", "-f", "python3 app.py"], capture_output=True, text=True).stdout.split()
    assert pids, "the app process was restarted"

    filler.unlink()
    r = forge.webhook("push", push_payload("acme/full", "refs/heads/main", v2), delivery=delivery)  # redelivered
    assert r.status_code == 202, r.text
    dep = forge.wait_phase(r.json()["created"][0], {"Live", "Failed"}, timeout=120)
    assert dep["status"]["phase"] == "Live", dep["status"]
    wait_for(lambda: forge.serves("full.localhost", "v2"), 30, "v2 after space came back")
    after = forge.get("instances", inst["metadata"]["name"])
    assert (after["status"].get("address"), after["status"].get("port")) in (
        (inst["status"]["address"], inst["status"]["port"]), (None, None))
