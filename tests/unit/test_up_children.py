"""``forge up`` child command lines: the controllers serve their metrics where ``forge up`` says."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from forge.config import Config
from forge.up import Supervisor


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy missing (make setup installs it)")
@pytest.mark.parametrize(("listen", "expected"), [("127.0.0.1:9109", ["--metrics-listen", "127.0.0.1:9109"]), (None, [])],
                         ids=["default", "none"])
def test_controllers_child_gets_metrics_listen(tmp_path: Path, listen: str | None, expected: list[str]) -> None:
    """build_children passes --metrics-listen to forge controllers exactly when one is configured."""
    cfg = Config(data_dir=tmp_path / "data", admin_token="t" * 32)
    sup = Supervisor(cfg, metrics_listen="127.0.0.1:9108", node_name="n1", env={}, controllers_metrics_listen=listen)
    sup.prepare()
    children = {c.name: c for c in sup.build_children({})}
    argv = children["controllers"].argv
    got = argv[argv.index("--metrics-listen"):argv.index("--metrics-listen") + 2] if "--metrics-listen" in argv else []
    assert got == expected
    assert "--metrics-listen" not in children["api"].argv


@pytest.mark.parametrize(("env", "euid", "want"), [
    ({"FORGE_DATA_DIR": "/srv/f"}, 0, "/srv/f"),
    ({}, 0, "/var/lib/forge"),
    ({"XDG_DATA_HOME": "/home/u/.data"}, 1000, "/home/u/.data/forge"),
], ids=["explicit", "root-fhs", "user-xdg"])
def test_default_data_dir(env: dict[str, str], euid: int, want: str) -> None:
    """As root the data dir defaults to /var/lib/forge (never under a 0700 home), else XDG's."""
    from forge.config import default_data_dir

    assert str(default_data_dir(env, euid=euid)) == want


def test_a_second_forge_up_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    """The data dir's lock: a second holder is refused naming the first, and the lock passes on
    only when the first and every child holding the inherited descriptor are gone."""
    import subprocess
    import sys

    from forge.clock import SystemClock
    from forge.errors import Unavailable
    from forge.upguard import UpLock

    first = UpLock(tmp_path, SystemClock())
    fd = first.acquire()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], pass_fds=(fd,))
    try:
        first.child_started("api", child.pid)
        with pytest.raises(Unavailable, match=f"another forge up \\(pid {__import__('os').getpid()}\\)"):
            UpLock(tmp_path, SystemClock()).acquire(wait_children=1)
        __import__("os").close(fd)  # the supervisor "dies" without releasing: only its child holds the lock
        first.fd = None
        import json
        rec = json.loads((tmp_path / "run" / "forge-up.json").read_text())
        rec["pid"] = 999999999  # and is gone
        (tmp_path / "run" / "forge-up.json").write_text(json.dumps(rec))
        second = UpLock(tmp_path, SystemClock())
        second.acquire(wait_children=10)  # stops the recorded child, then takes the lock
        assert child.wait(timeout=10) is not None
        second.release()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy missing (make setup installs it)")
@pytest.mark.parametrize(("given", "ctrl", "expected"), [
    (None, "127.0.0.1:9109", "127.0.0.1:9110"),
    (None, "127.0.0.1:41000", "127.0.0.1:41001"),
    ("127.0.0.1:5555", "127.0.0.1:9109", "127.0.0.1:5555"),
], ids=["default", "derived", "explicit"])
def test_proxy_child_serves_its_metrics(tmp_path: Path, given: str | None, ctrl: str, expected: str) -> None:
    """forge up's proxy serves its metrics: where told, else on the port after the controllers'."""
    cfg = Config(data_dir=tmp_path / "data", admin_token="t" * 32)
    sup = Supervisor(cfg, metrics_listen="127.0.0.1:9108", node_name="n1", env={},
                     controllers_metrics_listen=ctrl, proxy_metrics_listen=given)
    sup.prepare()
    argv = {c.name: c for c in sup.build_children({})}["proxy"].argv
    assert argv[argv.index("--metrics-listen") + 1] == expected
