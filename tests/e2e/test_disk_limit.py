"""``resources.disk`` under a real ``forge up``: an app that writes past its limit is fenced by the
kernel (its release is its own filesystem), stopped with ``DiskLimitExceeded`` and an Event, and
comes back on a fresh copy of its release — while the API keeps answering and the node's disk
never holds more than the limit for it."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e.harness import APP_PY, Forge, Remote, running_forge, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0 or shutil.which("caddy") is None
                                                  or shutil.which("mkfs.ext4") is None,
                                                  reason="needs root (loop mounts), mkfs.ext4 and caddy")]

LIMIT = 64 * 2**20

FILLER = APP_PY.replace('''    def do_GET(self):
''', '''    def do_GET(self):
        if self.path == "/fill":
            written = 0
            try:
                with open("junk", "wb") as f:
                    for _ in range(200):  # 200 MiB, three times the limit
                        f.write(b"x" * (1 << 20))
                        f.flush()
                        written += 1
            except OSError as exc:
                print("write failed after", written, "MiB:", exc, flush=True)
            body = f"wrote {written}\\n".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
''')

MANIFEST = """name: fill
build:
  commands: ["test -f app.py"]
run:
  command: exec python3 app.py
resources: {memory: 128M, disk: 64M}
health: {path: /health, interval: 1s, timeout: 1s, retries: 2, min_ready: 1s}
"""


@pytest.fixture(scope="module")
def forge() -> Iterator[Forge]:
    with running_forge("forge-e2e-disk-") as f:
        yield f


def test_writing_past_the_disk_limit_stops_the_instance_not_the_node(forge: Forge) -> None:
    remote = Remote(forge.root, "acme/fill")
    register(forge, "fill", "acme/fill")
    push(forge, "acme/fill", remote.commit({"app.py": FILLER, "version.txt": "v1\n", "forge.yaml": MANIFEST}, "v1"))
    forge.wait_phase("fill-1", {"Live"})
    wait_for(lambda: forge.serves("fill.localhost", "v1"), 15, "v1")
    node = forge.get("nodes", forge.node)
    assert node["status"]["isolation"]["disk"] == "image"
    inst = next(i for i in forge.list("instances", "forge.dev/app=fill") if i["spec"]["desired"] == "Running")
    assert inst["spec"]["resources"]["disk"] == LIMIT
    release = forge.data / "node" / "releases" / "fill" / "fill-1"
    image = forge.data / "node" / "images" / "fill" / "fill-1.img"

    r = forge.through_caddy("fill.localhost", "/fill")
    wrote = int(r.text.split()[1])
    assert r.status_code == 200 and wrote < LIMIT // 2**20, r.text  # the kernel said no: ENOSPC
    assert image.stat().st_blocks * 512 <= LIMIT + 2**20  # the node's disk holds no more than the limit

    api_ok = []

    def stopped() -> bool:
        api_ok.append(httpx.get(f"{forge.api}/healthz", timeout=5).status_code == 200)
        return any(e["spec"]["reason"] == "DiskLimitExceeded"
                   for e in forge.list("events") if e["spec"].get("involvedObject", {}).get("name")
                   == inst["metadata"]["name"])
    wait_for(stopped, 30, "a DiskLimitExceeded Event on the Instance", step=0.5)
    assert api_ok and all(api_ok)
    # back on a fresh copy of its release: the junk is gone, the app serves again
    wait_for(lambda: forge.serves("fill.localhost", "v1"), 60, "the Instance to serve again")
    assert not (release / "junk").exists()
    after = forge.get("instances", inst["metadata"]["name"])
    assert after["status"]["restarts"] >= 1
    assert os.path.ismount(release)
