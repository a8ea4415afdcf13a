"""Logs bounded where they are made (issue #19): a 20 s full-speed stdout flood from an app, and
one from a build, each grow the data dir by no more than the node's log cap (default 64 MiB),
while a neighbour app keeps answering through Caddy.

The whole install lives on a small loop-mounted ext4 of this test's own (never the real disk),
so even an unbounded writer (today's main: GBs in seconds) stops at that filesystem's size, and
the growth is read exactly from its block counts. Prints the peak growth in MiB.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import APP_PY, MANIFEST, Forge, Remote, new_forge, wait_for
from tests.e2e.test_push_to_live import push, register

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0 or shutil.which("caddy") is None
                                                  or shutil.which("mkfs.ext4") is None,
                                                  reason="needs root (loop mounts), mkfs.ext4 and caddy")]

CAP_MIB = 64  # the default --log-cap
SLACK_MIB = 16  # the store, the shipped lines in the logs database, release trees, Caddy's log
FS_MIB = 640  # the install's filesystem: a hard ceiling for an unbounded writer
FLOOD_SECONDS = 20
LINE = "flood " + "0123456789" * 7

LONG = "x" * 8000  # 10,000 of these (one rate-limit window) are more than the cap: the cap must hold

FLOODER = APP_PY.replace('''    def do_GET(self):
''', f'''    def do_GET(self):
        if self.path in ("/flood", "/flood-long"):
            import subprocess
            line = "{LINE}" if self.path == "/flood" else "{LONG}"
            subprocess.Popen(["timeout", "{FLOOD_SECONDS}", "yes", line])  # our stdout: the app's
''')


def used_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def dir_bytes(path: Path) -> int:
    total = 0
    for top, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(top, name)).st_size
            except OSError:
                continue
    return total


class Peak:
    """Samples ``measure()`` every 50 ms: the highest growth over its first value."""

    def __init__(self, measure: Callable[[], int]) -> None:
        self.measure = measure
        self.base, self.peak = measure(), 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.peak = max(self.peak, self.measure() - self.base)
            except OSError:
                return  # the test is over (its filesystem is gone)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class Neighbour:
    """Asks the neighbour app through Caddy twice a second; remembers every failure."""

    def __init__(self, forge: Forge, host: str) -> None:
        self.forge, self.host, self.ok, self.failed = forge, host, 0, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            try:
                r = httpx.get(f"{self.forge.http}/", headers={"Host": self.host}, timeout=5)
                if r.status_code == 200:
                    self.ok += 1
                else:
                    self.failed.append(f"{r.status_code}")
            except httpx.HTTPError as exc:
                self.failed.append(repr(exc))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def small() -> Iterator[tuple[Forge, Path]]:
    root = Path(tempfile.mkdtemp(prefix="forge-e2e-flood-"))
    image = Path(tempfile.mkdtemp(prefix="forge-e2e-flood-img-")) / "fs.img"
    subprocess.run(["truncate", "-s", f"{FS_MIB}M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(root)], check=True)
    os.chmod(root, 0o711)
    forge = new_forge(root)
    try:
        forge.start()
        register(forge, "calm", "acme/calm")
        push(forge, "acme/calm", Remote(root, "acme/calm").app_release("calm", "calm"))
        forge.wait_phase("calm-1", {"Live"})
        wait_for(lambda: forge.serves("calm.localhost", "calm"), 15, "the neighbour")
        yield forge, root
    finally:
        forge.stop()
        subprocess.run(["umount", "-l", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(image.parent, ignore_errors=True)


def _logs(forge: Forge, app: str, source: str) -> str:
    with forge.client as c:
        r = c.get(f"/api/v1/apps/{app}/logs", params={"source": source})
        r.raise_for_status()
        return r.text


def test_an_app_flooding_stdout_grows_the_data_dir_by_at_most_the_cap(small: tuple[Forge, Path]) -> None:
    forge, mnt = small
    remote = Remote(forge.root, "acme/flood")
    register(forge, "flood", "acme/flood")
    manifest = MANIFEST.format(name="flood", version="v1", extra="", min_ready="1s")
    push(forge, "acme/flood", remote.commit({"app.py": FLOODER, "version.txt": "v1\n", "forge.yaml": manifest}, "v1"))
    forge.wait_phase("flood-1", {"Live"})
    inst = next(i for i in forge.list("instances", "forge.dev/app=flood") if i["spec"]["desired"] == "Running")
    logs = forge.data / "node" / "logs" / inst["metadata"]["name"]
    neighbour = Neighbour(forge, "calm.localhost")
    peak = Peak(lambda: used_bytes(mnt))
    assert forge.through_caddy("flood.localhost", "/flood").status_code == 200
    time.sleep(FLOOD_SECONDS + 3)
    grew = peak.stop() / 2**20
    print(f"\napp flood ({FLOOD_SECONDS} s of `yes`, short lines): peak data dir growth {grew:.1f} MiB "
          f"(cap {CAP_MIB} MiB per log)")
    assert grew <= CAP_MIB + SLACK_MIB, f"the data dir grew by {grew:.0f} MiB"
    # Long lines: one rate-limit window holds more bytes than the cap, so the cap is what holds.
    on_node, whole = Peak(lambda: dir_bytes(logs)), Peak(lambda: used_bytes(mnt))
    assert forge.through_caddy("flood.localhost", "/flood-long").status_code == 200
    time.sleep(FLOOD_SECONDS + 3)
    kept, grew = (on_node.stop() + on_node.base) / 2**20, whole.stop() / 2**20
    neighbour.stop()
    print(f"app flood ({FLOOD_SECONDS} s of `yes`, 8 KB lines): peak data dir growth {grew:.1f} MiB; peak log "
          f"bytes on the node for the Instance {kept:.1f} MiB (cap {CAP_MIB} MiB)")
    assert kept <= CAP_MIB, f"the Instance's logs reached {kept:.0f} MiB on the node"
    assert grew <= CAP_MIB + SLACK_MIB, f"the data dir grew by {grew:.0f} MiB"
    assert neighbour.ok >= 2 * FLOOD_SECONDS and not neighbour.failed, neighbour.failed
    assert forge.serves("flood.localhost", "v1"), "the flooding app itself still answers"
    # What the writer dropped is said in the log, once the rate-limit window is over.
    wait_for(lambda: "log lines dropped: more than 10000 lines or 8 MiB in 30s" in _logs(forge, "flood", "app"), 45,
             "the drop marker in the app's logs")


def test_a_build_flooding_its_output_grows_the_data_dir_by_at_most_the_cap(small: tuple[Forge, Path]) -> None:
    forge, mnt = small
    remote = Remote(forge.root, "acme/bflood")
    register(forge, "bflood", "acme/bflood")
    # 8 KB lines: one rate-limit window holds more bytes than the cap, so the cap is what holds.
    manifest = MANIFEST.format(name="bflood", version="v1", extra="", min_ready="1s").replace(
        '"echo building v1"', f'"timeout {FLOOD_SECONDS} yes $(printf %8000s | tr \\" \\" x) || true"')
    neighbour = Neighbour(forge, "calm.localhost")
    on_node, whole = Peak(lambda: dir_bytes(forge.data / "node" / "logs")), Peak(lambda: used_bytes(mnt))
    push(forge, "acme/bflood", remote.commit({"app.py": APP_PY, "version.txt": "v1\n", "forge.yaml": manifest}, "v1"))
    forge.wait_phase("bflood-1", {"Live"}, timeout=180)
    grew, kept = whole.stop() / 2**20, on_node.stop() / 2**20
    neighbour.stop()
    print(f"\nbuild flood ({FLOOD_SECONDS} s of `yes`, 8 KB lines): peak data dir growth {grew:.1f} MiB; peak "
          f"growth of the node's logs {kept:.1f} MiB (cap {CAP_MIB} MiB per log)")
    assert kept <= CAP_MIB + 1, f"the node's logs grew by {kept:.0f} MiB"
    assert grew <= CAP_MIB + SLACK_MIB, f"the data dir grew by {grew:.0f} MiB"
    assert neighbour.ok >= FLOOD_SECONDS and not neighbour.failed, neighbour.failed
    wait_for(lambda: "log lines dropped: more than 10000 lines or 8 MiB in 30s" in _logs(forge, "bflood", "build"), 45,
             "the drop marker in the build's logs")
