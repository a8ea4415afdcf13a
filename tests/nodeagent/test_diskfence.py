"""``forge.nodeagent.diskfence``: each release its own size-limited filesystem (image mode, real
loop mounts) or a measured tree plus RLIMIT_FSIZE (watcher mode)."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from forge.nodeagent.diskfence import DiskFence, image_mode_missing, mount_points
from forge.nodeagent.sandbox import Sandbox, SandboxSpec

needs_image = pytest.mark.skipif(image_mode_missing() is not None, reason=f"image mode: {image_mode_missing()}")
MiB = 2**20


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    d = tmp_path / "agent data"  # a space: mountinfo escapes it
    d.mkdir()
    yield d
    if image_mode_missing() is None:
        DiskFence(d, mode="image").unmount_all()


def fill(path: Path, mib: int) -> int:
    """Write up to ``mib`` MiB into ``path``; how many MiB went in before ENOSPC."""
    written = 0
    try:
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(b"x" * MiB)
                f.flush()
                written += 1
            os.fsync(f.fileno())
    except OSError as exc:
        assert exc.errno in (errno.ENOSPC, errno.EDQUOT), exc
    return written


@needs_image
def test_image_mode_fences_writes_at_the_limit(data: Path) -> None:
    fence = DiskFence(data, mode="image")
    release = data / "releases" / "app" / "app-1"
    fence.prepare(release, 40 * MiB)
    assert fence.mounted(release) and os.path.ismount(release)
    assert str(release) in mount_points(data)
    assert sorted(os.listdir(release)) == []  # no lost+found for the app to see
    assert not fence.exceeded(release, 40 * MiB)
    assert fill(release / "junk", 100) < 40  # the kernel refused the rest
    assert fence.exceeded(release, 40 * MiB)
    assert fence.usage(release) <= 40 * MiB
    image = fence.image(release)
    assert image.stat().st_blocks * 512 <= 41 * MiB  # sparse: the node holds what was written, at most
    assert (image.stat().st_mode & 0o777) == 0o600 and (os.stat(data / "images").st_mode & 0o777) == 0o700

    fence.discard(release)
    assert not fence.mounted(release) and not image.exists()
    assert not fence.ready(release)  # no image: the release must be built again

    fence.prepare(release, 40 * MiB)  # a fresh tree: nothing of the old one
    assert fence.mounted(release) and not (release / "junk").exists()


@needs_image
def test_a_stopped_node_mounts_its_images_again(data: Path) -> None:
    fence = DiskFence(data, mode="image")
    release = data / "releases" / "app" / "app-2"
    fence.prepare(release, 32 * MiB)
    (release / "built-file").write_text("kept")
    assert fence.unmount_all() == 1
    assert not fence.mounted(release) and not (release / "built-file").exists()
    assert fence.ready(release)  # mounted again from its image
    assert (release / "built-file").read_text() == "kept"


@needs_image
def test_prepare_replaces_a_leftover_tree_and_never_follows_a_link(data: Path, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("root's")
    release = data / "releases" / "app" / "app-3"
    release.mkdir(parents=True)
    (release / "link").symlink_to(canary)
    fence = DiskFence(data, mode="image")
    fence.prepare(release, 32 * MiB)
    assert fence.mounted(release) and os.listdir(release) == []
    assert (canary / "keep").read_text() == "root's"
    # an image path planted as a symlink is not written through either
    fence.discard(release)
    img = fence.image(release)
    img.parent.mkdir(parents=True, exist_ok=True)
    img.symlink_to(canary / "keep")
    fence.prepare(release, 32 * MiB)  # the link is removed, never written through
    assert fence.mounted(release) and not img.is_symlink()
    assert (canary / "keep").read_text() == "root's"


def test_watcher_mode_measures_the_tree_without_following_links(data: Path, tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * (3 * MiB))
    fence = DiskFence(data, mode="watcher")
    release = data / "releases" / "app" / "app-1"
    fence.prepare(release, 2 * MiB)
    assert not fence.mounted(release) and fence.ready(release)
    (release / "link").symlink_to(big)
    assert not fence.exceeded(release, 2 * MiB)
    (release / "own").write_bytes(b"x" * (2 * MiB))
    assert fence.exceeded(release, 2 * MiB)
    assert fence.usage(release) >= 2 * MiB
    fence.discard(release)
    assert big.stat().st_size == 3 * MiB


def test_watcher_mode_caps_each_file_with_rlimit_fsize(tmp_path: Path) -> None:
    """No single file grows past the limit, even between two measurements."""
    wd = tmp_path / "wd"
    wd.mkdir()
    spec = SandboxSpec(app="app", workdir=str(wd), env={}, fsize_limit=MiB, stdout_path=str(tmp_path / "out"),
                       stderr_path=str(tmp_path / "err"),
                       command="head -c 3145728 /dev/zero > big; echo rc=$? > rc")
    code = Sandbox(None, mode="dev").run(spec, timeout=30)
    assert code == 0
    assert (wd / "big").stat().st_size <= MiB
    assert (wd / "rc").read_text().strip() != "rc=0"  # head died of SIGXFSZ (or saw EFBIG)
    assert shutil.which("prlimit")


@needs_image
def test_storage_is_allocated_when_it_is_made(data: Path) -> None:
    """Every block of a storage image is on the host's disk from the start (no sparse holes a
    full host could refuse later), and the filesystem inside takes writes."""
    fence = DiskFence(data, mode="image")
    path = fence.ensure_storage("keep", 48 * MiB, None, None)
    img = fence.storage_image("keep")
    assert img.stat().st_blocks * 512 >= 48 * MiB
    (path / "note").write_text("kept\n")
    assert "errors=remount-ro" in Path("/proc/self/mountinfo").read_text()


@needs_image
def test_storage_that_does_not_fit_is_refused_naming_size_and_room(tmp_path: Path) -> None:
    """A 256 MiB storage on a data dir with 128 MiB: refused with a clear error, nothing left behind."""
    import subprocess

    from forge.nodeagent.diskfence import StorageUnavailable

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=128m", "tmpfs", str(small)], check=True)
    try:
        fence = DiskFence(small, mode="image")
        with pytest.raises(StorageUnavailable) as refused:
            fence.ensure_storage("big", 256 * MiB, None, None)
        assert refused.value.reason == "InsufficientStorage"
        msg = refused.value.message
        assert "persistent storage of app big (256 MiB) does not fit" in msg and "MiB free" in msg, msg
        assert not fence.storage_image("big").exists() and not fence.mounted(fence.storage_dir("big"))
    finally:
        DiskFence(small, mode="image").unmount_all()
        subprocess.run(["umount", "-l", str(small)], check=False)


@needs_image
def test_storage_read_only_after_an_error_is_repaired_before_the_next_start(data: Path) -> None:
    """An ext4 error remounts the storage read-only; the next ensure_storage (the app starting
    again) unmounts it, repairs it with e2fsck, mounts it writable again, says so — and the
    data written before is all there."""
    from forge.nodeagent.diskfence import mount_source

    fence = DiskFence(data, mode="image")
    path = fence.ensure_storage("hurt", 48 * MiB, None, None)
    with open(path / "acked", "w") as f:
        f.write("1\n2\n3\n")
        f.flush()
        os.fsync(f.fileno())
    dev = mount_source(path)
    assert dev and dev.startswith("/dev/loop")
    Path(f"/sys/fs/ext4/{dev[5:]}/trigger_fs_error").write_text("forge test: simulated I/O error\n")
    with pytest.raises(OSError):
        (path / "after").write_text("x")  # read-only now
    told: list[str] = []
    again = fence.ensure_storage("hurt", 48 * MiB, None, None, report=told.append)
    assert again == path and told and "e2fsck repaired it" in told[0]
    assert (path / "acked").read_text() == "1\n2\n3\n"
    (path / "after").write_text("writable again\n")
    told.clear()
    fence.ensure_storage("hurt", 48 * MiB, None, None, report=told.append)
    assert told == [], "a healthy storage is left alone"


@needs_image
def test_storage_still_held_elsewhere_is_not_repaired_until_it_is_free(data: Path, tmp_path: Path) -> None:
    """Another mount of the damaged storage still exists (another process of the app): no e2fsck
    on a filesystem in use — StorageDamaged, and the repair happens once that mount is gone."""
    import subprocess

    from forge.nodeagent.diskfence import StorageUnavailable, loop_devices, mount_source

    fence = DiskFence(data, mode="image")
    path = fence.ensure_storage("held", 48 * MiB, None, None)
    with open(path / "kept", "w") as f:  # acknowledged: on the disk before the error
        f.write("yes\n")
        f.flush()
        os.fsync(f.fileno())
    os.sync()
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run(["mount", "--bind", str(path), str(other)], check=True)
    try:
        dev = mount_source(path)
        assert dev and loop_devices(fence.storage_image("held")) == [dev]
        Path(f"/sys/fs/ext4/{dev[5:]}/trigger_fs_error").write_text("forge test: simulated I/O error\n")
        with pytest.raises(StorageUnavailable) as busy:
            fence.ensure_storage("held", 48 * MiB, None, None)
        assert busy.value.reason == "StorageDamaged"
    finally:
        subprocess.run(["umount", str(other)], check=False)
    told: list[str] = []
    fence.ensure_storage("held", 48 * MiB, None, None, report=told.append)
    assert told and (path / "kept").read_text() == "yes\n"
    (path / "new").write_text("writable\n")


@needs_image
def test_two_instances_starting_at_once_repair_the_storage_once(data: Path) -> None:
    """Two Instances of the app start together on a damaged storage: one repairs it, the other
    waits for that and finds it healthy — never two e2fsck, or one on a mounted image."""
    import threading

    from forge.nodeagent.diskfence import mount_source

    fence = DiskFence(data, mode="image")
    path = fence.ensure_storage("two", 48 * MiB, None, None)
    with open(path / "kept", "w") as f:
        f.write("yes\n")
        f.flush()
        os.fsync(f.fileno())
    os.sync()
    dev = mount_source(path)
    assert dev
    Path(f"/sys/fs/ext4/{dev[5:]}/trigger_fs_error").write_text("forge test: simulated I/O error\n")
    told: list[str] = []
    failed: list[BaseException] = []

    def start() -> None:
        try:
            fence.ensure_storage("two", 48 * MiB, None, None, report=told.append)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failed.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failed and len(told) == 1, (failed, told)
    assert (path / "kept").read_text() == "yes\n" and len(mount_points(path)) == 1
