"""An install made before Forge's files were private is fixed when it starts (``forge.hostperms``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from forge.hostperms import nft_uids, owner_refused, secure_agent_dir, secure_data_dir


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def loose_install(data: Path) -> None:
    """The layout ``forge up`` left before: world-readable records, logs and git caches."""
    for d in (
        "logs",
        "source-cache/acme/hello.git/objects/ab",
        "node/logs/hello-1-0",
        "node/git/acme",
        "node/releases/hello/hello-1",
        "node/storage/hello",
        "node/built/hello",
    ):
        (data / d).mkdir(parents=True, exist_ok=True)
    for f in (
        "forge.db",
        "forge.db-wal",
        "forge-logs.db",
        "forge-logs.db-shm",
        "api-url",
        "logs/api.log",
        "source-cache/acme/hello.git/objects/ab/cdef",
        "node/logs/hello-1-0/app.log",
        "node/releases/hello/hello-1/app.py",
        "node/storage/hello/data.txt",
    ):
        (data / f).write_text("secret\n")
    for top, dirs, files in os.walk(data):
        for n in dirs:
            os.chmod(os.path.join(top, n), 0o755)
        for n in files:
            os.chmod(os.path.join(top, n), 0o644)
    os.symlink("/etc/passwd", data / "logs" / "link")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to an app's gid needs root")
def test_an_old_install_is_made_private_except_the_apps_own_trees(tmp_path: Path) -> None:
    data = tmp_path / "data"
    loose_install(data)
    changed = secure_data_dir(data, data / "node") + secure_agent_dir(data / "node", {"hello": 201234})
    assert changed > 10
    for f in (
        "forge.db",
        "forge.db-wal",
        "forge-logs.db",
        "forge-logs.db-shm",
        "api-url",
        "logs/api.log",
        "source-cache/acme/hello.git/objects/ab/cdef",
        "node/logs/hello-1-0/app.log",
    ):
        assert mode(data / f) & 0o077 == 0, f
    for d in ("logs", "source-cache", "node/logs", "node/git", "node/built"):
        assert mode(data / d) & 0o077 == 0, d
    assert mode(data) == 0o701 and mode(data / "node") == 0o701
    assert mode(data / "node/releases") == 0o701 and mode(data / "node/storage") == 0o701
    app_dir = data / "node/releases/hello"
    assert mode(app_dir) == 0o710 and os.lstat(app_dir).st_gid == 201234
    # The apps' own trees are theirs: closed at the top, untouched inside.
    assert mode(data / "node/releases/hello/hello-1") == 0o700 and mode(data / "node/storage/hello") == 0o700
    assert mode(data / "node/releases/hello/hello-1/app.py") == 0o644
    assert mode(data / "node/storage/hello/data.txt") == 0o644
    assert os.readlink(data / "logs" / "link") == "/etc/passwd" and mode(Path("/etc/passwd")) == 0o644
    assert secure_data_dir(data, data / "node") + secure_agent_dir(data / "node", {"hello": 201234}) == 0


def test_a_control_plane_without_an_agent_keeps_its_data_dir_closed(tmp_path: Path) -> None:
    data = tmp_path / "cp"
    (data / "logs").mkdir(parents=True)
    os.chmod(data, 0o755)
    secure_data_dir(data)
    assert mode(data) == 0o700


def test_owner_operands_for_nftables() -> None:
    """Root's uid and group always pass; anyone else's socket matches the refusal."""
    assert nft_uids([0]) == "0" and nft_uids([1000, 0, 0]) == "{ 0, 1000 }"
    match = owner_refused()
    assert match.startswith("meta skuid != ") and " meta skgid != " in match
